"""The ``edgetl train`` job: settings in, a run directory out, built from the composable pieces.

    result = edgetl.train(model="mobilenet_v3_small", policy="mobiletl:5", data="patterns", epochs=3)
    result = edgetl.train(out="runs/ft5", resume=True)           # continue an interrupted run, same weights

:class:`TrainConfig` holds the settings the CLI exposes. :func:`train` turns them into the objects of the
Python API: data sets (:func:`edgetl.data.load_datasets`: an ImageFolder or the built-in ``patterns``), a
model with its weights (:func:`edgetl.create_model`; ``auto`` falls back to random initialisation, with
batch-norm statistics estimated from the data, and says so in one note), a policy object, an optimizer
spec and a :class:`~edgetl.trainer.Trainer` that keeps the run directory. Notes go to the ``edgetl`` logger.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .checkpoint import CHECKPOINT
from .data import BUILTIN, load_datasets
from .errors import ConfigError, WeightsError
from .io import absolute
from .limits import check_numbers
from .models import MODELS, create_model
from .optim import OptimizerSpec
from .policies import Policy, parse_policy
from .prefix import check_prefix_batch
from .run import read_checkpoint
from .surgery import apply_policy
from .trainer import Trainer, TrainerOptions, TrainResult, calibrate_batchnorm

log = logging.getLogger("edgetl")


def _setting(default, help: str | None = None, **cli):
    """A setting with what its ``edgetl train`` option needs (help, choices, metavar; ``cli=False``: no option);
    a bool setting is a flag. The CLI generates its options from these (:mod:`edgetl.cli.options`)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """The settings of an ``edgetl train`` job; each field is also its command-line option."""

    model: str = _setting("mobilenet_v3_small", choices=list(MODELS))
    policy: str = _setting("mobiletl:5", "full, last, bn+last, bias, ft:K, mobiletl:K")
    data: str = _setting("patterns", "ImageFolder directory, or 'patterns' (built in)")
    weights: str = _setting("auto", "auto (ImageNet if obtainable, else random), imagenet, none, or a .pth path")
    keep_head: bool = _setting(False, "with --weights RUN: keep its classifier head even when it was trained for other "
                                      "classes")
    epochs: int = _setting(10)
    batch_size: int = _setting(32)
    resolution: int = _setting(96)
    lr: float | None = _setting(None, "learning rate [default: 0.05 for sgd, 0.001 for adamw]")
    optimizer: str = _setting("adamw", choices=["sgd", "adamw"])
    weight_decay: float = _setting(1e-4, cli=False)
    seed: int = _setting(0)
    out: str | None = _setting(None, "run directory [default: runs/<model>-<policy>-<time>; runs/last links it]")
    workers: int = _setting(0, "data loader processes")
    hardswish_threshold: float = _setting(0.0, "threshold of MobileTL's Hard-Swish backward mask 1[x > t]")
    augment: str = _setting("standard", "training transform: random crop and flip, flip only (as a device's --augment "
                                        "flip), or none (fixed inputs, needed by --cache-features)",
                            choices=["standard", "flip", "none"])
    prefix_batch: int | str | None = _setting(None, "run the frozen prefix N samples at a time (auto: the largest "
                                                    "within the trained region's peak)", metavar="N|auto")
    cache_features: bool = _setting(False, "store the frozen prefix's outputs in epoch 1, reuse them after")
    cache_dtype: str = _setting("float32", choices=["float32", "float16"])
    cache_dir: str | None = _setting(None, "where a disk cache goes [default: the run directory]")
    cache_budget_mb: float = _setting(512, "a larger cache goes to a memory-mapped file on disk")

    def validate(self) -> None:
        """Every setting in its range (one line naming the first that is not), before any data is read."""
        check_numbers(epochs=self.epochs, batch_size=self.batch_size, resolution=self.resolution, lr=self.lr,
                      weight_decay=self.weight_decay, seed=self.seed, workers=self.workers,
                      hardswish_threshold=self.hardswish_threshold, cache_budget_mb=self.cache_budget_mb)
        check_prefix_batch(self.prefix_batch, self.batch_size)
        self.lr = self.optimizer_spec().lr  # the default of the optimizer, recorded

    def resolve_paths(self) -> None:
        """The data, weights and cache paths made absolute, as the run directory records them: a fleet or a resume
        started from another directory finds the same files."""
        self.data = absolute(self.data, BUILTIN)
        if self.weights.lower() not in ("auto", "imagenet", "none"):
            self.weights = absolute(self.weights)
        self.cache_dir = absolute(self.cache_dir)

    def policy_object(self) -> Policy:
        """The policy with its options from these settings (MobileTL's Hard-Swish threshold)."""
        policy = parse_policy(self.policy)
        if "hardswish_threshold" in policy.options():
            policy = parse_policy(policy, hardswish_threshold=self.hardswish_threshold)
        return policy

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, lr=self.lr, weight_decay=self.weight_decay)


