"""Exporters: the generic layer of every format's export (each format's exporter is in its package, registered in
:mod:`edgetl.formats`).

    from edgetl.exporters import export, exporter
    result = export("runs/last", "onnx", "artifacts/onnx")              # a run directory, validated by default
    result = export(model, "tflite", "artifacts/tflite", batch_size=8)  # or a model held in memory, or a Run
    print(result.validation)                                            # ✓/✗ per check; result.files, result.manifest
    art = Artifacts.load("artifacts/onnx")                              # an existing export: what deploy and Fleet take
    result = export("deploy/pi", "tflite", "app/", inference=True, quantize="int8", calibration="./train")  # for apps

An exporter (:class:`~.base.Exporter`) turns a policy-applied model into artifacts a device runtime trains,
writes ``manifest.json`` and proves parity with PyTorch through :mod:`.validation`; a failed check raises
:class:`~.base.ValidationFailed`, which carries the result. This package is the generic layer; each format's
exporter lives in its package under :mod:`edgetl.formats`, whose registry names it. Importing this package loads
no TensorFlow or ONNX Runtime: a format loads its backend when used.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from torch import nn

from ..formats import FORMATS
from ..limits import check_numbers
from ..run import Run, RunError
from ..sources import SourceError, load_run
from .base import Artifacts, Exporter, ExportError, ExportResult, ValidationFailed
from .inference import CALIBRATION_IMAGES, export_inference
from .manifest import load_manifest, verify_manifest


def exporter(fmt: str) -> Exporter:
    """A new exporter of the registered format ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(sorted(FORMATS))}")
    module, cls = FORMATS[fmt].exporter.split(":")
    return getattr(importlib.import_module(module), cls)()


def as_run(source: Run | nn.Module | str | os.PathLike, **model_info) -> Run:
    """A :class:`Run` from a run, a run directory / checkpoint, a deploy result (the device's weights in the run
    they came from), or a model (``model_info``: class_names, resolution, optimizer, as :meth:`Run.from_model`
    takes them)."""
    if isinstance(source, Run):
        return source
    if isinstance(source, nn.Module):
        return Run.from_model(source, **model_info)
    try:
        return load_run(source)
    except (RunError, SourceError) as exc:
        raise ExportError(str(exc)) from None


def export(source: Run | nn.Module | str | os.PathLike, fmt: str, out: str | os.PathLike, validate: bool = True,
           steps: int = 3, batch_size: int = 4, lr: float | None = None, log: Callable[[str], None] | None = None,
           data=None, inference: bool = False, quantize: str | None = None, calibration: str | os.PathLike | None = None,
           validation_data: str | os.PathLike | None = None, calibration_images: int = CALIBRATION_IMAGES,
           **model_info) -> Artifacts:
    """Export ``source`` as ``fmt`` into ``out``; raises :class:`ValidationFailed` when a check fails.

    ``data``: a Dataset for the reference batches (default: the run's validation data, else random images).
    ``inference``: a standalone model for apps instead, the weights baked in (:mod:`.inference`; ``quantize``
    "int8" with ``calibration`` images, checked on ``validation_data``).
    """
    check_numbers(steps=steps, batch_size=batch_size, lr=lr, calibration_images=calibration_images)
    exp = exporter(fmt)
    if isinstance(source, nn.Module) and data is not None:  # a model's classes and input size, from its data
        from ..trainer import class_names_of

        model_info.setdefault("class_names", class_names_of(data))
        model_info.setdefault("resolution", int(data[0][0].shape[-1]))
    run = as_run(source, **model_info)
    if inference:
        result = export_inference(exp, run, Path(out), quantize, calibration and str(calibration),
                                  validation_data and str(validation_data), validate, calibration_images, log=log)
    elif quantize:
        raise ExportError(f"--quantize {quantize} applies to inference exports: add --inference (a training export "
                          f"keeps float32 weights, which training updates)")
    else:
        result = exp.export(run, Path(out), validate=validate, steps=steps, batch_size=batch_size, lr=lr, log=log,
                            dataset=data)
    if not result.ok:
        failed = "; ".join(f"{c.name} differs by {c.max_diff:.3g} (tolerance {c.tolerance:.3g})"
                           for c in result.validation.failed)
        layers = result.validation.extra.get("layers")  # where it departs, when the format can tell
        raise ValidationFailed(f"the {fmt} export does not match PyTorch: {failed}"
                               + (f". {layers['summary']}" if layers else "")
                               + f". The artifacts are in {out} for inspection", result)
    return result


__all__ = ["Artifacts", "ExportError", "ExportResult", "Exporter", "ValidationFailed", "as_run", "export", "exporter",
           "load_manifest", "verify_manifest"]
