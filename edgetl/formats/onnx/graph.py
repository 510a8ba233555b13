"""Lower a policy-applied model to ONNX graphs that ONNX Runtime trains as PyTorch does.

    training = export_graph(run.model, resolution, training=True)    # onnx.ModelProto
    inference = export_graph(run.model, resolution, training=False)
    register_gradients()                                             # before generate_artifacts
    set_hardswish_threshold(training_proto, threshold)               # after it

The pitfalls of this stack (DESIGN.md section 5), each handled here:

- the legacy exporter, no constant folding, and ``TrainingMode.PRESERVE`` on a model in eval mode: the
  dynamo exporter folds batch norms into convs (their parameters vanish) or emits CastLike, which has no
  gradient, and ``TrainingMode.EVAL`` runs a peephole pass that fuses Conv + BatchNormalization in the
  inference graph, so trained norm shifts vanish from it and device-trained weights could not be loaded;
- batch norms are rewritten as plain ops in training graphs (a training-mode BatchNormalization makes
  an eval model that does not load, and ONNX Runtime turns even an inference-mode one into its
  training kernel, which normalises with batch statistics): frozen and shift-only norms as
  ``(x - mean) * s + beta`` with a frozen ``s``, fully trained norms with batch statistics computed by
  ReduceMean, exactly PyTorch's training-mode normalisation;
- ONNX Runtime registers no gradient for HardSigmoid, its Clip (ReLU6) gradient is not PyTorch's, and
  its HardSwish gradient is not MobileTL's: ``register_gradients`` gives HardSigmoid and Clip PyTorch's
  exact gradients and HardSwish the sign approximation
  ``dY * (X > t)`` (Greater, Cast, Mul: standard ops, so any device runtime runs them). Plain Hard-Swish
  (``ft:K``, ``full``) is written as ``x * HardSigmoid(x)``, whose gradient is then exact;
- the legacy exporter may merge initializers with equal values (e.g. zero biases) behind Identity
  nodes, so parameter names vanish: ``restore_initializers`` gives each its own initializer back;
- onnx newer than 1.17 writes IR versions that onnxruntime-training 1.19.2 refuses: checked up front.
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...exporters.base import ExportError
from ...ops import FrozenConv2d, FrozenLinear, MaskedActivation, MaskedHardswish, ShiftOnlyBatchNorm2d

OPSET = 17
MAX_IR_VERSION = 10  # what onnxruntime-training 1.19.2 loads
INPUT, OUTPUT = "input", "logits"


class _AffineNorm(nn.BatchNorm2d):
    """Shift-only norm as plain ops: frozen statistics and scale, trainable shift."""

    def forward(self, x):
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return (x - self.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class _BatchStatNorm(nn.BatchNorm2d):
    """Training-mode batch norm as plain ops (batch mean and biased variance, as PyTorch normalises).

    The batch statistics are also handed to ``collector`` (when set), which makes them graph outputs: the
    device runner updates the running statistics from them, as PyTorch does in training mode.
    """

    collector: list | None = None

    def forward(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
        if self.collector is not None:
            self.collector += [mean.reshape(-1), var.reshape(-1)]
        return centred / torch.sqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class _WithBatchStats(nn.Module):
    """Outputs (logits, mean_1, var_1, mean_2, var_2, ...) of the fully trained norms, in execution order."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stats: list = []
        for m in model.modules():
            if isinstance(m, _BatchStatNorm):
                m.collector = self.stats

    def forward(self, x):
        self.stats.clear()
        logits = self.model(x)
        return (logits, *self.stats)


def batch_stat_norms(model: nn.Module, resolution: int, input_shape=None) -> list[dict]:
    """The fully trained norms in execution order: name, momentum, and elements per channel per image
    (``input_shape``: (C, H, W) of the input, default an image at ``resolution``)."""
    lowered = lower(model, training=True)
    found = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: found.append(
        {"name": n, "momentum": m.momentum, "spatial": int(i[0].shape[2] * i[0].shape[3])}))
        for n, m in lowered.named_modules() if isinstance(m, _BatchStatNorm)]
    with torch.no_grad():
        lowered(torch.zeros(2, *(input_shape or (3, resolution, resolution))))
    for h in hooks:
        h.remove()
    return found


