"""Train a MobileNet under a policy: loop, optimizer, cosine schedule, evaluation, checkpoints, resume.

    from edgetl.trainer import TrainConfig, Trainer
    result = Trainer(TrainConfig(model="mobilenet_v3_small", policy="mobiletl:5", epochs=3, out="runs/demo")).fit()
    result.metrics["epochs"][-1]["val_acc"]

The run directory holds ``checkpoint.pt`` (torchvision-layout ``state_dict`` + optimizer, scheduler and
metadata; written atomically after every epoch), ``metrics.json`` (per-epoch loss and accuracy) and
``run.json`` (the configuration, the policy and the exact command). ``Trainer(config, resume=True)``
continues an interrupted run and reaches the same weights as an uninterrupted one: every epoch reseeds
the shuffling, augmentation and dropout from (seed, epoch), so no RNG state has to survive the crash.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from . import __version__
from .data import load_datasets
from .errors import ConfigError, WeightsError
from .io import atomic_save, atomic_write_json
from .models import create_model
from .surgery import apply_policy, trainable_parameters

CHECKPOINT = "checkpoint.pt"
SGD_MOMENTUM = 0.9
OPTIMIZERS = {
    # name -> (factory, default learning rate)
    "sgd": (lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=wd), 0.05),
    "adamw": (lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd), 1e-3),
}


@dataclass
class TrainConfig:
    model: str = "mobilenet_v3_small"
    policy: str = "mobiletl:5"
    data: str = "patterns"
    #: "auto" = ImageNet when obtainable, else random init (said in one line); "imagenet", "none" or a path
    weights: str = "auto"
    epochs: int = 10
    batch_size: int = 32
    resolution: int = 96
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    seed: int = 0
    out: str | None = None
    workers: int = 0
    hardswish_threshold: float = 0.0

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.resolution < 32:
            raise ConfigError(f"--resolution must be at least 32 (MobileNets downsample 32x), got {self.resolution}")
        if self.lr is None:
            self.lr = OPTIMIZERS[self.optimizer][1]


@dataclass
class TrainResult:
    out: Path
    model: nn.Module
    metrics: dict
    class_names: list[str] = field(default_factory=list)


def default_out(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{config.policy.replace(':', '')}-{stamp}"


def _link_last(out: Path) -> None:
    """Point ``runs/last`` at the newest run (replaced atomically)."""
    last = out.parent / "last"
    if last.exists() and not last.is_symlink():
        return
    tmp = out.parent / f".last.{out.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    tmp.replace(last)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, loader: DataLoader, batches: int = 8) -> None:
    """Estimate every batch norm's running statistics from ``batches`` training batches.

    A randomly initialised network normalises with mean 0 / variance 1, which is meaningless for the
    layers a policy keeps frozen (they never update their statistics), and collapses their outputs.
    Using the data's statistics makes random frozen features usable. Weights are not touched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    was_training = model.training
    for i, (images, _) in enumerate(loader):
        if i == batches:
            break
        model(images)
    for m, (momentum, training) in zip(norms, saved):
        m.momentum, m.training = momentum, training
    model.train(was_training)


