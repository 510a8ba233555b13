"""Analytic cost rules, one per layer type: what backward keeps, and forward / backward FLOPs.

The memory rules follow DESIGN.md section 4 and what PyTorch's autograd really does on this stack
(each rule is checked against saved-tensor hooks by the tests):

=========================  ===================================================================
layer                      kept for backward (when a gradient flows through or into it)
=========================  ===================================================================
Conv2d / Linear            its input (a plain Conv2d keeps it even when only its input needs a
                           gradient; a Linear only when its weight trains)
FrozenConv2d/FrozenLinear  nothing
BatchNorm2d (train mode)   its input, plus the batch mean and inverse std (2 x C fp32)
ShiftOnlyBatchNorm2d       nothing
masked activations         1 bit per element, bit-packed (``MASK_BITS``)
ReLU                       its output (shared with the input when in place)
ReLU6 / Hardswish /        its input; when in place, PyTorch keeps a copy of the input, since the
Hardsigmoid                output overwrites it
Dropout                    its mask, as a tensor of the input's dtype (PyTorch's CPU kernel)
SqueezeExcitation          the multiply ``scale * x``: x (if the scale needs a gradient) and the
                           N x C scale (if x needs one)
pooling, flatten, add      nothing
=========================  ===================================================================

FLOPs are counted as 2 per multiply-add. Convs and linears: forward = 2·MACs; the input gradient
and the weight gradient each cost the same as the forward, and are counted only when needed (the
input gradient when the layer's input requires grad, i.e. something below it trains). Element-wise
layers use the per-element constants in ``ELEMENTWISE``.

A rule is ``rule(module, inp, out, grad) -> Cost``; ``RULES`` maps layer classes to rules, so a new
layer type is one function and one registration line.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from ..ops import FrozenConv2d, FrozenLinear, MaskedActivation, ShiftOnlyBatchNorm2d

FP32_BITS = 32
MASK_BITS = 1
INT64_BITS = 64

#: FLOPs per element: (forward, input gradient, weight/bias gradient)
ELEMENTWISE = {
    "bn_train": (6, 8, 4),  # mean, variance, normalise, affine; backward through the batch statistics
    "bn_affine": (2, 1, 1),  # constant scale and shift
    "activation": (1, 1, 0),
    "masked_activation": (2, 1, 0),  # the activation plus its mask; backward is one multiply
    "pool": (1, 1, 0),
    "dropout": (1, 1, 0),
    "scale": (1, 2, 0),  # SE: scale * x, gradient to both operands
}

_fresh = itertools.count(-1, -1)  # keys for tensors that exist only as saved copies (never collide)


@dataclass
class Keep:
    """One tensor kept for backward: ``key`` identifies its storage (shared storages count once)."""

    key: int
    elements_per_sample: float
    bits: int
    what: str
    fixed_bytes: int = 0  # batch-independent part (e.g. per-channel statistics)

    def nbytes(self, batch: int) -> int:
        return math.ceil(self.elements_per_sample * batch * self.bits / 8) + self.fixed_bytes


@dataclass
class Cost:
    keeps: list[Keep] = field(default_factory=list)
    forward_flops: float = 0.0  # per sample
    input_grad_flops: float = 0.0  # per sample, counted only when needed
    weight_grad_flops: float = 0.0
    needs_input_grad: bool = False
    needs_weight_grad: bool = False


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def per_sample(t: torch.Tensor) -> float:
    return t.numel() / t.shape[0]


def _rg(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _trains(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters(recurse=False))


def _keep_input(inp, what="input") -> Keep:
    return Keep(storage_key(inp), per_sample(inp), FP32_BITS, what)


def _elementwise(kind: str, inp, needs_in: bool, needs_w: bool, keeps=()) -> Cost:
    f, b_in, b_w = ELEMENTWISE[kind]
    n = per_sample(inp)
    return Cost(list(keeps), f * n, b_in * n if needs_in else 0.0, b_w * n if needs_w else 0.0, needs_in, needs_w)


def conv(m: nn.Conv2d, inp, out, grad: bool) -> Cost:
    kh, kw = m.kernel_size
    macs = per_sample(out) * (m.in_channels // m.groups) * kh * kw
    needs_in, needs_w = grad and _rg(inp), grad and _trains(m)
    frozen = isinstance(m, FrozenConv2d)
    keeps = [_keep_input(inp)] if grad and not frozen and (needs_in or m.weight.requires_grad) else []
    bias = per_sample(out) if m.bias is not None else 0
    return Cost(keeps, 2 * macs + bias, 2 * macs if needs_in else 0.0,
                (0 if frozen else 2 * macs) + bias if needs_w else 0.0, needs_in, needs_w)


def linear(m: nn.Linear, inp, out, grad: bool) -> Cost:
    macs = per_sample(inp) * m.out_features
    needs_in, needs_w = grad and _rg(inp), grad and _trains(m)
    frozen = isinstance(m, FrozenLinear)
    keeps = [_keep_input(inp)] if grad and not frozen and m.weight.requires_grad else []
    return Cost(keeps, 2 * macs + m.out_features, 2 * macs if needs_in else 0.0,
                (0 if frozen else 2 * macs) + m.out_features if needs_w else 0.0, needs_in, needs_w)


def batch_norm(m: nn.BatchNorm2d, inp, out, grad: bool) -> Cost:
    needs_in, needs_w = grad and _rg(inp), grad and _trains(m)
    if isinstance(m, ShiftOnlyBatchNorm2d):
        return _elementwise("bn_affine", inp, needs_in, needs_w)
    keeps = []
    if needs_in or needs_w:
        keep = _keep_input(inp)
        keep.fixed_bytes = 2 * m.num_features * 4 if m.training else 0
        keeps.append(keep)
    return _elementwise("bn_train" if m.training else "bn_affine", inp, needs_in, needs_w, keeps)


def masked_activation(m: MaskedActivation, inp, out, grad: bool) -> Cost:
    needs_in = grad and _rg(inp)
    keeps = [Keep(next(_fresh), per_sample(inp), MASK_BITS, "1-bit mask")] if needs_in else []
    return _elementwise("masked_activation", inp, needs_in, False, keeps)


def activation(m: nn.Module, inp, out, grad: bool) -> Cost:
    needs_in = grad and _rg(inp)
    keeps = []
    if needs_in:
        if isinstance(m, nn.ReLU):
            keeps.append(Keep(storage_key(out), per_sample(out), FP32_BITS, "output"))
        elif getattr(m, "inplace", False):
            keeps.append(Keep(next(_fresh), per_sample(inp), FP32_BITS, "copy of input (in place)"))
        else:
            keeps.append(_keep_input(inp))
    return _elementwise("activation", inp, needs_in, False, keeps)


def dropout(m: nn.Dropout, inp, out, grad: bool) -> Cost:
    needs_in = grad and _rg(inp) and m.training and m.p > 0
    bits = torch.finfo(inp.dtype).bits
    keeps = [Keep(next(_fresh), per_sample(inp), bits, "dropout mask")] if needs_in else []
    return _elementwise("dropout", inp, needs_in, False, keeps)


def squeeze_excitation(m: SqueezeExcitation, inp, out, grad: bool) -> Cost:
    # only the multiply ``scale * x`` in SqueezeExcitation.forward; its layers have their own rules
    x_needs = grad and _rg(inp)
    scale_needs = grad and (x_needs or any(p.requires_grad for p in m.parameters()))
    keeps = []
    if scale_needs:
        keeps.append(_keep_input(inp, "SE input (for the scale's gradient)"))
    if x_needs:
        keeps.append(Keep(next(_fresh), inp.shape[1], FP32_BITS, "SE scale"))
    return _elementwise("scale", inp, x_needs or scale_needs, False, keeps)


def nothing(m: nn.Module, inp, out, grad: bool) -> Cost:
    return _elementwise("pool", inp, grad and _rg(inp), False)


RULES: dict[type, Callable[..., Cost]] = {
    nn.Conv2d: conv,
    FrozenConv2d: conv,
    nn.Linear: linear,
    FrozenLinear: linear,
    nn.BatchNorm2d: batch_norm,
    ShiftOnlyBatchNorm2d: batch_norm,
    nn.ReLU: activation,
    nn.ReLU6: activation,
    nn.Hardswish: activation,
    nn.Hardsigmoid: activation,
    nn.Dropout: dropout,
    SqueezeExcitation: squeeze_excitation,
    nn.AdaptiveAvgPool2d: nothing,
    nn.Flatten: nothing,
    nn.Identity: nothing,
}


def rule_for(module: nn.Module) -> Callable[..., Cost] | None:
    if isinstance(module, MaskedActivation):
        return masked_activation
    return RULES.get(type(module))
