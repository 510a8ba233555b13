"""The ONNX export's layer probe (:class:`.layerdiff.Probe`): the model lowered as the export lowers it, trained by
ONNX Runtime with the export's gradients, every layer's output and loss gradient read back.

    probe = OnnxExporter().probe(model, batch_size=8, resolution=224)   # the exporter loads ONNX Runtime
    layerdiff.compare(model, images, labels, probe)
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import torch
from torch import nn

from ...exporters.base import quiet_stderr
from ...runtime import ort_runner
from . import graph


class OnnxProbe:
    """``model`` lowered as the ONNX export lowers it (:func:`.graph.lower`), trained by ONNX Runtime from
    artifacts it generates with the export's registered gradients. Every layer's output gets a zero addend that
    is the artifacts' only trainable tensor, so ONNX Runtime's own backward yields dL/d(output) as that addend's
    gradient; the outputs are extra graph outputs. The kernels and gradients are the export's."""

    SKIP = (nn.Dropout, nn.Identity, nn.Flatten)  # they pass their input on: nothing of their own to compare

    def __init__(self, model: nn.Module, batch_size: int, resolution: int, backend: tuple, threads: int | None = None):
        """``backend``: (onnx, onnxruntime, artifacts, onnxblock), loaded by the exporter."""
        onnx, onnxruntime, artifacts, onnxblock = backend
        lowered = graph.lower(model, training=True)
        for m in lowered.modules():
            if getattr(m, "inplace", False):  # an in-place activation would overwrite the tapped output before it
                m.inplace = False
        leaves = [n for n, m in lowered.named_modules() if n and not list(m.children()) and not isinstance(m, self.SKIP)]
        tapped = _Tapped(lowered, leaves, batch_size, resolution)
        self._names = tapped.names  # in execution order, as the outputs come
        f = io.BytesIO()
        outputs = [f"a{i:03d}" for i in range(len(self._names))]
        torch.onnx.export(tapped, torch.zeros(batch_size, 3, resolution, resolution), f, input_names=[graph.INPUT],
                          output_names=[graph.OUTPUT, *outputs], opset_version=graph.OPSET, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, export_params=True)
        proto = onnx.load_from_string(f.getvalue())
        taps = [n for n, _ in tapped.named_parameters() if n.startswith("tap_")]
        graph.restore_initializers(proto, taps)  # equal zeros: the exporter may have merged them
        frozen = sorted({i.name for i in proto.graph.initializer} - set(taps))
        graph.register_gradients()
        self._dir = tempfile.TemporaryDirectory(prefix="edgetl-probe-")
        with quiet_stderr():
            artifacts.generate_artifacts(proto, requires_grad=taps, frozen_params=frozen,
                                         loss=artifacts.LossType.CrossEntropyLoss, optimizer=onnxblock.optim.SGD(),
                                         artifact_directory=self._dir.name, loss_input_names=[graph.OUTPUT],
                                         additional_output_names=outputs)
        training = os.path.join(self._dir.name, ort_runner.TRAINING_MODEL)
        generated = onnx.load(training)
        graph.set_hardswish_threshold(generated, graph.hardswish_threshold(model))
        onnx.save(generated, training)
        api = ort_runner.training_api()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0
        self._state = api.CheckpointState.load_checkpoint(os.path.join(self._dir.name, ort_runner.CHECKPOINT))
        self._module = api.Module(training, self._state,
                                  os.path.join(self._dir.name, ort_runner.EVAL_MODEL), session_options=options)
        self._taps = taps

    def names(self) -> list[str]:
        return self._names

    def run(self, images, labels):
        self._module.train()
        out = self._module(np.ascontiguousarray(images, np.float32), np.ascontiguousarray(labels, np.int64))
        acts = {n: np.asarray(a) for n, a in zip(self._names, out[1:])}
        grads = {n: np.array(self._state.parameters[t].grad) for n, t in zip(self._names, self._taps)}
        self._module.lazy_reset_grad()
        return float(out[0]), acts, grads


class _Tapped(nn.Module):
    """``model`` with a zero addend on each named layer's output: returns (logits, every tapped output, in
    execution order: ``names``)."""

    def __init__(self, model: nn.Module, names: list[str], batch_size: int, resolution: int):
        super().__init__()
        self.model, self._outs = model, []
        modules = dict(model.named_modules())
        shapes = {}  # in execution order (an SE block runs its modules in another order than it declares them)
        handles = [modules[n].register_forward_hook(lambda m, a, out, n=n: shapes.setdefault(n, out.shape) and None)
                   for n in names]
        with torch.no_grad():
            model(torch.zeros(batch_size, 3, resolution, resolution))
        for h in handles:
            h.remove()
        self.names = list(shapes)
        for i, n in enumerate(self.names):
            self.register_parameter(f"tap_{i:03d}", nn.Parameter(torch.zeros(shapes[n])))
            modules[n].register_forward_hook(lambda m, a, out, i=i: self._tap(i, out))

    def _tap(self, i: int, out: torch.Tensor) -> torch.Tensor:
        out = out + getattr(self, f"tap_{i:03d}")
        self._outs.append(out)
        return out.clone()  # the network may add to it in place (a residual's ``result += input``); the tap keeps its own

    def forward(self, x):
        self._outs.clear()
        logits = self.model(x)
        return (logits, *self._outs)
