"""Frozen conv and linear layers whose backward keeps no input.

A stock ``nn.Conv2d`` saves its input for backward even when its weight is frozen; the input gradient
only needs the weight. Policies that backpropagate through frozen layers (``bias``, ``bn+last``) use
these instead. An existing bias may still be trained: its gradient is the sum of the output gradient.

    conv = FrozenConv2d.from_module(model.features[0][0])   # in place, same state_dict
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _FrozenConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        ctx.save_for_backward(weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding, dilation, groups)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, None, grad_bias, None, None, None, None


class _FrozenLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


def _reclass(module: nn.Module, base: type[nn.Module], cls: type[nn.Module]) -> nn.Module:
    # Re-classing in place keeps the parameter objects and state_dict keys unchanged.
    if type(module) is not base:
        raise TypeError(f"expected torch.nn.{base.__name__}, got {type(module).__name__}")
    module.__class__ = cls
    module.weight.requires_grad_(False)
    return module


class FrozenConv2d(nn.Conv2d):
    """Conv2d with a frozen weight whose backward stores only the weight (no input)."""

    @classmethod
    def from_module(cls, conv: nn.Conv2d) -> "FrozenConv2d":
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FrozenConv2d supports zero padding given as numbers, not {conv.padding!r}")
        return _reclass(conv, nn.Conv2d, cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias_trains = self.bias is not None and self.bias.requires_grad
        if not torch.is_grad_enabled() or not (x.requires_grad or bias_trains):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return _FrozenConv2dFn.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class FrozenLinear(nn.Linear):
    """Linear with a frozen weight whose backward stores only the weight (no input)."""

    @classmethod
    def from_module(cls, linear: nn.Linear) -> "FrozenLinear":
        return _reclass(linear, nn.Linear, cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias_trains = self.bias is not None and self.bias.requires_grad
        if not torch.is_grad_enabled() or not (x.requires_grad or bias_trains):
            return F.linear(x, self.weight, self.bias)
        return _FrozenLinearFn.apply(x, self.weight, self.bias)
