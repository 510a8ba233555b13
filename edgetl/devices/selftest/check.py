#!/usr/bin/env python3
"""Check a device's Python environment: import each runtime and train a micro model a few steps with it.

    python check.py DIR ai-edge-litert [onnxruntime-training]

``DIR`` holds the micro models. Prints one JSON line: ``{"ok": true, "python": ..., "runtimes": {name:
{"version", "losses"}}}``; exits 1 when a runtime is missing, fails, or does not lower the loss. Like the
runners, this file imports nothing but its runtimes and numpy: it runs in the environment under test.
"""

from __future__ import annotations

import json
import os
import sys
import types

STEPS, LR = 5, 0.1


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype(np.float32)


def check_tflite(folder: str) -> list[float]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    train = Interpreter(model_path=os.path.join(folder, "micro.tflite")).get_signature_runner("train")
    x, y = _batch()
    return [float(train(x=x, y=y, lr=np.float32(LR))["loss"]) for _ in range(STEPS)]


def check_onnx(folder: str) -> list[float]:
    import importlib.util

    # as the ONNX runner does: onnxruntime.training's package __init__ imports torch; the api needs none of it
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None:
        raise ImportError("No module named 'onnxruntime'")
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [os.path.join(spec.submodule_search_locations[0], "training")]
    sys.modules.setdefault("onnxruntime.training", pkg)
    sys.modules.setdefault("onnxruntime.training.ortmodule", None)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    from onnxruntime.training import api

    d = os.path.join(folder, "micro_onnx")
    state = api.CheckpointState.load_checkpoint(os.path.join(d, "checkpoint"))
    module = api.Module(os.path.join(d, "training_model.onnx"), state, os.path.join(d, "eval_model.onnx"))
    optimizer = api.Optimizer(os.path.join(d, "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(LR)
    module.train()
    x, y = _batch()
    losses = []
    for _ in range(STEPS):
        losses.append(float(module(x, y)))
        optimizer.step()
        module.lazy_reset_grad()
    return losses


CHECKS = {"ai-edge-litert": ("ai-edge-litert", check_tflite),
          "onnxruntime-training": ("onnxruntime-training-cpu", check_onnx)}


def main(argv: list[str]) -> int:
    from importlib import metadata

    folder, names = argv[0], argv[1:]
    report = {"ok": True, "python": sys.version.split()[0], "prefix": sys.prefix, "runtimes": {}}
    for name in names:
        dist, check = CHECKS[name]
        entry = report["runtimes"][name] = {}
        try:
            entry["version"] = metadata.version(dist)
            entry["losses"] = losses = check(folder)
            if not losses[-1] < losses[0]:
                raise RuntimeError(f"training did not lower the loss ({losses[0]:.4g} -> {losses[-1]:.4g})")
        except Exception as exc:  # reported, not raised: the caller reads one JSON line
            entry["error"] = f"{type(exc).__name__}: {exc}"
            report["ok"] = False
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
