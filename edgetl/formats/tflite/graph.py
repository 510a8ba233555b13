"""Lower a policy-applied PyTorch MobileNet to TensorFlow functions that TFLite trains with builtin ops.

    lowered = Lowering(training_copy(run.model))
    logits = lowered.forward(images_nchw, training=True)      # inside a tf.function
    module = TrainingModule(lowered, batch_size=8, resolution=96, optimizer=spec)
    tf.saved_model.save(module, path, signatures=module.signatures())

Each PyTorch module type has a lowering registered in ``LOWERINGS`` (found along the class's MRO), so
an unknown layer fails with its name and type. Parameters the policy trains become ``tf.Variable``s in
TF layout; everything frozen becomes a constant. Norms that PyTorch runs with batch statistics in
training (the fully trained ones) keep their running statistics as variables, updated in the training
signatures with PyTorch's momentum and unbiased variance. The frozen prefix (``features[:split]``) runs
in inference mode with no gradient, as :class:`edgetl.surgery.FrozenPrefix` does. A conv followed by a norm whose
scale is a constant (MobileTL's shift-only norms, frozen norms) lowers as one conv: the scale folded into its kernel,
the shift as its bias. Every layer's ops carry its name as their name scope (op profiles read it).

Signatures (fixed batch size; the input is NCHW, as in PyTorch, and transposed in the graph):

=================  ===========================================================================
``train``          images, labels, lr -> loss: forward, backward, running statistics, optimizer step
``gradients``      images, labels -> loss, g000...: the same without the optimizer step (validation)
``infer``          images -> logits, inference mode, with the current weights
``get_weights``    -> p000...: every variable (parameters and running statistics in PyTorch layout,
                   optimizer state) ; ``set_weights`` takes the same and assigns it
``step_count``     -> step: the optimizer's step count (the runner's first call: it initializes the variables)
=================  ===========================================================================

Dropout is not lowered into training (the device trains without it; validation does the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3
from torchvision.ops.misc import SqueezeExcitation

from ...exporters.base import ExportError
from ...exporters.split import Prefix
from ...ops import MaskedActivation, MaskedHardswish, ShiftOnlyBatchNorm2d
from ...optim import OptimizerSpec
from ...surgery import FrozenPrefix
from .ops import (
    FORWARD,
    activation,
    affine,
    batch_norm,
    channel_scale,
    conv2d,
    cross_entropy,
    matmul,
    pooled,
    spatial_mean,
)

SIGNATURES = ("train", "gradients", "infer", "get_weights", "set_weights", "step_count")
#: PyTorch layout -> TF layout, per kind of weight (and back with the inverse permutation)
CONV_TO_TF, DEPTHWISE_TO_TF = (2, 3, 1, 0), (2, 3, 0, 1)


@dataclass
class Variable:
    """One variable of the exported model, named as PyTorch names it (or ``optimizer.<param>.<slot>``)."""

    name: str
    kind: str  # "param", "stat", "slot"
    var: tf.Variable
    to_tf: tuple[int, ...] | None = None  # permutation PyTorch -> TF layout

    @property
    def from_tf(self) -> tuple[int, ...] | None:
        return tuple(int(i) for i in np.argsort(self.to_tf)) if self.to_tf else None

    def torch_value(self):
        return tf.transpose(self.var, self.from_tf) if self.to_tf else tf.identity(self.var)

    def assign_torch(self, value):
        return self.var.assign(tf.transpose(value, self.to_tf) if self.to_tf else value)

    def torch_shape(self) -> list[int]:
        shape = self.var.shape.as_list()
        return [shape[i] for i in self.from_tf] if self.to_tf else shape


class _Context:
    def __init__(self, training: bool, taps: dict | None = None):
        self.training = training
        self.taps = taps  # layer name -> its output (NHWC), when a layer-by-layer comparison asks for them
        self.frozen = False  # inside the frozen prefix: inference semantics, no gradient
        self.grad_flows = False  # a trained tensor came before: input gradients are needed from here on
        self.stats: list[tuple] = []  # (norm name, batch mean, batch variance, elements per channel)

    @property
    def backprop(self) -> bool:
        """This layer is differentiated: a training graph, outside the frozen prefix."""
        return self.training and not self.frozen


LOWERINGS: dict[type, callable] = {}


def lowers(*types):
    def register(fn):
        for t in types:
            LOWERINGS[t] = fn
        return fn
    return register


class Lowering:
    """The TensorFlow version of one policy-applied model: its tensors, and a forward that walks its modules."""

    def __init__(self, model: nn.Module):
        self.model = model  # a training copy: train mode, so the norms PyTorch trains with batch statistics show
        # plain norms in training mode (the frozen prefix is in inference mode): batch statistics, as PyTorch
        self.batch_norms = {n for n, m in model.named_modules() if type(m) is nn.BatchNorm2d and m.training}
        self.variables: dict[str, Variable] = {}
        self.tensors: dict[str, tf.Tensor] = {}
        modules = dict(model.named_modules())
        self.kept_outputs = _kept_outputs(model)
        for name, p in model.named_parameters():
            self._add(name, p.detach().numpy(), "param" if p.requires_grad else None, modules)
        for name, b in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                owner = name.rsplit(".", 1)[0]
                self._add(name, b.numpy(), "stat" if owner in self.batch_norms else None, modules)

    def _add(self, name: str, value: np.ndarray, kind: str | None, modules: dict) -> None:
        owner = modules[name.rsplit(".", 1)[0]]
        perm = None
        if isinstance(owner, nn.Conv2d) and name.endswith(".weight"):
            perm = DEPTHWISE_TO_TF if _depthwise(owner) else CONV_TO_TF
        tf_value = np.ascontiguousarray(np.transpose(value, perm) if perm else value, dtype=np.float32)
        if kind is None:
            self.tensors[name] = tf.constant(tf_value)
        else:
            var = tf.Variable(tf_value, name=name.replace(".", "/"))
            self.variables[name] = Variable(name, kind, var, perm)

    def tensor(self, name: str):
        v = self.variables.get(name)
        return v.var if v is not None else self.tensors[name]

    def trains(self, name: str) -> bool:
        v = self.variables.get(name)
        return v is not None and v.kind == "param"

    def forward(self, images_nchw, training: bool, taps: dict | None = None):
        """(logits, context): the context holds the batch statistics a training forward computed (and fills
        ``taps`` with every layer's output by module name, when given)."""
        ctx = _Context(training, taps)
        return self.run(self.model, "", tf.transpose(images_nchw, [0, 2, 3, 1]), ctx), ctx

    def run(self, module: nn.Module, name: str, x, ctx: _Context):
        for cls in type(module).__mro__:
            if cls in LOWERINGS:
                with tf.name_scope(f"{name}/" if name else "model/"):  # ops named after their layer (op profiles)
                    y = LOWERINGS[cls](self, module, name, x, ctx)
                if ctx.taps is not None and name:
                    ctx.taps[name] = y
                return y
        raise ExportError(f"cannot export layer {name or 'model'} ({type(module).__module__}.{type(module).__name__}) "
                          f"to TFLite: edgetl lowers MobileNet layers only (conv, depthwise conv, batch norm, "
                          f"ReLU/ReLU6/Hard-Swish/Hardsigmoid, squeeze-excitation, pooling, linear, dropout)")

    def child(self, module: nn.Module, name: str, child: str, x, ctx: _Context):
        return self.run(getattr(module, child), _path(name, child), x, ctx)


def _kept_outputs(model: nn.Module) -> set[str]:
    """Layers whose output the next layer keeps for its own backward: the input of a conv with a trained weight (its
    weight gradient reads it) or of squeeze-excitation (the input it scales). An activation there needs no mask of
    its own (:func:`.ops.activation`)."""
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    squeezes = {f"{n}.avgpool" for n, m in model.named_modules() if isinstance(m, SqueezeExcitation)}
    return {name for (name, _), (after, nxt) in zip(leaves, leaves[1:])
            if (isinstance(nxt, nn.Conv2d) and nxt.weight.requires_grad) or after in squeezes}


def _depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


# -- lowerings -------------------------------------------------------------------------------------

@lowers(nn.Sequential)
def _sequential(lw: Lowering, m, name, x, ctx):
    children = list(m._modules)
    i = 0
    while i < len(children):
        if i + 1 < len(children) and _foldable(lw, m, children[i], children[i + 1], name, ctx):
            x = _conv_constant_norm(lw, m, name, children[i], children[i + 1], x, ctx)
            i += 2
        else:
            x = lw.child(m, name, children[i], x, ctx)
            i += 1
    return x


def _path(name: str, child: str) -> str:
    return f"{name}.{child}" if name else child


def _foldable(lw: Lowering, m, conv: str, norm: str, name: str, ctx) -> bool:
    """A conv followed by a norm whose scale is a constant (running statistics and a frozen weight: MobileTL's
    shift-only norms, the frozen layers' norms): the scale folds into the conv's weight. Not while layers are tapped
    one by one (:mod:`.layerdiff` compares every layer's output)."""
    c, n = getattr(m, conv), getattr(m, norm)
    norm_name = _path(name, norm)
    return (ctx.taps is None and isinstance(c, nn.Conv2d) and c.bias is None and isinstance(n, nn.BatchNorm2d)
            and not (ctx.backprop and norm_name in lw.batch_norms) and not lw.trains(f"{norm_name}.weight"))


def _conv_constant_norm(lw: Lowering, m, name, conv: str, norm: str, x, ctx):
    """conv then norm as one conv: weight * scale per output channel, and the norm's shift as the conv's bias. Two
    passes over the activation saved in the forward pass (the norm's product) and two in the backward pass (its
    input gradient): the scale is applied to the kernel, a few thousand numbers, and TensorFlow's gradient of that
    product carries the weight's gradient back."""
    c, n = getattr(m, conv), getattr(m, norm)
    conv_name, norm_name = _path(name, conv), _path(name, norm)
    with tf.name_scope(f"{conv_name}/"):
        scale = lw.tensor(f"{norm_name}.weight") * tf.math.rsqrt(lw.tensor(f"{norm_name}.running_var") + n.eps)
        shift = lw.tensor(f"{norm_name}.bias") - lw.tensor(f"{norm_name}.running_mean") * scale
        weight = lw.tensor(f"{conv_name}.weight")
        folded = weight * (tf.reshape(scale, [-1, 1]) if _depthwise(c) else scale)  # the output channel's axis
        train_w, train_b = _grads(lw, ctx, f"{conv_name}.weight"), _grads(lw, ctx, f"{norm_name}.bias")
        grads = (ctx.grad_flows and ctx.backprop, train_w, train_b)
        ctx.grad_flows |= train_w or train_b
        return _lower_conv(c, conv_name, x, folded, shift, grads, dynamic=isinstance(weight, tf.Variable))


@lowers(FrozenPrefix)
def _frozen_prefix(lw: Lowering, m, name, x, ctx):
    was = ctx.frozen
    ctx.frozen = True
    for i in range(m.split):
        x = lw.child(m, name, str(i), x, ctx)
    ctx.frozen = was
    x = tf.stop_gradient(x)
    for i in range(m.split, len(m)):
        x = lw.child(m, name, str(i), x, ctx)
    return x


@lowers(Prefix)
def _prefix(lw: Lowering, m, name, x, ctx):
    was = ctx.frozen
    ctx.frozen = True  # inference semantics, no gradient: the frozen prefix of a split export
    x = lw.child(m, name, "features", x, ctx)
    ctx.frozen = was
    return tf.transpose(x, [0, 3, 1, 2])  # NCHW features, as the trained region (and PyTorch) takes them


@lowers(mobilenetv2.MobileNetV2, mobilenetv3.MobileNetV3)
def _mobilenet(lw: Lowering, m, name, x, ctx):
    x = lw.child(m, name, "features", x, ctx)
    x = spatial_mean(x)  # adaptive average pooling to 1x1, flattened
    return lw.child(m, name, "classifier", x, ctx)


@lowers(mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual)
def _inverted_residual(lw: Lowering, m, name, x, ctx):
    y = lw.child(m, name, "conv" if isinstance(m, mobilenetv2.InvertedResidual) else "block", x, ctx)
    return x + y if m.use_res_connect else y


@lowers(SqueezeExcitation)
def _squeeze_excitation(lw: Lowering, m, name, x, ctx):
    x, s = pooled(x) if ctx.backprop and ctx.grad_flows else (x, spatial_mean(x, keepdims=True))
    for child in ("fc1", "activation", "fc2", "scale_activation"):
        s = lw.child(m, name, child, s, ctx)
    return channel_scale(x, s) if ctx.backprop and ctx.grad_flows else s * x


@lowers(nn.AdaptiveAvgPool2d)
def _pool(lw: Lowering, m, name, x, ctx):
    if m.output_size not in (1, (1, 1)):
        raise ExportError(f"{name}: only global average pooling is supported, not output size {m.output_size}")
    return spatial_mean(x, keepdims=True)


@lowers(nn.Dropout, nn.Identity)
def _identity(lw: Lowering, m, name, x, ctx):
    return x


@lowers(nn.Conv2d)
def _conv(lw: Lowering, m, name, x, ctx):
    bias = f"{name}.bias" if m.bias is not None else None
    train_w, train_b = _grads(lw, ctx, f"{name}.weight"), bool(bias) and _grads(lw, ctx, bias)
    grads = (ctx.grad_flows and ctx.backprop, train_w, train_b)
    ctx.grad_flows |= train_w or train_b
    weight = lw.tensor(f"{name}.weight")
    return _lower_conv(m, name, x, weight, lw.tensor(bias) if bias else None, grads, isinstance(weight, tf.Variable))


def _lower_conv(m: nn.Conv2d, name: str, x, weight, bias, grads, dynamic: bool):
    if m.groups not in (1, m.in_channels) or m.dilation != (1, 1) or len(set(m.stride)) != 1 \
            or isinstance(m.padding, str) or len(set(m.padding)) != 1 or m.padding_mode != "zeros":
        raise ExportError(f"{name}: conv with groups={m.groups}, dilation={m.dilation}, stride={m.stride}, "
                          f"padding={m.padding!r} is not supported by the TFLite export")
    return conv2d(x, weight, bias, m.stride[0], m.padding[0], _depthwise(m), grads, dynamic=dynamic)


@lowers(nn.Linear)
def _linear(lw: Lowering, m, name, x, ctx):
    ctx.grad_flows |= any(_grads(lw, ctx, f"{name}.{p}") for p in ("weight", "bias") if getattr(m, p) is not None)
    y = matmul(x, lw.tensor(f"{name}.weight"), transpose_b=True)  # PyTorch's (out, in) layout
    return y + lw.tensor(f"{name}.bias") if m.bias is not None else y


def _grads(lw: Lowering, ctx: _Context, param: str) -> bool:
    return ctx.backprop and lw.trains(param)


@lowers(nn.BatchNorm2d)
def _batch_norm(lw: Lowering, m, name, x, ctx):
    weight, bias = lw.tensor(f"{name}.weight"), lw.tensor(f"{name}.bias")
    train_w, train_b = _grads(lw, ctx, f"{name}.weight"), _grads(lw, ctx, f"{name}.bias")
    want_x = ctx.grad_flows and ctx.backprop
    ctx.grad_flows |= train_w or train_b
    if ctx.backprop and name in lw.batch_norms:
        y, mean, var = batch_norm(x, weight, bias, m.eps, (want_x, train_w, train_b))
        ctx.stats.append((name, m.momentum, mean, var, x.shape[0] * x.shape[1] * x.shape[2]))
        return y
    scale = weight * tf.math.rsqrt(lw.tensor(f"{name}.running_var") + m.eps)  # constant unless statistics train
    shift = bias - lw.tensor(f"{name}.running_mean") * scale
    return affine(x, scale, shift, (want_x, train_w, train_w or train_b))  # the shift depends on the weight too


LOWERINGS[ShiftOnlyBatchNorm2d] = _batch_norm  # never in batch_norms: running statistics, trainable shift

_KINDS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardsigmoid: "hardsigmoid", nn.Hardswish: "hardswish"}


