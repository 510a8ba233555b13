"""The optimizer spec: the one description of an optimizer that every part of edgetl reads.

    spec = OptimizerSpec("adamw", lr=1e-3, weight_decay=1e-4)      # or OptimizerSpec("sgd") (lr 0.05, momentum 0.9)
    optimizer = spec.build(model.parameters())                      # the torch optimizer
    spec.state_slots                                                # optimizer-state tensors per parameter
    OptimizerSpec.from_dict(spec.as_dict())                         # how runs and manifests carry it
    OptimizerSpec.parse("sgd-nomomentum")                           # the profiler's short names

The trainer builds its optimizer from it, the run directory and every export's manifest store it, the
profiler counts its state, the exporters lower it (AdamW as PyTorch runs it; SGD with or without
momentum) and deploy predicts memory from it. Two names, ``adamw`` and ``sgd``; momentum is a field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .limits import check_numbers

SGD_MOMENTUM = 0.9
#: the learning rate each optimizer starts from when none is given
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
#: the profiler's names for a plain SGD (no state) and for Adam (same state as AdamW)
ALIASES = {"sgd-nomomentum": ("sgd", {"momentum": 0.0}), "adam": ("adamw", {})}


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer by name and hyper-parameters; ``lr`` and ``momentum`` default per name."""

    name: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float | None = None  # SGD only: None means SGD_MOMENTUM
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    eps: float = 1e-8  # AdamW only

    def __post_init__(self):
        if self.name not in DEFAULT_LR:
            raise ConfigError(f"unknown optimizer {self.name!r}; choose one of: {', '.join(DEFAULT_LR)}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.name])
        check_numbers(lr=self.lr, weight_decay=self.weight_decay)
        momentum = (SGD_MOMENTUM if self.momentum is None else float(self.momentum)) if self.name == "sgd" else 0.0
        object.__setattr__(self, "momentum", momentum)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def parse(cls, spec: str | OptimizerSpec, **overrides) -> OptimizerSpec:
        """A spec from a name (``adamw``, ``sgd``, or the profiler's ``sgd-nomomentum`` / ``adam``) or a spec."""
        if isinstance(spec, OptimizerSpec):
            return dataclasses.replace(spec, **overrides) if overrides else spec
        name, fixed = ALIASES.get(str(spec), (str(spec), {}))
        if name not in DEFAULT_LR:
            raise ConfigError(f"unknown optimizer {spec!r}; choose one of: {', '.join([*DEFAULT_LR, *ALIASES])}")
        return cls(name, **{**overrides, **fixed})

    @classmethod
    def from_dict(cls, d: dict) -> OptimizerSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in d.items() if k in known})

    def as_dict(self) -> dict:
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas),
                "eps": self.eps, "momentum": self.momentum}

    def replace(self, **changes) -> OptimizerSpec:
        return dataclasses.replace(self, **changes)

    @property
    def state_slots(self) -> int:
        """Optimizer-state tensors kept per trainable parameter (AdamW: two moments; SGD: its momentum)."""
        return 2 if self.name == "adamw" else int(self.momentum > 0)

    def build(self, params) -> torch.optim.Optimizer:
        params = list(params)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def __str__(self) -> str:
        extra = f", momentum {self.momentum:g}" if self.name == "sgd" else ""
        return f"{self.name} (lr {self.lr:g}, weight decay {self.weight_decay:g}{extra})"
