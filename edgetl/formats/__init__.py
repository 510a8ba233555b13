"""The registry of export formats: one :class:`~.spec.Format` per format, read by the exporters, devices, fleet,
benchmark, UI and CLI instead of tables of their own.

    from edgetl.formats import FORMATS, by_runtime
    FORMATS["onnx"].runtime.requirement   # 'onnxruntime-training-cpu==1.19.2'
    by_runtime(manifest.runtime)          # the Format an export's runtime belongs to, or None

A format is a package here (``formats/NAME/``): its ``__init__`` describes it (``FORMAT``, plain data), beside
it are its exporter and lowering, its layer probe and its self-test; its device runner is a self-contained file
under ``edgetl/runtime/``. Adding a format is that folder and one line in ``FORMATS``
(``docs/architecture.md`` lists the steps). Importing this package loads no backend.
"""

from __future__ import annotations

from . import onnx, tflite
from .spec import Format, Runtime

#: the formats by name; the order is `edgetl devices setup --runtime auto`'s preference
FORMATS: dict[str, Format] = {f.name: f for f in (tflite.FORMAT, onnx.FORMAT)}
#: what `edgetl export` writes when no --format is given
DEFAULT = onnx.NAME


def by_runtime(runtime: str | None) -> Format | None:
    """The format whose exports carry ``runtime`` in their manifest (training or inference), or None."""
    return next((f for f in FORMATS.values() if runtime in f.runtimes), None)


def runners() -> dict[str, str]:
    """A manifest's runtime -> the device runner module (under ``edgetl/runtime/``) that trains and runs its exports
    (ONNX inference exports need only the plain ``onnxruntime``, which the same runner drives)."""
    return {rt: f.runner for f in FORMATS.values() if f.runner for rt in f.runtimes}


def runtimes() -> dict[str, Runtime]:
    """The device runtimes by name (a manifest's ``runtime``), in the registry's order."""
    return {f.runtime.name: f.runtime for f in FORMATS.values() if f.runtime}


def dists() -> list[str]:
    """Every distribution that provides a format's runtime, training or inference (what a device probe asks
    ``importlib.metadata`` about)."""
    found = [d for f in FORMATS.values() if f.runtime for d in (f.runtime.dist, *f.runtime.dists)]
    return list(dict.fromkeys(found + [f.inference_runtime for f in FORMATS.values() if f.inference_runtime]))


def display(name: str) -> str:
    """A format's (or ``pytorch``'s) name for people."""
    return FORMATS[name].display if name in FORMATS else {"pytorch": "PyTorch"}.get(name, name)


__all__ = ["FORMATS", "Format", "Runtime", "by_runtime", "display", "dists", "runners", "runtimes"]
