"""Regenerate the micro models of the device check, in each format's package (its self-test's ``build``).

    python -m edgetl.devices.selftest.build

Needs TensorFlow, onnx and onnxruntime-training (the ``tflite`` and ``onnx`` extras); never sent to a device.
The model is y = x @ w with w of shape (4, 1), mean squared error, batch 8: small enough to be a few KB,
and still what an export is to a runtime (variables updated in place by a training step).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ...formats import FORMATS

BATCH, FEATURES = 8, 4


def main() -> None:
    for fmt in FORMATS.values():
        if not fmt.selftest:
            continue
        module, *models = fmt.selftest
        here = Path(importlib.import_module(fmt.package).__file__).parent
        importlib.import_module(f"{fmt.package}.{Path(module).stem}").build(str(here), BATCH, FEATURES)
        for rel in models:
            print(f"{fmt.name}: {rel}: {(here / rel).stat().st_size} bytes")


if __name__ == "__main__":
    main()