class Trainer:
    """One training run. ``callbacks`` are called as ``cb(trainer, epoch_record)`` after each epoch."""

    def __init__(self, config: TrainConfig, resume: bool = False, console: Console | None = None,
                 progress: bool = True, callbacks: list[Callable] | None = None, command: list[str] | None = None):
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.callbacks = callbacks or []
        self.out = Path(config.out) if config.out else default_out(config)
        ckpt_path = self.out / CHECKPOINT
        self.checkpoint = None
        if resume:
            if not ckpt_path.is_file():
                raise ConfigError(f"nothing to resume in {self.out}: no {CHECKPOINT}; start the run without --resume")
            self.checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            config = TrainConfig(**self.checkpoint["edgetl"]["config"])
        elif ckpt_path.exists():
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it, or choose another --out")
        config.validate()
        self.config = config
        self.command = command if command is not None else sys.argv
        self._setup()

    # -- setup -------------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.train_ds, self.val_ds, self.class_names = load_datasets(c.data, c.resolution, c.seed)
        self.model = self._build_model(len(self.class_names))
        if self.random_init:
            calibrate_batchnorm(self.model, self._loader(self.train_ds, True, torch.Generator().manual_seed(c.seed)))
        apply_policy(self.model, c.policy, hardswish_threshold=c.hardswish_threshold)
        self.params = trainable_parameters(self.model)
        factory = OPTIMIZERS[c.optimizer][0]
        self.optimizer = factory(list(self.params.values()), c.lr, c.weight_decay)
        if len(self.train_ds) < c.batch_size:
            raise ConfigError(f"the training set has {len(self.train_ds)} images, fewer than one batch of "
                              f"{c.batch_size}; lower --batch-size or add images")
        # the incomplete last batch is dropped: a batch of one cannot train a batch norm
        self.steps_per_epoch = len(self.train_ds) // c.batch_size
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs * self.steps_per_epoch)
        self.history: list[dict] = []
        self.start_epoch = 0
        if self.checkpoint is not None:
            ck = self.checkpoint
            if ck["edgetl"]["class_names"] != self.class_names:
                raise ConfigError(f"the data's classes changed since {self.out} was started; resume with the same data")
            self.model.load_state_dict(ck["state_dict"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            self.history = ck["history"]
            self.start_epoch = len(self.history)
        self.loss_fn = nn.CrossEntropyLoss()

    def _build_model(self, num_classes: int) -> nn.Module:
        c = self.config
        self.random_init = False
        if self.checkpoint is not None:  # the checkpoint supplies every weight
            return create_model(c.model, num_classes, weights=None)
        if c.weights != "auto":
            self.random_init = str(c.weights).lower() == "none"
            return create_model(c.model, num_classes, weights=c.weights)
        try:
            return create_model(c.model, num_classes, weights="imagenet")
        except WeightsError as exc:
            first = str(exc).split(" (")[0]
            self.console.print(f"[yellow]note:[/] {first}; continuing from random initialisation", soft_wrap=True)
            self.random_init = True
            return create_model(c.model, num_classes, weights=None)

    # -- loop --------------------------------------------------------------------------------------
    def _seed_epoch(self, epoch: int) -> torch.Generator:
        torch.manual_seed(self.config.seed * 100_003 + epoch)
        return torch.Generator().manual_seed(self.config.seed * 100_019 + epoch)

    def _loader(self, ds, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        # training (shuffled) drops its incomplete last batch; evaluation sees every image
        return DataLoader(ds, batch_size=self.config.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.config.workers, drop_last=shuffle)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """One optimizer step; returns (loss, number correct)."""
        logits = self.model(images)
        loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item(), int((logits.argmax(1) == labels).sum())

    @torch.no_grad()
    def evaluate(self, ds=None) -> tuple[float, float]:
        """(mean loss, accuracy) on ``ds`` (default: the validation set)."""
        self.model.eval()
        total_loss, correct, n = 0.0, 0, 0
        for images, labels in self._loader(ds or self.val_ds, shuffle=False):
            logits = self.model(images)
            total_loss += self.loss_fn(logits, labels).item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            n += len(labels)
        return total_loss / n, correct / n

    def fit(self) -> TrainResult:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        _link_last(self.out)
        self._write_run_json(status="running")
        columns = [TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, disable=not self.progress, transient=False) as bar:
            for epoch in range(self.start_epoch, c.epochs):
                gen = self._seed_epoch(epoch)
                task = bar.add_task("train", total=self.steps_per_epoch, epoch=epoch + 1, epochs=c.epochs, loss=0.0)
                self.model.train()
                t0 = time.perf_counter()
                loss_sum, correct, n = 0.0, 0, 0
                for images, labels in self._loader(self.train_ds, shuffle=True, generator=gen):
                    loss, right = self.train_step(images, labels)
                    loss_sum += loss * len(labels)
                    correct, n = correct + right, n + len(labels)
                    bar.update(task, advance=1, loss=loss_sum / n)
                seconds = time.perf_counter() - t0
                val_loss, val_acc = self.evaluate()
                record = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
                          "val_loss": val_loss, "val_acc": val_acc, "lr": self.scheduler.get_last_lr()[0],
                          "seconds": round(seconds, 3)}
                self.history.append(record)
                self._save_checkpoint()
                self._write_metrics()
                self.console.print(f"epoch {epoch + 1}/{c.epochs}  train loss {record['train_loss']:.4f}  "
                                   f"acc {record['train_acc']:.3f}  val loss {val_loss:.4f}  acc {val_acc:.3f}  "
                                   f"({seconds:.1f}s)", soft_wrap=True)
                for cb in self.callbacks:
                    cb(self, record)
        self._write_run_json(status="finished")
        return TrainResult(self.out, self.model, self._metrics(), self.class_names)

    # -- files -------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {"version": __version__, "model": self.config.model, "policy": str(self.model.edgetl_policy),
                "num_classes": len(self.class_names), "class_names": self.class_names,
                "resolution": self.config.resolution, "config": dataclasses.asdict(self.config)}

    def _save_checkpoint(self) -> None:
        atomic_save({"edgetl": self.metadata(), "state_dict": self.model.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "history": self.history}, self.out / CHECKPOINT)

    def _metrics(self) -> dict:
        best = max((r["val_acc"] for r in self.history), default=None)
        return {"model": self.config.model, "policy": self.config.policy, "epochs": self.history, "best_val_acc": best}

    def _write_metrics(self) -> None:
        atomic_write_json(self._metrics(), self.out / "metrics.json")

    def _write_run_json(self, status: str) -> None:
        path = self.out / "run.json"
        commands = json.loads(path.read_text()).get("commands", []) if path.exists() else []
        command = shlex.join(self.command)
        if not commands or commands[-1] != command:
            commands.append(command)
        atomic_write_json({"status": status, "command": commands[0], "commands": commands,
                           "policy_summary": self.model.edgetl_policy.summary, **self.metadata()}, path)


def train(**kwargs) -> TrainResult:
    """Convenience: ``edgetl.train(model=..., policy=..., epochs=...)``; see :class:`TrainConfig`."""
    resume = kwargs.pop("resume", False)
    progress = kwargs.pop("progress", True)
    return Trainer(TrainConfig(**kwargs), resume=resume, progress=progress).fit()
