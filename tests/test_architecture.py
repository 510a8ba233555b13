"""The shape of the import graph of ``edgetl/``, read from the source with ``ast`` (nothing is imported).

Every import counts: module level, inside functions and methods, absolute and relative, and a constant module
name given to ``importlib.import_module`` / ``__import__`` (a registry's name strings, such as a ``Format``'s ``exporter``, are
not read). A function-level import defers the loading, not the coupling: two modules that import each other, even
lazily, are one concept split in two or a lower layer reaching up, so a lazy import is never the way out of a
cycle here. Lazy imports stay where they keep a heavy dependency out of ``import edgetl`` (TensorFlow, ONNX
Runtime, and ``edgetl.ui`` with rich's consoles in ``edgetl/__init__``), and are checked like any other edge.

An edge goes to the module named: ``from .a import b`` is ``a.b`` when that is a module, else ``a`` (the
package's ``__init__``); the parent packages a Python import also initialises are not edges, since a
package's submodules cannot help importing their own package.

Checked: no cycle between modules, and the layers point one way (a module imports only its own layer or
lower ones): ``runtime/`` (numpy and the runtime only, nothing else of edgetl) <- core <- profile <- exporters
<- devices <- fleet <- cli and the front ends (ui, benchmark); the package ``edgetl/__init__`` is the facade
that nothing inside imports. ``formats/`` spans two layers: the registry (``formats/__init__``, ``spec``) and each
format's description (its package's ``__init__``) are plain data at the core layer, which core reads;
a format's exporter, lowering, probe and self-test sit at the exporters layer. ``sources`` (a model from a run, a
checkpoint, a deploy result or an export) and ``evaluate`` (which opens sources) sit at the exporters layer too: they
read exports through the typed manifest that ``exporters.manifest`` owns.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "edgetl"

# layer of a module by its first name below edgetl; everything else is core (rank 1)
LAYERS = {"runtime": 0, "profile": 2, "exporters": 3, "devices": 4, "fleet": 5, "cli": 6, "ui": 6, "benchmark": 6,
          # a model from any source, exports included, read through their typed manifest (exporters.manifest)
          "sources": 3, "evaluate": 3}
CORE = 1
#: the plain-data part of formats/: the registry, its dataclasses, each format's package __init__ (core layer)
FORMAT_DATA = re.compile(r"edgetl\.formats(\.spec|\.\w+)?")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module under edgetl/ (a package is its ``__init__.py``)."""
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import node (or an import_module call with a constant name) brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [f"{module}.{alias.name}" if alias.name != "*" else module for alias in node.names] + [module]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported edgetl module: line of its first import}."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = _imported(node, package)
            if isinstance(node, ast.ImportFrom):  # `from a import b`: the module a.b if it is one, else a
                module = names.pop()
                names = [n for n in names if n in mods] or [module]
            for target in names:
                if target in mods and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[1:2] == ["formats"]:
        return CORE if FORMAT_DATA.fullmatch(module) else LAYERS["exporters"]
    return LAYERS.get(parts[1], CORE) if len(parts) > 1 else max(LAYERS.values()) + 1


def test_graph_is_read_from_every_module():
    graph = import_graph()
    # edges the checks below rely on, of each kind: module level, function level, relative, absolute
    assert len(graph) > 80
    assert "edgetl.exporters.manifest" in graph["edgetl.devices.bundle"]
    assert "edgetl.runtime.runner_io" in graph["edgetl.runtime.runner_data"]
    assert "edgetl.trainer" in graph["edgetl.exporters"]                       # inside export()
    assert "edgetl.ui" in graph["edgetl"]                                      # lazily, in __getattr__


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle:\n  " + "\n  ".join(steps))


def test_layers_point_one_way():
    graph = import_graph()
    wrong = [f"{a} (line {line}) imports {b}" for a, edges in sorted(graph.items()) for b, line in edges.items()
             if b != "edgetl" and layer(b) > layer(a)]
    wrong += [f"{a} (line {line}) imports the package edgetl" for a, edges in sorted(graph.items())
              for b, line in edges.items() if b == "edgetl"]
    assert not wrong, "imports against the layers:\n  " + "\n  ".join(wrong)


def test_runtime_imports_nothing_of_edgetl_outside_it():
    graph = import_graph()
    outside = [f"{a} (line {line}) imports {b}" for a, edges in graph.items() if a.startswith("edgetl.runtime")
               for b, line in edges.items() if not b.startswith("edgetl.runtime")]
    assert not outside, outside
