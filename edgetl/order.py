"""The order a training epoch visits its images in, and which it flips: the same draws as the device runners.

    sampler = EpochOrder(len(train_data), seed=3, epoch=0)          # a torch Sampler: a numpy permutation
    flips = epoch_flips(seed=3, epoch=0, n=len(train_data))          # bool per position in the epoch

Epoch ``e`` (0-based) visits the images in the order ``numpy.random.default_rng([seed, e + 1]).permutation(n)``
and flips the image at position ``k`` when the ``k``-th draw of ``default_rng([seed, e + 1, 1])`` is below 0.5,
exactly as ``runtime/runner_fit.fit`` does (its epochs count from 1). So a laptop run and a device run of one
seed on the same images see the same batches, and a resumed run the same as an uninterrupted one. The runners
import nothing of edgetl and draw their own; ``tests/test_trainer_order.py`` checks that the two agree batch
for batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The indices epoch ``epoch`` (0-based) of a run seeded ``seed`` visits, in order."""
    return np.random.default_rng([seed, epoch + 1]).permutation(n)


def epoch_flips(seed: int, epoch: int, n: int) -> np.ndarray:
    """Whether the image at each of the epoch's ``n`` positions is flipped (``--augment flip``)."""
    return np.random.default_rng([seed, epoch + 1, 1]).random(n) < 0.5


class EpochOrder(Sampler[int]):
    """A torch ``Sampler`` over ``n`` items in :func:`epoch_order`'s order."""

    def __init__(self, n: int, seed: int, epoch: int):
        self.n, self.seed, self.epoch = n, seed, epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(epoch_order(self.seed, self.epoch, self.n).tolist())


def flip_batch(images: torch.Tensor, flips: np.ndarray) -> torch.Tensor:
    """``images`` (N, C, H, W) with those where ``flips`` is true mirrored left to right (the last axis)."""
    if not flips.any():
        return images
    images = images.clone()
    mask = torch.from_numpy(flips)
    images[mask] = images[mask].flip(-1)
    return images
