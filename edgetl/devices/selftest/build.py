"""Regenerate the micro models of the device check (``micro.tflite``, ``micro_onnx/``).

    python -m edgetl.devices.selftest.build

Needs TensorFlow, onnx and onnxruntime-training (the ``tflite`` and ``onnx`` extras); never sent to a device.
The model is y = x @ w with w of shape (4, 1), mean squared error, batch 8: small enough to be a few KB,
and still what an export is to a runtime (variables updated in place by a training step).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

HERE = Path(__file__).parent
BATCH, FEATURES = 8, 4


def build_tflite(path: Path) -> None:
    import tensorflow as tf

    class Micro(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.zeros([FEATURES, 1]), name="w")

        @tf.function(input_signature=[tf.TensorSpec([BATCH, FEATURES], tf.float32, name="x"),
                                      tf.TensorSpec([BATCH, 1], tf.float32, name="y"),
                                      tf.TensorSpec([], tf.float32, name="lr")])
        def train(self, x, y, lr):
            with tf.GradientTape() as tape:
                err = tf.matmul(x, self.w) - y
                loss = tf.reduce_mean(err * err)
            self.w.assign_sub(lr * tape.gradient(loss, self.w))
            return {"loss": loss}

    module = Micro()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"train": module.train.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["train"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        path.write_bytes(converter.convert())


def build_onnx(out: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.training import artifacts

    w = numpy_helper.from_array(np.zeros((FEATURES, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["pred"])], "micro",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, FEATURES])],
                              [helper.make_tensor_value_info("pred", TensorProto.FLOAT, [BATCH, 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model)
    out.mkdir(exist_ok=True)
    artifacts.generate_artifacts(model, requires_grad=["w"], loss=artifacts.LossType.MSELoss,
                                 optimizer=artifacts.OptimType.AdamW, artifact_directory=str(out))


if __name__ == "__main__":
    build_tflite(HERE / "micro.tflite")
    build_onnx(HERE / "micro_onnx")
    for p in sorted([HERE / "micro.tflite", *(HERE / "micro_onnx").iterdir()]):
        print(f"{p.relative_to(HERE)}: {p.stat().st_size} bytes")
