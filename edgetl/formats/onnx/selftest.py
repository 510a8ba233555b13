"""ONNX Runtime's part of setup's device check (``edgetl/devices/selftest/check.py`` imports it on the device):
train ``micro_onnx/`` (training artifacts of the same linear regression as TFLite's) a few steps with its training
API. Like the runners, it imports nothing but its runtime and numpy."""

from __future__ import annotations

import os
import sys
import types


def check(folder: str, x, y, steps: int, lr: float) -> list[float]:
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
    optimizer.set_learning_rate(lr)
    module.train()
    losses = []
    for _ in range(steps):
        losses.append(float(module(x, y)))
        optimizer.step()
        module.lazy_reset_grad()
    return losses


def build(folder: str, batch: int, features: int) -> None:
    """Write ``micro_onnx/`` into ``folder`` (``edgetl/devices/selftest/build.py`` calls it; never on a device)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.training import artifacts

    w = numpy_helper.from_array(np.zeros((features, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["pred"])], "micro",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
                              [helper.make_tensor_value_info("pred", TensorProto.FLOAT, [batch, 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model)
    out = os.path.join(folder, "micro_onnx")
    os.makedirs(out, exist_ok=True)
    artifacts.generate_artifacts(model, requires_grad=["w"], loss=artifacts.LossType.MSELoss,
                                 optimizer=artifacts.OptimType.AdamW, artifact_directory=out)