@lowers(*_KINDS, MaskedActivation)
def _activation(lw: Lowering, m, name, x, ctx):
    masked = isinstance(m, MaskedActivation)
    kind = _KINDS[m.replaces if masked else type(m)]
    if not (ctx.backprop and ctx.grad_flows):
        return FORWARD[kind](x)
    threshold = m.threshold if isinstance(m, MaskedHardswish) else 0.0
    return activation(x, kind, masked=masked, threshold=threshold, output_kept=name in lw.kept_outputs)


# -- signatures ------------------------------------------------------------------------------------

class TrainingModule(tf.Module):
    """The variables and the signatures of the exported model (see the module docstring)."""

    def __init__(self, lowering: Lowering, batch_size: int, resolution: int, optimizer: OptimizerSpec,
                 input_shape=None, input_name: str = "images"):
        """``input_shape`` (C, H, W) and ``input_name``: the trained region of a split export takes the prefix's
        ``features``; default, images at ``resolution``."""
        super().__init__()
        self.lowering, self.spec = lowering, optimizer
        self.params = [v for v in lowering.variables.values() if v.kind == "param"]
        self.slots: dict[str, list[Variable]] = {}
        names = {"adamw": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",) if optimizer.momentum else ()}
        for slot in names[optimizer.name]:
            self.slots[slot] = [Variable(f"optimizer.{p.name}.{slot}", "slot", tf.Variable(tf.zeros_like(p.var)), p.to_tf)
                                for p in self.params]
        self.step = Variable("optimizer.step", "slot", tf.Variable(0.0))
        self.state = [*lowering.variables.values(), *(v for vs in self.slots.values() for v in vs), self.step]
        self._vars = [v.var for v in self.state]  # tracked, so the saved model holds them
        self.keys = {v.name: f"p{i:03d}" for i, v in enumerate(self.state)}
        images = tf.TensorSpec([batch_size, *(input_shape or (3, resolution, resolution))], tf.float32, name=input_name)
        labels = tf.TensorSpec([batch_size], tf.int32, name="labels")
        lr = tf.TensorSpec([], tf.float32, name="lr")
        self.train = tf.function(self._train, input_signature=[images, labels, lr])
        self.gradients = tf.function(self._gradients, input_signature=[images, labels])
        self.infer = tf.function(self._infer, input_signature=[images])
        self.get_weights = tf.function(self._get_weights, input_signature=[])
        self.set_weights = tf.function(self._set_weights, input_signature=[
            tf.TensorSpec(v.torch_shape(), tf.float32, name=self.keys[v.name]) for v in self.state])
        self.step_count = tf.function(self._step_count, input_signature=[])

    def signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}

    def _loss_and_grads(self, images, labels):
        with tf.GradientTape() as tape:
            logits, ctx = self.lowering.forward(images, training=True)
            with tf.name_scope("loss/"):
                loss = cross_entropy(logits, labels)
        grads = tape.gradient(loss, [p.var for p in self.params])
        missing = [p.name for p, g in zip(self.params, grads) if g is None]
        if missing:
            raise ExportError(f"no gradient reaches {', '.join(missing[:5])}: the lowering lost their path")
        for name, momentum, mean, var, n in ctx.stats:  # PyTorch keeps the unbiased variance
            with tf.name_scope(f"{name}/running_stats/"):
                for key, batch in (("running_mean", mean), ("running_var", var * (n / max(n - 1, 1)))):
                    v = self.lowering.variables[f"{name}.{key}"].var
                    v.assign((1.0 - momentum) * v + momentum * batch)
        return loss, grads

    def _train(self, images, labels, lr):
        loss, grads = self._loss_and_grads(images, labels)
        with tf.name_scope("optimizer/"):
            self._optimizer_step(grads, lr)
        return {"loss": loss}

    def _gradients(self, images, labels):
        loss, grads = self._loss_and_grads(images, labels)
        out = {"loss": loss}
        for p, g in zip(self.params, grads):
            out[self.keys[p.name].replace("p", "g", 1)] = tf.transpose(g, p.from_tf) if p.to_tf else g
        return out

    def _optimizer_step(self, grads, lr):
        s = self.spec
        if s.name == "adamw":  # PyTorch's AdamW: decoupled decay, bias-corrected moments
            t = self.step.var.assign_add(1.0)
            c1, c2 = 1.0 - tf.pow(s.betas[0], t), 1.0 - tf.pow(s.betas[1], t)
            for p, g, m, v in zip(self.params, grads, self.slots["exp_avg"], self.slots["exp_avg_sq"]):
                if s.weight_decay:  # first: the forward pass's read of p serves it (decayed at the end, the read
                    # would be held through the step)
                    p.var.assign(p.var * (1.0 - lr * s.weight_decay))
                # the new moments are used as computed, not read back: every read copies the whole tensor
                m_new = s.betas[0] * m.var + (1.0 - s.betas[0]) * g
                v_new = s.betas[1] * v.var + (1.0 - s.betas[1]) * g * g
                m.var.assign(m_new)
                v.var.assign(v_new)
                p.var.assign_sub((lr / c1) * m_new / (tf.sqrt(v_new) / tf.sqrt(c2) + s.eps))
            return
        self.step.var.assign_add(1.0)  # PyTorch's SGD: L2 decay in the gradient, momentum buffer starts at g
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if s.weight_decay:
                g = g + s.weight_decay * p.var
            if s.momentum:
                buf = self.slots["momentum_buffer"][i].var
                g = buf.assign(s.momentum * buf + g)
            p.var.assign_sub(lr * g)

    def _infer(self, images):
        logits, _ = self.lowering.forward(images, training=False)
        return {"logits": logits}

    def _get_weights(self):
        return {self.keys[v.name]: v.torch_value() for v in self.state}

    def _set_weights(self, *values):
        for v, value in zip(self.state, values):
            v.assign_torch(value)
        return {"ok": tf.constant(1.0)}

    def _step_count(self):
        # the cheapest signature: the runner calls it first, so the variables take their initial values (from
        # the model file, once) before any step allocates its working memory
        return {"step": self.step.var.read_value()}


class InferenceModule(tf.Module):
    """An inference export: one signature, ``infer``: images (any batch, NCHW) -> logits, every weight a constant
    (lower a model whose parameters require no gradient, in eval mode)."""

    signature, output = "infer", "logits"

    def __init__(self, lowering: Lowering, resolution: int):
        super().__init__()
        self.lowering = lowering
        spec = tf.TensorSpec([None, 3, resolution, resolution], tf.float32, name="images")
        self.call = tf.function(self._call, input_signature=[spec])

    def signatures(self) -> dict:
        return {self.signature: self.call.get_concrete_function()}

    def _call(self, images):
        out, _ = self.lowering.forward(images, training=False)
        return {self.output: out}


class PrefixModule(InferenceModule):
    """The frozen prefix of a split export: one signature, ``prefix``: images (any batch) -> features."""

    signature, output = "prefix", "features"
