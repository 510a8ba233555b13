"""Train a model: loop, optimizer, cosine schedule, evaluation, callbacks, optional run directory, resume.

    model = edgetl.apply_policy(edgetl.create_model("mobilenet_v3_small", num_classes=5), "mobiletl:5")
    trainer = Trainer(model, train_data=my_dataset, val_data=my_val,         # torch Datasets or DataLoaders
                      optimizer=OptimizerSpec("adamw", lr=1e-3), epochs=5, callbacks=[ProgressBar()])
    result = trainer.fit()                       # writes nothing, unless out_dir= names a run directory
    result.history[-1]["val_acc"], result.model

The trainer composes with plain PyTorch: it takes any model (a policy-applied one trains what its policy
says; a plain one trains every parameter that requires grad), any ``Dataset`` or ``DataLoader`` yielding
``(images, labels)``, an :class:`~edgetl.optim.OptimizerSpec` and callbacks (:class:`Callback`). It draws
nothing: progress and messages are callbacks (``edgetl.ui.ProgressBar``).

With ``out_dir`` it keeps a run directory (:mod:`edgetl.run`) as it goes: a checkpoint after every epoch,
written atomically. ``resume=True`` continues an interrupted run from it and reaches the same weights as an
uninterrupted one: every epoch reseeds the shuffling, augmentation and dropout from (seed, epoch), so no RNG
state has to survive the crash (this holds when the trainer builds the loaders from Datasets).

Epoch ``e`` visits the training images in the order a device runner draws for the same seed, and ``flip=True``
mirrors the images a runner's ``--augment flip`` mirrors (:mod:`edgetl.order`): trained on the same images, a
laptop run and a device run of one seed see the same batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .cache import FeatureCache, cache_key, check_dtype, data_identity, random_transform
from .checkpoint import CHECKPOINT, write_checkpoint
from .errors import CacheError, ConfigError
from .limits import check_numbers
from .models import num_classes_of
from .optim import OptimizerSpec
from .options import with_overrides
from .order import EpochOrder, epoch_flips, flip_batch
from .policies import Full
from .prefix import features_given, prefix_modules, resolve_prefix_batch, run_prefix, set_prefix_batch, split_of
from .run import link_last, metadata, metrics_of, read_checkpoint, write_metrics, write_run_json
from .surgery import policy_of


class Callback:
    """Hooks the trainer calls; override any. A plain function ``fn(trainer, record)`` is an ``on_epoch_end``."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None: ...

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None: ...


class _EpochFunction(Callback):
    def __init__(self, fn: Callable):
        self.fn = fn

    def on_epoch_end(self, trainer, record):
        self.fn(trainer, record)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]
    class_names: list[str]
    resolution: int | None
    optimizer: OptimizerSpec
    out: Path | None = None  # the run directory, when the trainer kept one
    metrics: dict = field(default_factory=dict)
    schedule: str = "cosine"


def class_names_of(data) -> list[str] | None:
    """The class names a Dataset (or a DataLoader's, or a Subset's) carries, if any."""
    for obj in (data, getattr(data, "dataset", None), getattr(getattr(data, "dataset", None), "dataset", None)):
        names = getattr(obj, "classes", None)
        if names:
            return list(names)
    return None


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, loader, batches: int = 8) -> None:
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


@dataclass(frozen=True)
class TrainerOptions:
    """How the trainer loops: ``epochs`` of ``batch_size``, seeded by ``seed``, the learning rate on ``schedule``;
    ``flip`` mirrors half the training images as a device runner's ``--augment flip`` does (:mod:`edgetl.order`);
    ``workers`` data-loading processes. The frozen prefix runs ``prefix_batch`` samples at a time (a number, "auto"
    or None: all at once), and with ``cache_features`` its outputs are computed in the first epoch and reused
    (``cache_dtype`` float32 or float16; on disk in ``cache_dir``, default the run directory, beyond
    ``cache_budget_mb`` of memory)."""

    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    schedule: str = "cosine"
    workers: int = 0
    flip: bool = False
    prefix_batch: int | str | None = None
    cache_features: bool = False
    cache_dtype: str = "float32"
    cache_dir: str | Path | None = None
    cache_budget_mb: float = 512

    def check(self) -> None:
        """Every setting in its range (one line naming the first that is not)."""
        check_numbers(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, workers=self.workers,
                      cache_budget_mb=self.cache_budget_mb)
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose cosine or constant")


