"""Apply a training policy to a model, in place.

    model = edgetl.create_model("mobilenet_v3_small", num_classes=10)
    model = edgetl.apply_policy(model, "mobiletl:5")      # or a policy object: edgetl.MobileTL(k=5)
    params = trainable_parameters(model)

After :func:`apply_policy`:

- ``model.state_dict()`` has exactly torchvision's keys and shapes (modules are re-classed or
  swapped for parameter-free twins, never wrapped), so checkpoints move freely both ways;
- the eval-mode forward output is unchanged;
- ``model.features[:split]`` (below the trained region) runs under ``torch.no_grad()`` in
  inference mode, whatever ``model.train()`` says, so it stores nothing for backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import PolicyError
from .models import inverted_residual_blocks
from .policies import Policy, parse_policy
from .prefix import run_prefix


class FrozenPrefix(nn.Sequential):
    """``features`` whose first ``split`` modules run without autograd, in inference mode.

    ``micro_batch`` streams them that many samples at a time (:mod:`edgetl.prefix`); while ``given`` is set
    (:func:`edgetl.prefix.features_given`), the input already is their output and they are skipped."""

    micro_batch: int | None = None
    given: bool = False

    def __init__(self, split: int, modules: nn.Sequential):
        super().__init__(*modules)
        self.split = split
        self.train(modules.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules = list(self)
        if not self.given:
            x = run_prefix(modules[: self.split], x, self.micro_batch)
        for m in modules[self.split :]:
            x = m(x)
        return x

    def train(self, mode: bool = True):
        super().train(mode)
        for m in list(self)[: self.split]:
            m.train(False)
        return self


def apply_policy(model: nn.Module, policy: str | Policy) -> nn.Module:
    """Freeze, swap modules and mark trainable parameters of ``model`` per ``policy``; returns ``model``.

    ``model.edgetl_policy`` then holds the policy object."""
    policy = parse_policy(policy)
    if getattr(model, "edgetl_policy", None) is not None:
        raise PolicyError(
            f"this model already has policy {model.edgetl_policy}; create a fresh model to apply {policy}"
        )
    if not (hasattr(model, "features") and hasattr(model, "classifier") and inverted_residual_blocks(model)):
        raise PolicyError(
            f"{type(model).__name__} is not a supported MobileNet (needs .features with InvertedResidual blocks "
            f"and .classifier); build it with edgetl.create_model"
        )
    split = policy.split(model)
    for p in model.parameters():
        p.requires_grad_(False)
    policy.apply(model)
    model.features = FrozenPrefix(split, model.features)
    model.edgetl_policy = policy
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter that the applied policy trains."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def policy_of(model: nn.Module) -> Policy | None:
    """The policy applied to ``model`` (None for a plain model)."""
    return getattr(model, "edgetl_policy", None)
