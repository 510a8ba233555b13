"""Named training policies: what trains, what is frozen, and which memory-lean ops are swapped in.

    policy = MobileTL(k=5, hardswish_threshold=0.0)   # or parse_policy("mobiletl:5"); "full", "bias", "ft:5"...
    policy.apply(model)                               # usually via edgetl.apply_policy
    Policy.from_dict(policy.as_dict()) == policy      # how a run directory stores it

===============  ===========================================================================
``full``         every parameter, train-mode batch norm
``last``         the classifier's final layer only
``bn+last``      every batch norm (scale, shift, statistics) and the head; frozen convs keep no input
``bias``         TinyTL-style: biases and norm shifts everywhere plus the head; weights frozen
``ft:K``         vanilla fine-tuning of the top K inverted-residual blocks, last conv stage, classifier
``mobiletl:K``   MobileTL on the top K blocks (shift-only internal norms, 1-bit activation masks),
                 last conv stage and classifier trained as in ``ft:K``
===============  ===========================================================================

A policy also says where the *trained region* starts (``split``): ``model.features[:split]`` runs
without an autograd graph in inference mode, so it stores nothing for backward.

A policy is a typed, frozen object: its options are its fields (``k`` for the top-block policies,
MobileTL's ``hardswish_threshold``), and ``str(policy)`` is its spec string (``"mobiletl:5"``). Policies are
registered in ``POLICIES``; a new one is one subclass plus one registration line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .errors import PolicyError
from .models import head, inverted_residual_blocks
from .ops import FrozenConv2d, FrozenLinear, ShiftOnlyBatchNorm2d, masked_version


def _train(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)


def _children_with_parents(root: nn.Module):
    """(parent, child name, child) for every descendant, safe to replace while iterating."""
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            yield parent, name, child


def _freeze_weights_keep_input_free(model: nn.Module, train_bias: bool) -> None:
    """Convs and non-head linears become frozen ops that store no input; their biases may train."""
    last = head(model)
    for _, _, m in _children_with_parents(model):
        if type(m) is nn.Conv2d:
            FrozenConv2d.from_module(m)
        elif type(m) is nn.Linear and m is not last:
            FrozenLinear.from_module(m)
        else:
            continue
        if train_bias and m.bias is not None:
            m.bias.requires_grad_(True)


@dataclass(frozen=True)
class Policy:
    name: ClassVar[str]
    summary: ClassVar[str]

    def __str__(self) -> str:
        return self.name

    def split(self, model: nn.Module) -> int:
        """Index of the first ``features`` module that needs an autograd graph."""
        return 0

    def apply(self, model: nn.Module) -> None:
        """Set ``requires_grad`` and swap modules; all parameters arrive frozen."""
        raise NotImplementedError

    def options(self) -> dict:
        """The policy's fields beyond its spec string (e.g. MobileTL's ``hardswish_threshold``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "k"}

    def as_dict(self) -> dict:
        """What a run directory stores: the spec string and the options."""
        return {"spec": str(self), **self.options()}

    @staticmethod
    def from_dict(d: dict) -> Policy:
        d = dict(d)
        return parse_policy(d.pop("spec"), **d)


@dataclass(frozen=True)
class Full(Policy):
    name: ClassVar[str] = "full"
    summary: ClassVar[str] = "every parameter, train-mode batch norm"

    def apply(self, model):
        _train(model)


@dataclass(frozen=True)
class Last(Policy):
    name: ClassVar[str] = "last"
    summary: ClassVar[str] = "the classifier's final layer only"

    def split(self, model):
        return len(model.features)

    def apply(self, model):
        _train(head(model))


@dataclass(frozen=True)
class BnLast(Policy):
    name: ClassVar[str] = "bn+last"
    summary: ClassVar[str] = "all batch norms (scale, shift, statistics) and the head"

    def apply(self, model):
        _freeze_weights_keep_input_free(model, train_bias=False)
        _train(*(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)), head(model))


