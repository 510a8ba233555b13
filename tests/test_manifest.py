"""The typed manifest (``edgetl.exporters.manifest.Manifest``): read back from real exports, old exports without the
newer keys, and the rule that no module of the library reads a manifest's keys but the one that owns it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from edgetl.exporters import Artifacts, ExportError
from edgetl.exporters.manifest import MANIFEST, Manifest, predicted_memory
from edgetl.optim import OptimizerSpec
from edgetl.profile.analytic import analyze

PKG = Path(__file__).resolve().parent.parent / "edgetl"
#: the owner, and the programs that run on devices and import nothing of edgetl (they read the JSON themselves)
EXEMPT = ("exporters/manifest.py", "runtime/", "fleet/fab/")


def _names_manifest(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "manifest" in name.lower()


def _key(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def manifest_reads(tree: ast.AST) -> list[int]:
    """Lines where a value named like a manifest is read by key: ``m["k"]`` or ``m.get("k")``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _names_manifest(node.value) and _key(node.slice):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and _names_manifest(node.func.value) and node.args and _key(node.args[0]):
            lines.append(node.lineno)
    return lines


def test_the_read_finder_finds_reads():
    tree = ast.parse('a = manifest["x"]\nb = self.manifest.get("y")\nc = manifests[0].model\nd = manifest.model\n'
                     'e = raw_manifest["files"]\n')
    assert manifest_reads(tree) == [1, 2, 5]


def test_no_module_reads_manifest_keys_but_its_owner():
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(EXEMPT):
            continue
        if lines := manifest_reads(ast.parse(path.read_text(), str(path))):
            found[rel] = lines
    assert not found, f"manifest keys read outside edgetl/exporters/manifest.py (use the typed Manifest): {found}"


def test_manifest_types_what_the_export_wrote(v3_export):
    raw = json.loads((v3_export.art / MANIFEST).read_text())
    m = Manifest.load(v3_export.art)
    assert m.as_dict() == raw and Manifest.of(raw).as_dict() == raw and Manifest.of(m) is m
    assert (m.format, m.runtime, m.model, m.policy) == (raw["format"], raw["runtime"], "mobilenet_v3_small",
                                                       "mobiletl:3")
    assert m.input_shape == tuple(raw["input"]["shape"]) and m.resolution == raw["input"]["shape"][-1]
    assert m.batch_size == raw["input"]["shape"][0]  # 4 for TFLite (fixed at export), None for ONNX
    assert m.class_names == raw["class_names"] and m.trainable == raw["trainable"] and m.files == raw["files"]
    assert m.optimizer_spec() == OptimizerSpec.from_dict(raw["optimizer"]) and m.schedule == raw["schedule"]["name"]
    assert m.validated_ok is True and not m.inference
    mem = raw["memory"]
    for batch in (1, 8, 32):
        assert m.predicted_memory().bytes_at(batch) == mem["fixed_bytes"] + batch * mem["per_sample_bytes"]
    assert m.predicted_memory().state_bytes == mem["state_bytes"]
    if raw.get("split"):
        assert m.split.prefix == raw["split"]["prefix"] and list(m.split.feature_shape) == raw["split"]["feature_shape"]
    else:
        assert m.split is None


@pytest.mark.parametrize("v3_export", ["onnx"], indirect=True)
def test_an_old_manifest_without_memory_loads_and_predicts_as_export_did(v3_export):
    raw = json.loads((v3_export.art / MANIFEST).read_text())
    for key in ("memory", "schedule", "split", "running_stats", "kind"):
        raw.pop(key, None)
    m = Manifest.from_dict(raw)
    assert m.memory is None and m.schedule is None and m.split is None and m.running_stats == [] and not m.inference
    # the profiler by name, as an export made before manifests carried the prediction is judged
    expect = predicted_memory(analyze("mobilenet_v3_small", "mobiletl:3", m.resolution, len(m.class_names)),
                              OptimizerSpec.from_dict(raw["optimizer"]))
    assert m.predicted_memory().bytes_at(8) == expect["fixed_bytes"] + 8 * expect["per_sample_bytes"]
    assert m.predicted_memory().state_bytes == expect["state_bytes"]


def test_artifacts_load_reads_back_what_export_returned(v3_export, tmp_path):
    made, loaded = v3_export.result, Artifacts.load(v3_export.art)
    assert (loaded.format, loaded.out, loaded.files) == (made.format, made.out, made.files)
    assert loaded.manifest.as_dict() == json.loads((v3_export.art / MANIFEST).read_text()) == made.manifest.as_dict()
    assert [(c.name, c.ok, c.max_diff, c.tolerance) for c in loaded.validation.checks] == \
        [(c.name, c.ok, c.max_diff, c.tolerance) for c in made.validation.checks]
    assert loaded.ok and Artifacts.of(loaded) is loaded and Artifacts.of(str(v3_export.art)).manifest == loaded.manifest
    with pytest.raises(ExportError, match="holds no manifest.json; pass a directory written by `edgetl export`"):
        Artifacts.load(tmp_path)
