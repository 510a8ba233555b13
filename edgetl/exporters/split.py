"""The frozen prefix and the trained region of a policy-applied model, as two modules an exporter lowers apart.

    split = plan(run.model, run.resolution)        # None: no frozen prefix (full, bias, bn+last)
    prefix = prefix_module(run.model, split)       # features[:split], inference mode: images -> features
    region = region_module(run.model, split)       # the model with the prefix taken out: features -> logits

``features[:split]`` (below the first block the policy trains) runs without autograd and with eval-mode norms
(:class:`edgetl.surgery.FrozenPrefix`), so an export can ship it as an inference model and train only the
region after it: the device runs the prefix in micro-batches, or reads its output from a feature cache.
The region keeps torchvision's parameter names (the prefix's modules become parameter-free ``Identity``s),
so trained weights load back as before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..prefix import split_of


@dataclass(frozen=True)
class Split:
    index: int  # features[:index] is the frozen prefix
    feature_shape: tuple[int, int, int]  # (C, H, W) of the prefix's output
    prefix_sample_bytes: int  # the prefix's working set per image: its largest layer's input and output
    region_sample_bytes: int  # what the trained region's layers output per image (kept for backward, at most)

    @property
    def at(self) -> str:
        return f"features.{self.index}"


class Prefix(nn.Module):
    """``features[:split]`` alone, in inference mode: images -> features (NCHW)."""

    def __init__(self, features: nn.Sequential, split: int):
        super().__init__()
        self.features = nn.Sequential(*copy.deepcopy(list(features)[:split]))
        self.eval()

    def forward(self, x):
        return self.features(x)


def _leaves(module: nn.Module):
    return [m for m in module.modules() if not list(m.children())]


def plan(model: nn.Module, resolution: int) -> Split | None:
    """Where ``model``'s frozen prefix ends and what it hands on; None when the policy trains from the input."""
    index = split_of(model)
    if not index:
        return None
    prefix, region = prefix_module(model, index), region_module(model, index)
    largest = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: largest.__setitem__(
        0, max(largest[0], i[0].numel() * i[0].element_size() + o.numel() * o.element_size())))
        for m in _leaves(prefix)]
    with torch.no_grad():
        features = prefix(torch.zeros(1, 3, resolution, resolution))
    for h in hooks:
        h.remove()
    kept = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: kept.__setitem__(0, kept[0] + o.numel() * o.element_size()))
             for m in _leaves(region) if not isinstance(m, nn.Identity)]
    was = region.training
    region.eval()  # one image: training-mode norms would refuse a batch of one
    with torch.no_grad():
        region(features)
    region.train(was)
    for h in hooks:
        h.remove()
    return Split(index, tuple(int(s) for s in features.shape[1:]), int(largest[0]), int(kept[0]))


def prefix_module(model: nn.Module, split: Split | int) -> Prefix:
    return Prefix(model.features, split.index if isinstance(split, Split) else split)


def region_module(model: nn.Module, split: Split | int) -> nn.Module:
    """A copy of ``model`` whose input is the prefix's output: the prefix's modules become ``Identity``."""
    index = split.index if isinstance(split, Split) else split
    region = copy.deepcopy(model)
    for i in range(index):
        region.features._modules[str(i)] = nn.Identity()
    return region
