"""The device-side check that ``edgetl devices setup`` runs in a new environment before recording it.

    files = check_files(["ai-edge-litert"])   # what to push: name in the check's folder -> file here
    args = check_args(["ai-edge-litert"])     # check.py's arguments after the folder

``check.py`` (the runtime and numpy only, like the runners) trains a micro model for a few steps with each
runtime, through each format's self-test module and micro models (``Format.selftest``, in the format's package).
``build.py`` regenerates the micro models on a machine with TensorFlow and onnxruntime-training.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ...formats import by_runtime

HERE = Path(__file__).parent
CHECK = HERE / "check.py"


def _selftest(runtime: str):
    fmt = by_runtime(runtime)
    module, *models = fmt.selftest
    return fmt, Path(importlib.import_module(fmt.package).__file__).parent, module, models


def check_files(runtimes) -> dict[str, Path]:
    """What the check of ``runtimes`` needs beside ``check.py``: name relative to its folder -> the file here (a
    format's self-test module goes as ``FORMAT_selftest.py``, so two formats' modules do not collide)."""
    files = {}
    for runtime in runtimes:
        fmt, here, module, models = _selftest(runtime)
        files[f"{fmt.name}_{module}"] = here / module
        files.update({rel: here / rel for rel in models})
    return files


def check_args(runtimes) -> list[str]:
    """``check.py``'s ``RUNTIME=MODULE=DIST`` arguments for ``runtimes``."""
    out = []
    for runtime in runtimes:
        fmt, _, module, _ = _selftest(runtime)
        out.append(f"{runtime}={fmt.name}_{Path(module).stem}={fmt.runtime.dist}")
    return out
