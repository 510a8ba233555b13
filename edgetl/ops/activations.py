"""Activations whose backward uses a 1-bit mask instead of the stored activation map (MobileTL).

The forward is exactly PyTorch's. For backward each op stores one bit per element, bit-packed:

=============  ======================================  =====================================
activation     mask                                    gradient
=============  ======================================  =====================================
ReLU           1[x > 0]                                exact
ReLU6          1[0 < x < 6]                            exact
Hardsigmoid    1[-3 < x < 3], times 1/6                exact
Hard-Swish     1[x > threshold] (default 0)            MobileTL's sign approximation of
                                                       (2x + 3)/6 on (-3, 3)
=============  ======================================  =====================================

    act = MaskedHardswish(threshold=0.0)
    y = act(x)           # == torch.nn.functional.hardswish(x)
    y.sum().backward()   # x.grad == (x > 0) as float

``masked_version(module)`` maps a torch activation module to its masked twin (or ``None``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .bitpack import pack_bits, unpack_bits


class _MaskedFn(torch.autograd.Function):
    """y = forward_fn(x); dx = dy * mask(x) * slope, with the mask stored packed."""

    @staticmethod
    def forward(ctx, x, forward_fn: Callable, mask_fn: Callable, slope: float):
        ctx.shape = x.shape
        ctx.slope = slope
        ctx.save_for_backward(pack_bits(mask_fn(x)))
        return forward_fn(x)

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        mask = unpack_bits(packed, ctx.shape)
        grad_x = grad * mask
        if ctx.slope != 1.0:
            grad_x = grad_x * ctx.slope
        return grad_x, None, None, None


class MaskedActivation(nn.Module):
    """Base class: subclasses define ``fn`` (exact forward), ``mask`` and ``slope``."""

    slope: float = 1.0
    #: the torch module class this op replaces
    replaces: type[nn.Module]

    def fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def mask(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.fn(x)
        return _MaskedFn.apply(x, self.fn, self.mask, self.slope)


class MaskedReLU(MaskedActivation):
    replaces = nn.ReLU

    def fn(self, x):
        return F.relu(x)

    def mask(self, x):
        return x > 0


class MaskedReLU6(MaskedActivation):
    replaces = nn.ReLU6

    def fn(self, x):
        return F.relu6(x)

    def mask(self, x):
        return (x > 0) & (x < 6)


class MaskedHardsigmoid(MaskedActivation):
    replaces = nn.Hardsigmoid
    slope = 1.0 / 6.0

    def fn(self, x):
        return F.hardsigmoid(x)

    def mask(self, x):
        return (x > -3) & (x < 3)


class MaskedHardswish(MaskedActivation):
    """Hard-Swish with MobileTL's backward: the gradient is 1[x > threshold]."""

    replaces = nn.Hardswish

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = float(threshold)

    def fn(self, x):
        return F.hardswish(x)

    def mask(self, x):
        return x > self.threshold

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


_REGISTRY: dict[type[nn.Module], type[MaskedActivation]] = {
    cls.replaces: cls for cls in (MaskedReLU, MaskedReLU6, MaskedHardsigmoid, MaskedHardswish)
}


def masked_version(module: nn.Module, hardswish_threshold: float = 0.0) -> MaskedActivation | None:
    """The masked twin of a torch activation module, or ``None`` if it has none."""
    cls = _REGISTRY.get(type(module))
    if cls is None:
        return None
    if cls is MaskedHardswish:
        return MaskedHardswish(hardswish_threshold)
    return cls()
