"""The format registry (``edgetl.formats``) is the one place a format is named, and adding a format is what
docs/architecture.md says: one package and one registration.

- Format names, their runtimes' distributions and their runners appear as string literals only in the formats'
  packages and registry, the device runners (``edgetl/runtime/``, self-contained files) and tests (read with ``ast``).
- A toy format, registered as the guide says (a ``Format`` and an ``Exporter`` with ``lower``), is listed by
  ``edgetl export --help``, exports, and is refused by ``edgetl deploy`` in one line naming it, before any device.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from click.testing import CliRunner

from edgetl.exporters import Exporter, export
from edgetl.formats import FORMATS, Format, dists, runners
from edgetl.run import Run

from .exportutil import make_run

PKG = Path(__file__).resolve().parent.parent / "edgetl"
#: where a format may be named: its package, the registry, the device runners
ALLOWED = (PKG / "formats", PKG / "runtime")


def _format_names() -> set[str]:
    names = {"tflite", "onnx", "ai-edge-litert", "onnxruntime-training", "tflite_runner", "ort_runner"}
    runner_names = set(runners().values())
    return names | set(FORMATS) | set(dists()) | runner_names | {f"{n}.py" for n in runner_names}


def test_format_names_appear_only_in_the_formats_packages():
    names = _format_names()
    assert {"tflite", "onnx", "onnxruntime-training-cpu", "tflite-runtime", "ort_runner.py"} <= names
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if any(path.is_relative_to(root) for root in ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "format names outside edgetl/formats (read them from the registry):\n  " + "\n  ".join(found)


def test_the_literal_check_sees_a_name(tmp_path):
    """The walk above finds what it looks for: a literal in a module of the same shape."""
    tree = ast.parse('RUNNERS = {"onnx": "ort_runner.py"}\nx = f"--format {1}"\n')
    hits = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in _format_names()]
    assert hits == ["onnx", "ort_runner.py"]


# -- a toy format, added as docs/architecture.md's "A format" says ------------------------------------------

TOY = Format(name="toy", display="Toy", exporter=f"{__name__}:ToyExporter", extra="toy",
             summary="a toy weights file, no device runtime")


class ToyExporter(Exporter):
    format, input_name, runner = TOY, "input", None
    prefix_file = "prefix.toy"

    def lower(self, run, out, spec, batch_size, log, split=None):
        trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
        (out / "weights.toy").write_bytes(b"".join(p.detach().numpy().tobytes() for p in run.model.parameters()))
        return trainable, {}


def test_a_toy_format_is_listed_exported_and_refused_by_deploy(tmp_path, monkeypatch):
    from edgetl.cli import main

    monkeypatch.setitem(FORMATS, "toy", TOY)
    help_text = CliRunner().invoke(main, ["export", "--help"], terminal_width=200).output
    assert "[onnx|tflite|toy]" in help_text.replace("\n", "").replace(" ", "")
    assert "toy" in CliRunner().invoke(main, ["export", "x", "--format", "nope"]).output  # the choices, listed

    run = Run.load(make_run(tmp_path / "run", resolution=32))
    art = tmp_path / "toy"
    result = export(run, "toy", art, validate=False, steps=1, batch_size=2)
    manifest = json.loads((art / "manifest.json").read_text())
    assert (result.format, manifest["format"], manifest["runtime"]) == ("toy", "toy", None)
    assert (art / "weights.toy").stat().st_size == 4 * sum(p.numel() for p in run.model.parameters())

    # refused before any device is reached: the URI names none that exists
    out = CliRunner().invoke(main, ["deploy", str(art), "--device", f"local://{tmp_path}/nowhere", "--steps", "1"])
    assert out.exit_code == 2, out.output
    error = [line for line in out.output.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith("error: ") and "Toy format has no device runtime" in error[0]
    assert "--format tflite or --format onnx" in error[0]
    assert not (tmp_path / "nowhere").exists()