@dataclass(frozen=True)
class Bias(Policy):
    name: ClassVar[str] = "bias"
    summary: ClassVar[str] = "biases and norm shifts everywhere, plus the head (TinyTL)"

    def apply(self, model):
        _freeze_weights_keep_input_free(model, train_bias=True)
        for m in list(model.modules()):
            if type(m) is nn.BatchNorm2d:
                ShiftOnlyBatchNorm2d.from_module(m).bias.requires_grad_(True)
        _train(head(model))


@dataclass(frozen=True)
class TopBlocks(Policy):
    """Base of the policies that train the top K inverted-residual blocks."""

    k: int = 5

    def __str__(self) -> str:
        return f"{self.name}:{self.k}"

    def first_block(self, model) -> int:
        blocks = inverted_residual_blocks(model)
        if self.k > len(blocks):
            raise PolicyError(
                f"{self}: the model has only {len(blocks)} inverted-residual blocks; use K from 0 to {len(blocks)}"
            )
        return blocks[-self.k][0] if self.k else len(model.features) - 1

    def split(self, model):
        return self.first_block(model)

    def trained_blocks(self, model) -> list[nn.Module]:
        return [b for i, b in inverted_residual_blocks(model) if i >= self.first_block(model)]

    def apply(self, model):
        _train(*model.features[self.first_block(model) :], model.classifier)


@dataclass(frozen=True)
class FineTune(TopBlocks):
    name: ClassVar[str] = "ft"
    summary: ClassVar[str] = "vanilla fine-tuning of the top K blocks, last conv stage and classifier"


@dataclass(frozen=True)
class MobileTL(TopBlocks):
    name: ClassVar[str] = "mobiletl"
    summary: ClassVar[str] = "MobileTL on the top K blocks: shift-only internal norms, 1-bit activation masks"
    #: Hard-Swish backward is the sign approximation 1[x > hardswish_threshold]
    hardswish_threshold: float = 0.0

    def apply(self, model):
        super().apply(model)
        for block in self.trained_blocks(model):
            mobiletl_block(block, self.hardswish_threshold)


def mobiletl_block(block: nn.Module, hardswish_threshold: float = 0.0) -> nn.Module:
    """MobileTL inside one inverted-residual block, in place: internal norms shift-only, masked activations.

    Trainability of convs and of the last norm is left as it is (the policy sets it).
    """
    norms = [m for m in block.modules() if type(m) is nn.BatchNorm2d]
    # every norm but the block's last (after the projection conv) is internal: shift only
    for bn in norms[:-1]:
        ShiftOnlyBatchNorm2d.from_module(bn)
    for parent, name, child in _children_with_parents(block):
        masked = masked_version(child, hardswish_threshold)
        if masked is not None:
            parent._modules[name] = masked
    return block


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (Full, Last, BnLast, Bias, FineTune, MobileTL)}


def parse_policy(spec: str | Policy, **options) -> Policy:
    """A :class:`Policy` from its spec string, e.g. ``"mobiletl:5"``, with ``options`` (its fields) set."""
    if isinstance(spec, Policy):
        return dataclasses.replace(spec, **options) if options else spec
    name, _, arg = str(spec).strip().partition(":")
    cls = POLICIES.get(name)
    known = "full, last, bn+last, bias, ft:K, mobiletl:K"
    if cls is None:
        raise PolicyError(f"unknown policy {spec!r}; choose one of: {known}")
    if issubclass(cls, TopBlocks):
        if not arg.isdigit():
            raise PolicyError(f"policy {spec!r} needs the number of top blocks to train, e.g. {name}:5")
        return _make(cls, spec, k=int(arg), **options)
    if arg:
        raise PolicyError(f"policy {name!r} takes no argument (got {spec!r}); choose one of: {known}")
    return _make(cls, spec, **options)


def _make(cls: type[Policy], spec: str, **fields) -> Policy:
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise PolicyError(f"policy {spec!r} has no option {', '.join(unknown)}")
    return cls(**fields)
