"""ONNX Runtime on-device training artifacts, validated against PyTorch.

    from edgetl.exporters import export
    result = export("runs/last", "onnx", "artifacts/onnx")          # validates by default
    result.validation, result.files

The directory holds ``training_model.onnx``, ``eval_model.onnx``, ``optimizer_model.onnx`` and
``checkpoint`` (ONNX Runtime's on-device training set), ``inference.onnx`` (running statistics, for
deployment), ``reference.npz`` (reference batches with PyTorch's logits and losses, for ``--verify`` on a
device), ``ort_runner.py`` with ``runner_common.py`` (the device runner) and ``manifest.json``.

Only the parameters the policy trains are trainable; everything else is a frozen initializer. Batch
norms the policy trains fully normalise with batch statistics, as in PyTorch; the training graph also
outputs those statistics, and the runner updates the running statistics from them (``running_stats.npz``
holds their exported values), which validation checks against PyTorch.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ...exporters.base import Exporter, ExportError, quiet_stderr
from ...exporters.manifest import copy_runner
from ...exporters.split import prefix_module, region_module
from ...optim import OptimizerSpec
from ...run import Run
from ...runtime import ort_runner
from . import FORMAT
from .graph import (
    OPSET,
    batch_stat_norms,
    export_graph,
    hardswish_threshold,
    register_gradients,
    set_hardswish_threshold,
)

ARTIFACTS = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
INFERENCE_FILE = "model.onnx"  # an inference export's one model


def _backend():
    try:
        import onnx
        import onnxruntime
        from onnxruntime.training import artifacts, onnxblock
    except ImportError as exc:
        raise ExportError(f"the onnx backend is not installed ({exc.name} missing); "
                          f"install it with: pip install 'edgetl[onnx]'") from None
    onnxruntime.set_default_logger_severity(3)  # errors only: its info and warning lines are noise here
    return onnx, onnxruntime, artifacts, onnxblock


class OnnxExporter(Exporter):
    format = FORMAT
    input_name = "input"
    runner = ort_runner
    prefix_file = "prefix.onnx"

    def optimizer(self, run: Run, lr: float | None) -> OptimizerSpec:
        spec = super().optimizer(run, lr)
        if spec.name == "sgd":  # ONNX Runtime's on-device SGD has neither momentum nor weight decay
            if spec.momentum or spec.weight_decay:
                run.notes.append(f"the run used sgd with momentum {spec.momentum:g} and weight decay "
                                 f"{spec.weight_decay:g}; the exported graph runs plain SGD (the on-device training "
                                 f"runtimes offer no momentum), and so does the parity check")
            spec = spec.replace(momentum=0.0, weight_decay=0.0)
        return spec

    def lower_inference(self, model, resolution, out, quantize, calibration, log) -> str:
        """``model.onnx``: the network with its weights as initializers, batch norms folded into the convs (an
        inference graph trains nothing, so nothing needs them apart); int8 as ONNX Runtime's static QDQ
        quantization (per-channel int8 weights, uint8 activations) calibrated on ``calibration``."""
        import io

        onnx, onnxruntime, _, _ = _backend()
        f = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(model, torch.zeros(1, 3, resolution, resolution), f, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=OPSET, dynamo=False, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.EVAL)
        proto = onnx.load_from_string(f.getvalue())
        target = out / INFERENCE_FILE
        if quantize != "int8":
            onnx.save(_compact(proto), str(target))
            return INFERENCE_FILE
        from onnxruntime import quantization as q

        fp32 = out / ".fp32.onnx"
        onnx.save(proto, str(fp32))

        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.images = iter(calibration)

            def get_next(self):
                image = next(self.images, None)
                return None if image is None else {"images": image[None]}

        try:
            with quiet_stderr():
                q.quantize_static(str(fp32), str(target), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                                  weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8)
        finally:
            fp32.unlink(missing_ok=True)
            for extra in out.glob("*.onnx-*"):  # the calibrator's augmented model, where it leaves one
                extra.unlink()
        onnx.save(_compact(onnx.load(str(target))), str(target))
        return INFERENCE_FILE

    def probe(self, model, batch_size, resolution):
        from .probe import OnnxProbe

        return OnnxProbe(model, batch_size, resolution, _backend())

    def lower(self, run, out, spec, batch_size, log, split=None):
        onnx, onnxruntime, artifacts, onnxblock = _backend()
        trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
        t0 = time.perf_counter()
        # with a frozen prefix the training graph is the region after it; the inference model stays whole
        trained = region_module(run.model, split) if split else run.model
        shape = split.feature_shape if split else None
        norms = batch_stat_norms(trained, run.resolution, shape)
        training = export_graph(trained, run.resolution, training=True, norms=norms, input_shape=shape)
        inference = export_graph(run.model, run.resolution, training=False)
        if split:
            onnx.save(export_graph(prefix_module(run.model, split), run.resolution, training=False, output="features"),
                      str(out / self.prefix_file))
        initializers = {i.name for i in training.graph.initializer}
        missing = [n for n in trainable if n not in initializers]
        if missing:
            raise ExportError(f"trainable parameters missing from the exported graph: {', '.join(missing[:5])}")
        frozen = sorted(initializers - set(trainable))
        threshold = hardswish_threshold(run.model)
        register_gradients()
        optimizer = (onnxblock.optim.AdamW(betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
                     if spec.name == "adamw" else onnxblock.optim.SGD())
        for name in ARTIFACTS:  # a re-export replaces the set as a whole
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        stat_outputs = [o.name for o in training.graph.output][1:]
        with quiet_stderr():  # its graph transformers log every pass at info level, whatever the severity set
            artifacts.generate_artifacts(training, requires_grad=trainable, frozen_params=frozen,
                                         loss=artifacts.LossType.CrossEntropyLoss, optimizer=optimizer,
                                         artifact_directory=str(out), loss_input_names=["logits"],
                                         additional_output_names=stat_outputs)
        if threshold:  # the registered gradient's is 0.0
            _edit(out / ort_runner.TRAINING_MODEL, lambda model: set_hardswish_threshold(model, threshold))
        buffers = dict(run.model.named_buffers())
        np.savez(out / ort_runner.RUNNING_STATS, **{f"{n['name']}.{k}": buffers[f"{n['name']}.{k}"].numpy()
                                                     for n in norms for k in ("running_mean", "running_var")})
        if spec.name == "adamw":
            _edit(out / "optimizer_model.onnx", _pytorch_adamw)
        onnx.save(inference, str(out / ort_runner.INFERENCE_MODEL))
        copy_runner(ort_runner, out)
        log(f"exported {len(trainable)} trainable and {len(frozen)} frozen tensors in {time.perf_counter() - t0:.1f}s")
        return trainable, {
            "batch_norm": "internal norms shift-only; fully trained norms normalise with batch statistics in training "
                          "and the runner updates their running statistics from the graph's batch-statistic outputs, "
                          "as PyTorch does (momentum, unbiased variance)",
            "running_stats": norms,
            "hardswish_backward": f"MobileTL sign approximation dY * (x > {threshold}) in trained blocks; exact elsewhere",
            "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opset": OPSET}}


def _compact(model):
    """An inference graph with short tensor names and no node names or doc strings: the exporter's and the
    quantizer's names (``/features/features.1/block/.../Conv_output_0_QuantizeLinear_Output``) are a tenth of an
    int8 MobileNetV3-Small file. The graph's input and output keep their names."""
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.name, node.doc_string = "", ""
    for info in graph.value_info:
        info.name = short(info.name)
    model.doc_string = graph.doc_string = ""
    return model


def _edit(path: Path, change) -> None:
    """Load a generated ONNX model, ``change(model)`` it in place, and save it back."""
    import onnx

    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))


def _pytorch_adamw(model) -> None:
    """Make the generated AdamW follow PyTorch's AdamW, as training on the laptop does.

    onnxblock writes ``adam_mode=1`` (Hugging Face's AdamW: epsilon added before the bias correction, about
    30x larger in effect at step 1, and weight decay after the update); ``adam_mode=0`` is PyTorch's.
    """
    nodes = [n for n in model.graph.node if n.op_type == "AdamWOptimizer"]
    if not nodes:
        raise ExportError("the optimizer model has no AdamWOptimizer node; onnxruntime-training changed its optimizer graph")
    for node in nodes:
        for attr in node.attribute:
            if attr.name == "adam_mode":
                attr.i = 0