def default_out(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{config.policy.replace(':', '')}-{stamp}"


def _model(c: TrainConfig, class_names: list[str], resume: bool):
    """(model, started from random weights?)"""
    num_classes = len(class_names)
    if resume:  # the checkpoint supplies every weight
        return create_model(c.model, num_classes, weights=None), False
    if c.weights != "auto":
        return (create_model(c.model, num_classes, weights=c.weights, class_names=class_names, keep_head=c.keep_head),
                str(c.weights).lower() == "none")
    try:
        return create_model(c.model, num_classes, weights="imagenet"), False
    except WeightsError as exc:
        log.warning(f"{str(exc).split(' (')[0]}; continuing from random initialisation")
        return create_model(c.model, num_classes, weights=None), True


def trainer_from_config(config: TrainConfig, resume: bool = False, callbacks=(),
                        command: list[str] | None = None) -> Trainer:
    """The :class:`Trainer` of an ``edgetl train`` job (its data, model, policy, optimizer and run directory)."""
    out = (Path(config.out) if config.out else default_out(config)).resolve()
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"nothing to resume in {out}: no {CHECKPOINT}; start the run without `resume=True`")
        config = TrainConfig(**read_checkpoint(out)["edgetl"]["config"])
    config.validate()
    config.resolve_paths()
    c = config
    policy = c.policy_object()  # bad policy specs fail before any data is read
    torch.manual_seed(c.seed)
    train_ds, val_ds, class_names = load_datasets(c.data, c.resolution, c.seed, augment=c.augment)
    model, random_init = _model(c, class_names, resume)
    if random_init:
        calibrate_batchnorm(model, DataLoader(train_ds, batch_size=c.batch_size, shuffle=True, drop_last=True,
                                              generator=torch.Generator().manual_seed(c.seed)))
    apply_policy(model, policy)
    options = TrainerOptions(epochs=c.epochs, batch_size=c.batch_size, seed=c.seed, workers=c.workers,
                             flip=c.augment == "flip",  # "flip" is the trainer's, drawn as a device runner draws it
                             prefix_batch=c.prefix_batch, cache_features=c.cache_features, cache_dtype=c.cache_dtype,
                             cache_dir=c.cache_dir, cache_budget_mb=c.cache_budget_mb)
    return Trainer(model, train_ds, val_ds, optimizer=c.optimizer_spec(), options=options, callbacks=callbacks,
                   out_dir=out, resume=resume, class_names=class_names, resolution=c.resolution,
                   config={**dataclasses.asdict(c), "out": str(out)}, command=command or sys.argv)


def train(callbacks=(), resume: bool = False, command: list[str] | None = None, **settings) -> TrainResult:
    """Run the ``edgetl train`` job from settings (see :class:`TrainConfig`); writes a run directory."""
    return trainer_from_config(TrainConfig(**settings), resume, callbacks, command).fit()
