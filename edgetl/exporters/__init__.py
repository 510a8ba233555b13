"""Exporters: one module per format, registered by name.

    from edgetl.exporters import export, EXPORTERS
    result = export("runs/last", "onnx", "artifacts/onnx")     # lowers, writes, validates (on by default)

An exporter turns a policy-applied run into artifacts a device runtime trains, writes ``manifest.json``
(model, policy, input, classes, preprocessing, versions, checksums, validation) and proves parity with
PyTorch through :mod:`.validation`. Adding a format is one module and one line in ``EXPORTERS``.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .base import ExportError, load_run, verify_manifest
from .validation import print_checklist

EXPORTERS = {
    "onnx": "edgetl.exporters.onnx:OnnxExporter",
    "tflite": "edgetl.exporters.tflite:TfliteExporter",
}


def exporter(fmt: str):
    import importlib

    if fmt not in EXPORTERS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(EXPORTERS)}")
    module, cls = EXPORTERS[fmt].split(":")
    return getattr(importlib.import_module(module), cls)()


def export(run_path: str | Path, fmt: str, out: str | Path, validate: bool = True, steps: int = 3,
           batch_size: int = 4, lr: float | None = None, console: Console | None = None) -> dict:
    """Export the run at ``run_path`` as ``fmt`` into ``out``; raises :class:`ExportError` if validation fails."""
    console = console or Console(stderr=True)
    exp = exporter(fmt)
    run = load_run(run_path)
    result = exp.export(run, Path(out), validate=validate, steps=steps, batch_size=batch_size, lr=lr,
                        log=lambda msg: console.print(msg, soft_wrap=True))
    for note in run.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    if result["checks"]:
        print_checklist(result["checks"], console, title=f"validation of {fmt} export against PyTorch")
        failed = [c for c in result["checks"] if not c.ok]
        if failed:
            layers = result["manifest"].get("validation", {}).get("layers")  # where it departs, when measured
            raise ExportError(f"the {fmt} export does not match PyTorch: " + "; ".join(
                f"{c.name} differs by {c.max_diff:.3g} (tolerance {c.tolerance:.3g})" for c in failed)
                + (f". {layers['summary']}" if layers else "") + f". The artifacts are in {out} for inspection")
    return result


__all__ = ["EXPORTERS", "ExportError", "export", "exporter", "load_run", "verify_manifest"]
