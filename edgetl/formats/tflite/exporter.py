"""TFLite training export: one ``.tflite`` with train/infer/weights signatures, builtin ops only, validated.

    from edgetl.exporters import export
    result = export("runs/last", "tflite", "artifacts/tflite", batch_size=8)     # validates by default
    result.validation, result.files

The directory holds ``model.tflite`` (signatures ``train``, ``gradients``, ``infer``, ``get_weights``,
``set_weights``; see :mod:`.graph`), ``reference.npz`` (reference batches with PyTorch's logits,
loss and gradient norms, for ``--verify`` on a device), ``tflite_runner.py`` with ``runner_common.py``
(the device runner: ai-edge-litert and numpy) and ``manifest.json``.

The converted model's training subgraphs run their weight-only work next to its use (:mod:`.schedule`).
The model converts with ``TFLITE_BUILTINS`` only, so it trains in ai-edge-litert as a Raspberry Pi
installs it; any other op fails the export with its name. The training batch size is fixed at export
(``batch_size``). The run's optimizer runs as PyTorch's: AdamW, or SGD with momentum and weight decay.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from importlib import metadata

from ...exporters.base import Exporter, ExportError, quiet_stderr
from ...exporters.manifest import copy_runner
from ...exporters.reference import training_copy
from ...exporters.split import prefix_module, region_module
from ...io import atomic_write_bytes
from ...runtime import tflite_runner
from . import FORMAT
from . import schedule as tflite_schedule


def _backend():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ info and warning lines are noise here
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TensorFlow only converts here; it computes nothing
    try:
        with quiet_stderr():
            import tensorflow as tf
        import ai_edge_litert  # noqa: F401  (validation runs the device runner's interpreter)
    except ImportError as exc:
        raise ExportError(f"the tflite backend is not installed ({exc.name} missing); "
                          f"install it with: pip install 'edgetl[tflite]'") from None
    tf.get_logger().setLevel("ERROR")
    return tf


def operators(model: bytes) -> dict[str, list[str]]:
    """The operators of every subgraph of a ``.tflite`` flatbuffer, by subgraph name (custom ops by their code)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    root = schema.Model.GetRootAs(model, 0)
    out = {}
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        ops = []
        for i in range(graph.OperatorsLength()):
            code = root.OperatorCodes(graph.Operators(i).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            ops.append(code.CustomCode().decode() if builtin == schema.BuiltinOperator.CUSTOM else names[builtin])
        out[(graph.Name() or b"").decode() or f"subgraph{s}"] = ops
    return out


def non_builtin(model: bytes) -> list[str]:
    """Custom and Select-TF (Flex) operators in the model: none may remain for ai-edge-litert to train it."""
    from ai_edge_litert import schema_py_generated as schema

    builtins = set(vars(schema.BuiltinOperator))
    return sorted({op for ops in operators(model).values() for op in ops if op not in builtins})


def convert(module, tf, calibration=None) -> bytes:
    """Save ``module`` with its signatures and convert it with TFLITE_BUILTINS only; with ``calibration`` (images,
    N x 3 x R x R), as a post-training int8 model calibrated on them (float32 input and output)."""
    with tempfile.TemporaryDirectory(prefix="edgetl-savedmodel-") as tmp, quiet_stderr() as log:
        signatures = module.signatures()
        tf.saved_model.save(module, tmp, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ({"images": image[None]} for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            model = converter.convert()
        except Exception as exc:  # ConverterError: names the ops that have no builtin
            log.seek(0)
            text = f"{exc}\n{log.read().decode(errors='replace')}"
            ops = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", text)))
            if ops:
                raise ExportError(f"the model needs TensorFlow ops that TFLite has no builtin for: {', '.join(ops)}; "
                                  f"they would need Select-TF (Flex) ops, which ai-edge-litert cannot run") from None
            raise ExportError(f"the TFLite converter failed: {str(exc).strip().splitlines()[-1]}") from None
    bad = non_builtin(model)
    if bad:
        raise ExportError(f"the converted model contains non-builtin ops: {', '.join(bad)}; ai-edge-litert cannot "
                          f"run them (Select-TF / Flex ops)")
    return model


class TfliteExporter(Exporter):
    format = FORMAT
    input_name = "images"
    fixed_batch = True
    runner = tflite_runner
    prefix_file = "prefix.tflite"

    def lower(self, run, out, spec, batch_size, log, split=None):
        tf = _backend()
        from .graph import Lowering, PrefixModule, TrainingModule

        t0 = time.perf_counter()
        if split:  # model.tflite trains the region after the frozen prefix, which prefix.tflite computes
            module = TrainingModule(Lowering(region_module(training_copy(run.model), split)), batch_size,
                                    run.resolution, spec, input_shape=split.feature_shape, input_name="features")
            prefix = convert(PrefixModule(Lowering(prefix_module(run.model, split)), run.resolution), tf)
            atomic_write_bytes(prefix, out / self.prefix_file)
        else:
            module = TrainingModule(Lowering(training_copy(run.model)), batch_size, run.resolution, spec)
        converted = convert(module, tf)
        model = tflite_schedule.reorder(converted)  # the weight-only work next to its use: a smaller arena
        peaks = [tflite_schedule.arena_peak(m) for m in (converted, model)]
        atomic_write_bytes(model, out / tflite_runner.MODEL)
        copy_runner(tflite_runner, out)
        ops = operators(model)
        log(f"exported {len(module.params)} trainable tensors and {len(module.state) - len(module.params)} other "
            f"variables in {time.perf_counter() - t0:.1f}s: {len(model) / 2**20:.1f} MiB, "
            f"{len({o for v in ops.values() for o in v})} builtin op types, no Flex ops; training step's "
            f"intermediates {peaks[1] / 2**20:.1f} MiB at most (the converter's order: {peaks[0] / 2**20:.1f})")
        return [p.name for p in module.params], {
            "labels": {"name": "labels", "dtype": "int32"},
            "variables": [{"name": v.name, "key": module.keys[v.name], "kind": v.kind, "shape": v.torch_shape()}
                          for v in module.state],
            "signatures": {"train": "images, labels, lr -> loss", "gradients": "images, labels -> loss, g<key>",
                           "infer": "images -> logits", "get_weights": "-> p<key> (PyTorch layout)",
                           "set_weights": "p<key> (PyTorch layout) -> ok", "step_count": "-> step"},
            "operators": sorted({o for v in ops.values() for o in v}),
            "train_intermediates_bytes": peaks[1],
            "batch_norm": "internal norms shift-only; fully trained norms normalise with batch statistics in training "
                          "and the train signature updates their running statistics as PyTorch does",
            "activation_masks": "MobileTL masks are stored as one byte per element (TFLite has no bit type)",
            "versions": {"tensorflow": tf.__version__, "ai_edge_litert": metadata.version("ai-edge-litert")}}

    def lower_inference(self, model, resolution, out, quantize, calibration, log) -> str:
        tf = _backend()
        from .graph import InferenceModule, Lowering

        model_bytes = convert(InferenceModule(Lowering(model), resolution), tf,
                              calibration if quantize == "int8" else None)
        atomic_write_bytes(model_bytes, out / tflite_runner.MODEL)
        return tflite_runner.MODEL

    def probe(self, model, batch_size, resolution):
        from .probe import TfliteProbe

        return TfliteProbe(model, batch_size, resolution, _backend(), convert)
