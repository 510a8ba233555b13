"""Pack boolean masks into 1 bit per element (8 per byte) and back.

    packed = pack_bits(x > 0)                 # uint8 tensor of ceil(n / 8) bytes
    mask = unpack_bits(packed, x.shape)       # bool tensor of x's shape

Bit i of byte j holds element 8*j + i (little-endian within a byte), the same order as
``numpy.packbits(..., bitorder="little")``.
"""

from __future__ import annotations

import math

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_nbytes(numel: int) -> int:
    """Bytes that a packed mask of ``numel`` elements occupies."""
    return math.ceil(numel / 8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor into a flat uint8 tensor of ``ceil(numel / 8)`` bytes."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    bits = flat.view(-1, 8)
    # OR of the eight shifted bit columns; each column is a strided view, so no 8x temporary is made.
    packed = bits[:, 0].clone()
    for i in range(1, 8):
        packed |= bits[:, i] << i
    return packed


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a bool tensor of ``shape``."""
    numel = math.prod(shape)
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.view(-1)[:numel].view(shape).bool()
