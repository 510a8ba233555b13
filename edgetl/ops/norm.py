"""Shift-only batch norm: frozen running statistics and scale, trainable shift (MobileTL).

As an affine map with a constant scale s = gamma / sqrt(var + eps), its backward needs no stored
activation: dx = dy * s and dbeta = sum(dy). It saves only the (frozen) weight and running variance,
which are parameters, not activations.

    bn = ShiftOnlyBatchNorm2d.from_module(model.features[5].conv[0][1])   # in place, same state_dict
    bn.weight.requires_grad_(False); bn.bias.requires_grad_(True)

Whatever the module's training flag, it normalises with the running statistics and never updates
them: freezing the statistics is what makes the scale constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ShiftOnlyBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps):
        ctx.eps = eps
        ctx.save_for_backward(weight, running_var)
        # F.batch_norm in inference mode is bit-identical to the eval-mode BatchNorm2d it replaces.
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        weight, running_var = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            scale = weight * torch.rsqrt(running_var + ctx.eps)
            grad_x = grad * scale.view(1, -1, 1, 1)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, None, grad_bias, None, None, None


class ShiftOnlyBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that trains only its shift (bias); keys and shapes of its state_dict unchanged."""

    @classmethod
    def from_module(cls, bn: nn.BatchNorm2d) -> "ShiftOnlyBatchNorm2d":
        # Re-classing in place keeps the parameter objects, so optimizers, hooks and state_dict keys
        # that refer to them stay valid.
        if type(bn) is not nn.BatchNorm2d:
            raise TypeError(f"expected torch.nn.BatchNorm2d, got {type(bn).__name__}")
        bn.__class__ = cls
        bn.weight.requires_grad_(False)
        return bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not (x.requires_grad or self.bias.requires_grad):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return _ShiftOnlyBN.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)
