"""The run directory: the one module that reads and writes it.

    run = Run.save(model, policy, result, "runs/flowers")   # after Trainer(...).fit() in Python
    run = Run.load("runs/last")                         # the model (policy applied, weights loaded) and its metadata
    run.model, run.policy, run.class_names, run.resolution, run.optimizer, run.history
    import_weights("runs/last", "trained/params.npz", "runs/last/device.pt")   # weights trained on a device

A run directory holds

- ``checkpoint.pt``: ``{"edgetl": meta, "state_dict", "optimizer", "scheduler", "history"}``, the
  ``state_dict`` in torchvision's layout (keys and shapes), written atomically after every epoch;
- ``metrics.json``: the per-epoch records and the best validation accuracy;
- ``run.json``: the metadata, the status (``running`` / ``finished``) and the exact commands.

``meta`` (schema ``edgetl.run/2``): ``model``, ``policy`` (spec string) and ``policy_options`` (the policy
object's fields), ``num_classes``, ``class_names``, ``resolution``, ``optimizer`` (the optimizer spec),
``schedule`` (the learning-rate schedule: ``cosine`` or ``constant``; runs that record none ran cosine),
``config`` (the ``edgetl train`` settings, when the run came from the job) and ``version``. Run directories
written before the schema had a version (the policy's options and the optimizer lived in ``config``) still
load: :func:`read_checkpoint` upgrades their metadata on reading. The checkpoint as a file (its name, reading it
without running code, writing it atomically) is :mod:`edgetl.checkpoint`'s, below this module and
:mod:`edgetl.models`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import RunError, load_checkpoint, write_checkpoint
from .io import atomic_save, atomic_write_json
from .models import create_model, num_classes_of
from .optim import OptimizerSpec
from .policies import Policy, parse_policy
from .surgery import apply_policy, policy_of
from .version import __version__

SCHEMA = "edgetl.run/2"
METRICS, RUN_JSON = "metrics.json", "run.json"


def metadata(model_name: str, policy: Policy, class_names: list[str], resolution: int, optimizer: OptimizerSpec,
             config: dict | None = None, schedule: str = "cosine") -> dict:
    return {"schema": SCHEMA, "version": __version__, "model": model_name, "policy": str(policy),
            "policy_options": policy.options(), "num_classes": len(class_names), "class_names": list(class_names),
            "resolution": int(resolution), "optimizer": optimizer.as_dict(), "schedule": schedule,
            "config": dict(config or {})}


def _upgrade(meta: dict) -> dict:
    """Metadata of any schema as schema 2 (runs written before the schema had a version keep loading)."""
    if meta.get("schema") == SCHEMA:
        return meta
    config = meta.get("config", {})
    policy = parse_policy(meta["policy"])
    options = {k: config[k] for k in policy.options() if k in config}
    optimizer = OptimizerSpec.parse(config.get("optimizer", "adamw"), lr=config.get("lr"),
                                    weight_decay=config.get("weight_decay", 1e-4))
    return {**meta, "schema": SCHEMA, "policy_options": options, "optimizer": optimizer.as_dict(),
            "resolution": int(meta.get("resolution", config.get("resolution", 224)))}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint of a run directory (or a checkpoint file), its metadata upgraded to the current schema.
    Loaded with ``weights_only=True``: a file that would run code is refused (:class:`UnsafeFile`)."""
    ckpt = load_checkpoint(path)
    ckpt["edgetl"] = _upgrade(ckpt["edgetl"])
    return ckpt


def metrics_of(meta: dict, history: list[dict]) -> dict:
    best = max((r["val_acc"] for r in history if r.get("val_acc") is not None), default=None)
    return {"model": meta["model"], "policy": meta["policy"], "epochs": history, "best_val_acc": best}


def write_metrics(out: Path, meta: dict, history: list[dict]) -> None:
    atomic_write_json(metrics_of(meta, history), Path(out) / METRICS)


def write_run_json(out: Path, meta: dict, status: str, command: list[str] | None = None) -> None:
    """``run.json``: the metadata, the status and every command that worked on the run (resumes append)."""
    path = Path(out) / RUN_JSON
    commands = json.loads(path.read_text()).get("commands", []) if path.exists() else []
    if command:
        line = shlex.join(command)
        if not commands or commands[-1] != line:
            commands.append(line)
    summary = parse_policy(meta["policy"]).summary
    atomic_write_json({"status": status, "command": commands[0] if commands else None, "commands": commands,
                       "policy_summary": summary, **meta}, path)


def link_last(out: Path) -> None:
    """Point ``<parent>/last`` at the newest run (replaced atomically; a real directory called last is left alone)."""
    out = Path(out)
    last = out.parent / "last"
    if last.exists() and not last.is_symlink():
        return
    tmp = out.parent / f".last.{out.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    tmp.replace(last)


def model_name_of(model: nn.Module) -> str:
    """The registered name of a torchvision MobileNet (edgetl.create_model records it)."""
    name = getattr(model, "edgetl_model", None)
    if name is None:
        raise RunError(f"cannot tell which MobileNet this {type(model).__name__} is; build it with "
                       f"edgetl.create_model, or pass model_name=")
    return name