class _HardswishExact(nn.Module):
    """Hard-Swish as x * HardSigmoid(x): with HardSigmoid's registered gradient, the exact derivative."""

    def forward(self, x):
        return x * F.hardsigmoid(x)


def _plain_activation(m: MaskedActivation) -> nn.Module:
    return m.replaces()  # MaskedHardswish -> nn.Hardswish: the HardSwish op, with MobileTL's registered gradient


def lower(model: nn.Module, training: bool) -> nn.Module:
    """A copy of ``model`` made of modules the ONNX exporter maps to differentiable standard ops."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaskedActivation):
                parent._modules[name] = _plain_activation(child)
            elif type(child) is nn.Hardswish and training:
                parent._modules[name] = _HardswishExact()
            elif isinstance(child, FrozenConv2d):
                child.__class__ = nn.Conv2d
            elif isinstance(child, FrozenLinear):
                child.__class__ = nn.Linear
            elif isinstance(child, nn.BatchNorm2d) and training:
                # no BatchNormalization op in a training graph: ONNX Runtime swaps it for its training-mode
                # kernel, so frozen norms would normalise with batch statistics
                child.__class__ = _BatchStatNorm if child.weight.requires_grad else _AffineNorm
            elif isinstance(child, ShiftOnlyBatchNorm2d):
                child.__class__ = nn.BatchNorm2d
    return model.eval()


def export_graph(model: nn.Module, resolution: int, training: bool, norms: list[dict] | None = None,
                 input_shape=None, output: str = OUTPUT):
    """The ONNX ModelProto of ``model`` (training or inference semantics), guarded against the pitfalls.

    ``input_shape``: (C, H, W) of the input (default an image at ``resolution``; the trained region of a split
    export takes the prefix's features); the batch dimension is dynamic."""
    import onnx

    input_shape = tuple(input_shape or (3, resolution, resolution))
    lowered = lower(model, training)
    if training and norms is None:
        norms = batch_stat_norms(model, resolution, input_shape)
    stats = [f"{s['name']}.batch_{k}" for s in norms for k in ("mean", "var")] if training else []
    f = io.BytesIO()
    with torch.no_grad() if not training else torch.enable_grad():
        torch.onnx.export(_WithBatchStats(lowered) if training else lowered, torch.randn(2, *input_shape),
                          f, input_names=[INPUT], output_names=[output, *stats],
                          dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
                          opset_version=OPSET, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, export_params=True)
    proto = onnx.load_from_string(f.getvalue())
    if proto.ir_version > MAX_IR_VERSION:
        raise ExportError(f"onnx {onnx.__version__} wrote IR version {proto.ir_version}, which onnxruntime-training "
                          f"cannot load (at most {MAX_IR_VERSION}); install onnx==1.17.0 (pip install 'edgetl[onnx]')")
    prefix = "model." if training else ""  # the statistics wrapper holds the model as .model
    for init in proto.graph.initializer:
        if init.name.startswith(prefix):
            init.name = init.name[len(prefix):]
    for node in proto.graph.node:
        node.input[:] = [i[len(prefix):] if i.startswith(prefix) else i for i in node.input]
    names = [n for n, _ in lowered.named_parameters()]
    restore_initializers(proto, names + [n for n, _ in lowered.named_buffers()])
    initializers = {i.name for i in proto.graph.initializer}
    lost = [n for n, p in model.named_parameters() if p.requires_grad and n not in initializers]
    if lost:
        raise ExportError(f"the {'training' if training else 'inference'} graph lost trainable parameters "
                          f"({', '.join(lost[:5])}): the exporter fused or renamed them")
    check_supported(proto)
    return proto


def restore_initializers(proto, names: list[str]) -> list[str]:
    """Give parameters that the exporter merged behind Identity nodes their own initializer again."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    restored = []
    for node in list(proto.graph.node):
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] in names \
                and node.output[0] not in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            proto.graph.initializer.append(numpy_helper.from_array(array.copy(), node.output[0]))
            proto.graph.node.remove(node)
            restored.append(node.output[0])
    return restored


#: ops the training graphs may contain; anything else is named in an error
SUPPORTED_OPS = {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sqrt", "Relu", "Clip", "HardSigmoid",
                 "HardSwish", "GlobalAveragePool", "ReduceMean", "Reshape", "Flatten", "Constant", "Identity",
                 "BatchNormalization", "Shape", "Gather", "Unsqueeze", "Concat"}


def check_supported(proto) -> None:
    unknown = sorted({n.op_type for n in proto.graph.node} - SUPPORTED_OPS)
    if unknown:
        raise ExportError(f"the model contains ONNX ops edgetl cannot train on device: {', '.join(unknown)}; "
                          f"only MobileNet layers (conv, norms, ReLU/ReLU6/Hard-Swish/Hardsigmoid, SE, pooling, linear) "
                          f"are supported")


def _gradient(nodes):
    from onnxruntime.capi import _pybind_state as C

    out = []
    for op, inputs, outputs, *attrs in nodes:
        node = C.GradientNodeDefinition()
        node.op_type, node.domain, node.inputs, node.outputs = op, "", inputs, outputs
        defs = []
        for key, value in (attrs[0] if attrs else {}).items():
            a = C.GradientNodeAttributeDefinition()
            a.name, a.value_json, a.dtype = key, json.dumps(value["value"]), value["dtype"]
            a.is_tensor = value.get("is_tensor", False)
            defs.append(a)
        node.attributes = defs
        out.append(node)
    return out


def _const(name: str, value: float):
    return ("Constant", [], [name], {"value": {"value": value, "dtype": "float", "is_tensor": True}})


_TO_FLOAT = {"to": {"value": 1, "dtype": "int"}}


_registered = False


def register_gradients() -> None:
    """Gradients for Clip and HardSigmoid (exact, as PyTorch's) and HardSwish (MobileTL's sign approximation),
    before ``generate_artifacts``.

    ONNX Runtime's registry is process-wide and keeps the *first* definition of an op, so this registers once,
    and the run's Hard-Swish threshold is written into each generated training model afterwards
    (:func:`set_hardswish_threshold`): a second export with another threshold in the same process gets its own.
    """
    global _registered
    if _registered:
        return
    from onnxruntime.capi import _pybind_state as C

    # torch's Hardsigmoid: alpha = 1/6, beta = 1/2, so the slope 1/6 holds on (-3, 3)
    C.register_gradient_definition("::HardSigmoid", _gradient([
        _const("lo", -3.0), _const("hi", 3.0), _const("slope", 1.0 / 6.0),
        ("Greater", ["I(0)", "lo"], ["above"]), ("Less", ["I(0)", "hi"], ["below"]),
        ("And", ["above", "below"], ["inside"]), ("Cast", ["inside"], ["insidef"], _TO_FLOAT),
        ("Mul", ["insidef", "slope"], ["dydx"]), ("Mul", ["GO(0)", "dydx"], ["GI(0)"]),
    ]))
    # ReLU6 exports as Clip; ONNX Runtime's own Clip gradient differs from PyTorch's 1[min < x < max]
    # (3 % of the largest gradient on MobileNetV2), so it is replaced by PyTorch's
    C.register_gradient_definition("::Clip", _gradient([
        ("Greater", ["I(0)", "I(1)"], ["above"]), ("Less", ["I(0)", "I(2)"], ["below"]),
        ("And", ["above", "below"], ["inside"]), ("Cast", ["inside"], ["insidef"], _TO_FLOAT),
        ("Mul", ["GO(0)", "insidef"], ["GI(0)"]),
    ]))
    C.register_gradient_definition("::HardSwish", _gradient([
        _const("threshold", 0.0),  # set per model by set_hardswish_threshold
        ("Greater", ["I(0)", "threshold"], ["mask"]), ("Cast", ["mask"], ["maskf"], _TO_FLOAT),
        ("Mul", ["GO(0)", "maskf"], ["GI(0)"]),
    ]))
    _registered = True


def set_hardswish_threshold(proto, threshold: float) -> int:
    """Write ``threshold`` into every HardSwish gradient of a generated training model (its ``threshold``
    constants); returns how many there were."""
    from onnx import numpy_helper

    count = 0
    for init in proto.graph.initializer:
        if init.name.endswith("HardSwish_Grad/threshold"):
            value = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full_like(value, threshold), init.name))
            count += 1
    return count


def hardswish_threshold(model: nn.Module) -> float:
    thresholds = {m.threshold for m in model.modules() if isinstance(m, MaskedHardswish)}
    if len(thresholds) > 1:
        raise ExportError(f"the model mixes Hard-Swish thresholds {sorted(thresholds)}; ONNX export needs one")
    return thresholds.pop() if thresholds else 0.0
