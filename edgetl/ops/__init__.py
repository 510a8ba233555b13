"""Memory-lean autograd functions used by the MobileTL policy and its baselines.

Each op keeps the exact forward of the PyTorch layer it replaces and changes only what it stores for
backward:

- :mod:`.bitpack`      -- 1 bit per element masks, packed 8 per byte.
- :mod:`.activations`  -- ReLU / ReLU6 / Hardsigmoid / Hard-Swish whose backward uses a packed mask.
- :mod:`.norm`         -- shift-only batch norm (frozen statistics and scale, trainable shift).
- :mod:`.conv`         -- frozen conv / linear whose backward keeps no input.

    from edgetl.ops import MaskedReLU6, ShiftOnlyBatchNorm2d, FrozenConv2d
"""

from .activations import (
    MaskedActivation,
    MaskedHardsigmoid,
    MaskedHardswish,
    MaskedReLU,
    MaskedReLU6,
    masked_version,
)
from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .conv import FrozenConv2d, FrozenLinear
from .norm import ShiftOnlyBatchNorm2d

__all__ = [
    "FrozenConv2d",
    "FrozenLinear",
    "MaskedActivation",
    "MaskedHardsigmoid",
    "MaskedHardswish",
    "MaskedReLU",
    "MaskedReLU6",
    "ShiftOnlyBatchNorm2d",
    "masked_version",
    "pack_bits",
    "packed_nbytes",
    "unpack_bits",
]