@dataclass
class Run:
    """A trained model with what it needs to be exported, resumed or deployed: policy, classes, input, optimizer."""

    model: nn.Module  # policy applied, weights loaded
    model_name: str
    policy: Policy
    class_names: list[str]
    resolution: int
    optimizer: OptimizerSpec
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    path: Path | None = None  # None for a run held in memory only
    notes: list[str] = field(default_factory=list)  # what a consumer (e.g. an export) should tell the user
    schedule: str = "cosine"  # the learning-rate schedule it trained with, which a device follows too

    @property
    def meta(self) -> dict:
        return metadata(self.model_name, self.policy, self.class_names, self.resolution, self.optimizer, self.config,
                        self.schedule)

    @property
    def data(self) -> str | None:
        """The data the run trained on, when it came from ``edgetl train`` (a folder or ``patterns``)."""
        return self.config.get("data")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        ckpt = read_checkpoint(path)
        meta = ckpt["edgetl"]
        policy = parse_policy(meta["policy"], **meta["policy_options"])
        model = create_model(meta["model"], meta["num_classes"])
        model.load_state_dict(ckpt["state_dict"])
        apply_policy(model, policy)
        path = Path(path).resolve()  # the exports' manifests record it: absolute, wherever they are read
        return cls(model, meta["model"], policy, list(meta["class_names"]), meta["resolution"],
                   OptimizerSpec.from_dict(meta["optimizer"]), ckpt.get("history", []), meta.get("config", {}),
                   path if path.is_dir() else path.parent, schedule=meta.get("schedule", "cosine"))

    @classmethod
    def from_model(cls, model: nn.Module, policy: Policy | str | None = None, class_names: list[str] | None = None,
                   resolution: int | None = None, optimizer: OptimizerSpec | str | None = None,
                   model_name: str | None = None, history: list[dict] | None = None,
                   config: dict | None = None, schedule: str = "cosine") -> Run:
        """A run held in memory, from a model. ``policy`` is applied when the model has none yet (``full`` by
        default), and must be the model's own when it has one."""
        applied = policy_of(model)
        if applied is None:
            apply_policy(model, policy or "full")
        elif policy is not None and parse_policy(policy) != applied:
            raise RunError(f"the model was trained under {applied}, not {policy}; pass its own policy")
        n = num_classes_of(model)
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n)]
        if len(names) != n:
            raise RunError(f"the model has {n} classes but {len(names)} class names were given; pass one per class")
        return cls(model, model_name or model_name_of(model), policy_of(model), names, int(resolution or 224),
                   OptimizerSpec.parse(optimizer or "adamw"), list(history or []), dict(config or {}),
                   schedule=schedule)

    @classmethod
    def save(cls, model: nn.Module, policy: Policy | str | None = None, result=None,
             path: str | os.PathLike = "runs/run", *, class_names: list[str] | None = None,
             resolution: int | None = None, optimizer: OptimizerSpec | str | None = None,
             config: dict | None = None) -> Run:
        """Write ``model`` under ``policy`` (default: the one applied to it), with a
        :class:`~edgetl.trainer.TrainResult`'s history, classes, input size and optimizer, as a run directory at
        ``path``; returns the run."""
        run = cls.from_model(model, policy, class_names or getattr(result, "class_names", None),
                             resolution or getattr(result, "resolution", None),
                             optimizer or getattr(result, "optimizer", None),
                             history=getattr(result, "history", None), config=config,
                             schedule=getattr(result, "schedule", "cosine"))
        run.write(path)
        return run

    def write(self, path: str | os.PathLike, status: str = "finished", command: list[str] | None = None) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta = self.meta
        write_checkpoint(out, meta, self.model.state_dict(), self.history)
        write_metrics(out, meta, self.history)
        write_run_json(out, meta, status, command)
        self.path = out


def device_params(params_path: str | os.PathLike, state: dict, run_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``params.npz`` a device runner wrote (by torchvision name), checked against ``state`` (the
    run's state_dict): every name known, every shape the same."""
    try:
        with np.load(params_path, allow_pickle=False) as z:
            params = {k: z[k] for k in z.files}
    except Exception:
        raise RunError(f"cannot read {params_path}: expected the params.npz a device runner writes") from None
    unknown = [n for n in params if n not in state]
    wrong = [n for n in params if n in state and tuple(state[n].shape) != params[n].shape]
    if unknown or wrong:
        raise RunError(f"{params_path} does not fit the run in {run_path}: {len(unknown)} unknown and {len(wrong)} "
                       f"mis-shaped tensors (e.g. {(unknown + wrong)[0]}); import weights into the run they were "
                       f"exported from")
    return {name: torch.from_numpy(value) for name, value in params.items()}


def import_weights(run_path: str | os.PathLike, params_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Load parameters trained on a device (``params.npz`` by torchvision name) into a new checkpoint at ``out``."""
    ckpt = read_checkpoint(run_path)
    ckpt["state_dict"].update(device_params(params_path, ckpt["state_dict"], run_path))
    ckpt["edgetl"] = {**ckpt["edgetl"], "imported_from": str(params_path)}
    for key in ("optimizer", "scheduler"):  # device training has its own optimizer state
        ckpt.pop(key, None)
    atomic_save(ckpt, out)
    return Path(out)
