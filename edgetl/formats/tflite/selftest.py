"""TFLite's part of setup's device check (``edgetl/devices/selftest/check.py`` imports it on the device): train
``micro.tflite``, a linear regression whose ``train`` signature updates its variables in place as an export's
does, a few steps. Like the runners, it imports nothing but its runtime and numpy."""

from __future__ import annotations

import os


def check(folder: str, x, y, steps: int, lr: float) -> list[float]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    train = Interpreter(model_path=os.path.join(folder, "micro.tflite")).get_signature_runner("train")
    return [float(train(x=x, y=y, lr=np.float32(lr))["loss"]) for _ in range(steps)]


def build(folder: str, batch: int, features: int) -> None:
    """Write ``micro.tflite`` into ``folder`` (``edgetl/devices/selftest/build.py`` calls it; never on a device)."""
    import tempfile

    import tensorflow as tf

    class Micro(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.zeros([features, 1]), name="w")

        @tf.function(input_signature=[tf.TensorSpec([batch, features], tf.float32, name="x"),
                                      tf.TensorSpec([batch, 1], tf.float32, name="y"),
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
        with open(os.path.join(folder, "micro.tflite"), "wb") as f:
            f.write(converter.convert())
