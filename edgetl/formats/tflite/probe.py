"""The TFLite export's layer probe (:class:`.layerdiff.Probe`): the model lowered as the export lowers it, every
layer's output and loss gradient an output of one signature, run by the device runtime.

    probe = TfliteExporter().probe(model, batch_size=8, resolution=224)   # the exporter loads TensorFlow
    layerdiff.compare(model, images, labels, probe)
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
from torch import nn

from ...runtime.tflite_runner import make_interpreter
from .graph import Lowering
from .ops import cross_entropy


class TfliteProbe:
    """``model`` lowered as the TFLite export lowers it, converted with builtin ops only, with one signature:
    ``layers`` (images, labels -> loss, a000... every layer's output, d000... dL/d(output)), run by the device
    runtime (ai-edge-litert). The kernels are the export's; only the tapped tensors are extra outputs."""

    def __init__(self, model: nn.Module, batch_size: int, resolution: int, tf, convert: Callable,
                 threads: int | None = None):
        """``tf``: TensorFlow, loaded by the exporter; ``convert(module, tf)``: the export's converter."""
        lowering = Lowering(copy.deepcopy(model))
        tapped: list[str] = []

        class Layers(tf.Module):
            def __init__(self):
                super().__init__()
                self._vars = [v.var for v in lowering.variables.values()]
                self.layers = tf.function(self._layers, input_signature=[
                    tf.TensorSpec([batch_size, 3, resolution, resolution], tf.float32, name="images"),
                    tf.TensorSpec([batch_size], tf.int32, name="labels")])

            def signatures(self):
                return {"layers": self.layers.get_concrete_function()}

            def _layers(self, images, labels):
                taps: dict = {}
                with tf.GradientTape() as tape:
                    logits, _ = lowering.forward(images, training=True, taps=taps)
                    loss = cross_entropy(logits, labels)
                seen, names = set(), []
                for name, t in taps.items():  # a container's output is its last layer's: tapped once, by the layer
                    if id(t) not in seen:
                        seen.add(id(t))
                        names.append(name)
                grads = tape.gradient(loss, [taps[n] for n in names])
                tapped[:] = names
                out = {"loss": loss}
                for i, (n, g) in enumerate(zip(names, grads)):
                    out[f"a{i:03d}"] = _nchw(tf, taps[n])
                    if g is not None:
                        out[f"d{i:03d}"] = _nchw(tf, g)
                return out

        self.model_bytes = convert(Layers(), tf)
        self._names = list(tapped)
        interpreter = make_interpreter(threads or 1, model_content=self.model_bytes)
        self._runner = interpreter.get_signature_runner("layers")

    def names(self) -> list[str]:
        return self._names

    def run(self, images, labels):
        out = self._runner(images=np.ascontiguousarray(images, np.float32),
                           labels=np.ascontiguousarray(labels, np.int32))
        acts = {n: out[f"a{i:03d}"] for i, n in enumerate(self._names)}
        grads = {n: out[f"d{i:03d}"] for i, n in enumerate(self._names) if f"d{i:03d}" in out}
        return float(out["loss"]), acts, grads


def _nchw(tf, t):
    return tf.transpose(t, [0, 3, 1, 2]) if t.shape.rank == 4 else t