class Trainer:
    """One training run of ``model`` on ``train_data``; see the module docstring. ``options``: a
    :class:`TrainerOptions`, or any of its fields by name (``Trainer(model, data, epochs=5)``). ``config`` and
    ``command``: what made the run, recorded in its run directory."""

    def __init__(self, model: nn.Module, train_data: Dataset | DataLoader, val_data: Dataset | DataLoader | None = None,
                 optimizer: OptimizerSpec | str = "adamw", options: TrainerOptions | None = None,
                 callbacks: list | tuple = (), out_dir: str | Path | None = None, resume: bool = False,
                 class_names: list[str] | None = None, resolution: int | None = None, config: dict | None = None,
                 command: list[str] | None = None, **shorthand):
        (options,) = with_overrides([options or TrainerOptions()], shorthand, "Trainer")
        options.check()
        self.options = o = options
        self.model, self.train_data, self.val_data, self.schedule = model, train_data, val_data, o.schedule
        self.spec = OptimizerSpec.parse(optimizer)
        self.epochs, self.batch_size, self.seed, self.workers, self.flip = o.epochs, o.batch_size, o.seed, o.workers, o.flip
        self.callbacks = [cb if isinstance(cb, Callback) else _EpochFunction(cb) for cb in callbacks]
        self.out = Path(out_dir) if out_dir else None
        self.config, self.command = dict(config or {}), command
        self.class_names = (class_names or class_names_of(train_data)
                            or [f"class_{i}" for i in range(num_classes_of(model))])
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ConfigError("the model has no trainable parameter; apply a policy (edgetl.apply_policy) first")
        self.optimizer = self.spec.build(self.params.values())
        if not isinstance(train_data, DataLoader) and len(train_data) < o.batch_size:
            raise ConfigError(f"the training set has {len(train_data)} images, fewer than one batch of {o.batch_size}; "
                              f"lower `batch_size` or add images")
        self.steps_per_epoch = len(self._loader(train_data, epoch=0))
        if self.steps_per_epoch < 1:
            raise ConfigError("the training data yields no batch; check the data or lower `batch_size`")
        total = o.epochs * self.steps_per_epoch
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total) if o.schedule == "cosine"
                          else torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0))
        self.loss_fn = nn.CrossEntropyLoss()
        self.history: list[dict] = []
        self.resolution = resolution or _input_size(train_data)
        # the frozen prefix: streamed in micro-batches, and its outputs optionally cached (edgetl.prefix, .cache)
        self.prefix_batch = resolve_prefix_batch(model, o.prefix_batch, o.batch_size, self.resolution)
        set_prefix_batch(model, self.prefix_batch)
        self.cache_features, self.cache_dtype, self.cache_budget_mb = o.cache_features, o.cache_dtype, o.cache_budget_mb
        self.cache_dir = Path(o.cache_dir) if o.cache_dir else self.out
        self.cache: FeatureCache | None = None
        if o.cache_features:
            self._check_cacheable()
        self.start_epoch = 0
        if resume:
            self._resume()
        elif self.out is not None and (self.out / CHECKPOINT).exists():
            raise ConfigError(f"{self.out} already holds a run; pass `resume=True` to continue it, or choose another `out`")

    def _resume(self) -> None:
        if self.out is None or not (self.out / CHECKPOINT).is_file():
            raise ConfigError(f"nothing to resume in {self.out}: no {CHECKPOINT}; start the run without `resume=True`")
        ck = read_checkpoint(self.out)
        if ck["edgetl"]["class_names"] != self.class_names:
            raise ConfigError(f"the data's classes changed since {self.out} was started; resume with the same data")
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.history = ck["history"]
        self.start_epoch = len(self.history)

    # -- loop --------------------------------------------------------------------------------------
    def _loader(self, data, epoch: int | None = None):
        """Training epoch ``epoch``'s batches (in :mod:`edgetl.order`'s order), or with no epoch evaluation's."""
        if isinstance(data, DataLoader):
            return data
        # training drops its incomplete last batch, as the runners do: a batch of one cannot train a batch norm;
        # evaluation sees every image
        sampler = EpochOrder(len(data), self.seed, epoch) if epoch is not None else None
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
                          drop_last=epoch is not None)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, features: bool = False) -> tuple[float, int]:
        """One optimizer step; returns (loss, number correct). ``features``: ``images`` are the prefix's outputs."""
        if features:
            with features_given(self.model):
                logits = self.model(images)
        else:
            logits = self.model(images)
        loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item(), int((logits.argmax(1) == labels).sum())

    @torch.no_grad()
    def evaluate(self, data=None) -> tuple[float, float]:
        """(mean loss, accuracy) on ``data`` (default: the validation data)."""
        was = self.model.training
        self.model.eval()
        total_loss, correct, n = 0.0, 0, 0
        for images, labels in self._loader(data if data is not None else self.val_data):
            logits = self.model(images)
            total_loss += self.loss_fn(logits, labels).item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            n += len(labels)
        self.model.train(was)
        return total_loss / max(n, 1), correct / max(n, 1)

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        except BaseException:
            if self.cache is not None:  # a cache the run did not finish is never left for a later run to trust
                self.cache.discard()
            raise

    def _fit(self) -> TrainResult:
        self._start_run_directory()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        for epoch in range(self.start_epoch, self.epochs):
            torch.manual_seed(self.seed * 100_003 + epoch)  # dropout
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            self.model.train()
            t0 = time.perf_counter()
            loss_sum, correct, n = 0.0, 0, 0
            for step, (images, labels, features) in enumerate(self._batches(epoch)):
                loss, right = self.train_step(images, labels, features)
                loss_sum += loss * len(labels)
                correct, n = correct + right, n + len(labels)
                for cb in self.callbacks:
                    cb.on_step_end(self, step + 1, loss_sum / n)
            seconds = time.perf_counter() - t0
            val_loss, val_acc = self.evaluate() if self.val_data is not None else (None, None)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
                      "val_loss": val_loss, "val_acc": val_acc, "lr": self.scheduler.get_last_lr()[0],
                      "seconds": round(seconds, 3)}
            self.history.append(record)
            if self.out is not None:
                self._save_checkpoint()
                self._write_metrics()
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
        if self.out is not None:
            write_run_json(self.out, self._meta(), "finished", self.command)
        result = TrainResult(self.model, self.history, self.class_names, self.resolution, self.spec, self.out,
                             metrics_of(self._meta(), self.history), self.schedule)
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    # -- the prefix feature cache (edgetl.cache owns its storage) ----------------------------------
    def _check_cacheable(self) -> None:
        check_dtype(self.cache_dtype)
        if not split_of(self.model):
            raise CacheError(f"policy {policy_of(self.model) or 'none'} trains through the stem, so there is no frozen "
                             f"prefix to cache; drop `cache_features=True`, or use ft:K or mobiletl:K")
        if isinstance(self.train_data, DataLoader):
            raise ConfigError("`cache_features=True` needs the training Dataset, not a DataLoader: the cache is per sample")
        name = "flip=True" if self.flip else random_transform(self.train_data)
        if name:
            raise CacheError(f"`cache_features=True` needs fixed training inputs, but the training transform is random "
                             f"({name}); pass `augment='none'`")

    def _open_cache(self) -> FeatureCache:
        if self.cache is None:
            prefix = prefix_modules(self.model)
            data = f"{self.config.get('data', '')}|{data_identity(self.train_data)}"
            key = cache_key(prefix, str(policy_of(self.model)), data, self.resolution or 0, self.cache_dtype)
            self.cache = FeatureCache.open(self.cache_dir, key) if self.cache_dir else None  # a finished one
            if self.cache is None:
                shape = tuple(run_prefix(prefix, self.train_data[0][0][None]).shape[1:])
                self.cache = FeatureCache.open_or_create(len(self.train_data), shape, self.cache_dtype, key,
                                                         self.cache_dir, int(self.cache_budget_mb * 2**20))
        return self.cache

    def _batches(self, epoch: int):
        """(inputs, labels, inputs are prefix features?) per step; the cache's rows come in the same order."""
        if not self.cache_features:
            flips = epoch_flips(self.seed, epoch, self.steps_per_epoch * self.batch_size) if self.flip else None
            for step, (images, labels) in enumerate(self._loader(self.train_data, epoch)):
                if flips is not None:
                    images = flip_batch(images, flips[step * len(labels) : (step + 1) * len(labels)])
                yield images, labels, False
            return
        cache = self._open_cache()
        if cache.complete:
            for idx in self._loader(_Indices(len(self.train_data)), epoch):
                yield cache.get(idx), torch.from_numpy(cache.labels[idx.numpy()]), True
            return
        prefix = prefix_modules(self.model)
        for images, labels, idx in self._loader(_Indexed(self.train_data), epoch):
            features = run_prefix(prefix, images, self.prefix_batch)
            cache.put(idx, features, labels)
            yield features, labels, True
        rest = cache.missing()  # the incomplete last batch that training dropped
        for start in range(0, len(rest), self.batch_size):
            chunk = torch.as_tensor(rest[start : start + self.batch_size])
            items = [self.train_data[int(i)] for i in chunk]
            images, labels = torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
            cache.put(chunk, run_prefix(prefix, images, self.prefix_batch), labels)
        cache.finish()

    # -- the run directory (edgetl.run owns its format) --------------------------------------------
    def _meta(self) -> dict:
        return metadata(getattr(self.model, "edgetl_model", type(self.model).__name__),
                        policy_of(self.model) or Full(), self.class_names, self.resolution or 0, self.spec, self.config,
                        self.schedule)

    def _start_run_directory(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        link_last(self.out)
        write_run_json(self.out, self._meta(), "running", self.command)

    def _save_checkpoint(self) -> None:
        write_checkpoint(self.out, self._meta(), self.model.state_dict(), self.history, self.optimizer.state_dict(),
                         self.scheduler.state_dict())

    def _write_metrics(self) -> None:
        write_metrics(self.out, self._meta(), self.history)


class _Indexed(Dataset):
    """``(image, label, index)`` of a data set: the first cached epoch stores rows by index."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        image, label = self.data[i][:2]
        return image, label, i


class _Indices(Dataset):
    """Only the indices: cached epochs shuffle them exactly as the images would be (same sampler)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _input_size(data) -> int | None:
    """The side of the training images (one sample is read): the run records it for exports."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        images = dataset[0][0]
    except Exception:  # a dataset without random access: the run records no input size
        return None
    return int(images.shape[-1]) if hasattr(images, "shape") else None
