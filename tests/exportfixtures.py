"""Shared export fixtures (a pytest plugin, loaded by conftest.py): one V3-Small export per format, made once.

``v3_export`` is parametrized over the formats, so a test that takes it runs for each; a format's own test
narrows it with ``@pytest.mark.parametrize("v3_export", ["tflite"], indirect=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgetl.exporters import ExportResult, export

from .exportutil import make_run

#: format -> (runner script, backend module that must be importable, the optimizer of its fixture run)
FORMATS = {
    # ONNX: AdamW (its optimizer graph is checked against PyTorch's); TFLite: SGD with momentum (its assign ops)
    "onnx": ("ort_runner.py", "onnxruntime.training", {"optimizer": "adamw", "lr": 1e-3}),
    "tflite": ("tflite_runner.py", "ai_edge_litert", {"optimizer": "sgd", "lr": 0.05}),
}


@dataclass
class Export:
    fmt: str
    run: Path
    art: Path
    result: ExportResult

    @property
    def script(self) -> str:
        return FORMATS[self.fmt][0]

    @property
    def runner(self):
        import importlib

        return importlib.import_module(f"edgetl.runtime.{self.script[:-3]}")


def require_backend(fmt: str) -> None:
    pytest.importorskip(FORMATS[fmt][1])
    if fmt == "tflite":
        pytest.importorskip("tensorflow")


@pytest.fixture(scope="session", params=sorted(FORMATS))
def v3_export(request, tmp_path_factory):
    fmt = request.param
    require_backend(fmt)
    root = tmp_path_factory.mktemp(f"v3-{fmt}")
    run = make_run(root / "run", "mobilenet_v3_small", "mobiletl:3", **FORMATS[fmt][2])
    return Export(fmt, run, root / "art", export(run, fmt, root / "art", steps=3, batch_size=4))
