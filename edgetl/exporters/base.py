"""What every exporter shares: the run it exports, reference batches, the optimizer, the manifest.

    run = load_run("runs/last")                 # policy-applied model with the run's weights
    ref = reference_batches(run, batch_size=4, count=2)
    write_manifest(out_dir, {...})              # adds file checksums; written atomically

An exporter lowers ``run.model`` to its format, then proves it with :mod:`.validation`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_datasets
from ..errors import EdgeTLError
from ..io import atomic_write_json, file_sha256
from ..models import create_model
from ..surgery import apply_policy
from ..trainer import CHECKPOINT, SGD_MOMENTUM

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"


class ExportError(EdgeTLError):
    """An export that cannot be made or did not validate."""


@dataclass
class OptimizerSpec:
    """The optimizer the exported training graph runs; the PyTorch reference uses exactly the same."""

    name: str  # "adamw" or "sgd"
    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0  # SGD only

    def torch_optimizer(self, params) -> torch.optim.Optimizer:
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def as_dict(self) -> dict:
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas),
                "eps": self.eps, "momentum": self.momentum}


@dataclass
class Run:
    path: Path
    model: nn.Module  # policy applied, run's weights loaded
    meta: dict
    config: dict
    class_names: list[str]
    resolution: int
    notes: list[str] = field(default_factory=list)

    @property
    def policy(self) -> str:
        return self.meta["policy"]

    def optimizer(self, lr: float | None = None, momentum: bool = False) -> OptimizerSpec:
        """The run's optimizer; ``momentum``: the format runs SGD with momentum and weight decay as PyTorch does."""
        name = self.config.get("optimizer", "adamw")
        lr = lr if lr is not None else self.config.get("lr") or 1e-3
        if name == "adamw":
            return OptimizerSpec("adamw", lr, self.config.get("weight_decay", 0.0))
        if momentum:
            return OptimizerSpec("sgd", lr, self.config.get("weight_decay", 0.0), momentum=SGD_MOMENTUM)
        self.notes.append(f"the run used {name} with momentum {SGD_MOMENTUM} and weight decay; the exported graph runs plain "
                          f"SGD (the on-device training runtimes offer no momentum), and so does the parity check")
        return OptimizerSpec("sgd", lr)


def load_run(path: str | Path) -> Run:
    """The run directory (or checkpoint file) of an ``edgetl train`` run, ready to export."""
    path = Path(path)
    ckpt_path = path / CHECKPOINT if path.is_dir() else path
    if not ckpt_path.is_file():
        raise ExportError(f"no {CHECKPOINT} in {path}; pass the directory of an `edgetl train` run (e.g. runs/last)")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        meta = ckpt["edgetl"]
    except Exception:
        raise ExportError(f"{ckpt_path} is not an edgetl checkpoint (corrupt, or not written by `edgetl train`)") from None
    config = meta.get("config", {})
    model = create_model(meta["model"], meta["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    apply_policy(model, meta["policy"], hardswish_threshold=config.get("hardswish_threshold", 0.0))
    return Run(ckpt_path.parent, model, meta, config, list(meta["class_names"]), int(meta.get("resolution", 224)))


def reference_batches(run: Run, batch_size: int = 4, count: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` batches of preprocessed images and labels, shaped (count, B, 3, R, R) and (count, B).

    Taken from the run's validation data when it is still readable; otherwise random images (said in the notes).
    """
    n = batch_size * count
    try:
        _, val, _ = load_datasets(run.config.get("data", "patterns"), run.resolution, run.config.get("seed", 0))
        if len(val) < n:
            raise EdgeTLError(f"only {len(val)} validation images")
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        items = [val[i] for i in order]
        images = torch.stack([x for x, _ in items]).numpy()
        labels = np.array([y for _, y in items], dtype=np.int64)
    except EdgeTLError as exc:
        run.notes.append(f"reference batches are random images: the run's data could not be used ({exc})")
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(n, 3, run.resolution, run.resolution, generator=g).numpy()
        labels = torch.randint(0, len(run.class_names), (n,), generator=g).numpy()
    shape = (count, batch_size, 3, run.resolution, run.resolution)
    return images.reshape(shape).astype(np.float32), labels.reshape(count, batch_size)


def preprocessing(resolution: int) -> dict:
    resize = eval_transform(resolution).transforms[0].size
    return {"resize_shorter_side": resize, "center_crop": resolution, "scale": 1 / 255, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "layout": "NCHW", "channels": "RGB"}


@contextlib.contextmanager
def quiet_stderr():
    """Silence native libraries' log lines (they go to fd 2, beneath Python); yields the file that holds them,
    for error messages."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def manifest_fields(exporter, run: Run, spec: OptimizerSpec, trainable: list[str], batch_size: int | None,
                    reference_batch: int, steps: int) -> dict:
    """What every format's manifest says; ``batch_size`` None means any batch (else fixed at export)."""
    from .validation import TOLERANCES

    return {
        "format": exporter.name, "runtime": exporter.runtime, "model": run.meta["model"], "policy": run.policy,
        "input": {"name": exporter.input_name, "shape": [batch_size, 3, run.resolution, run.resolution],
                  "dtype": "float32"},
        "output": {"name": "logits", "shape": [batch_size, len(run.class_names)]}, "class_names": run.class_names,
        "preprocessing": preprocessing(run.resolution), "trainable": trainable, "optimizer": spec.as_dict(),
        "dropout": "not exported: on-device training runs without dropout (the parity check does the same)",
        "validation": {"validated": False, "steps": steps, "batch_size": reference_batch, "tolerances": TOLERANCES},
        "notes": run.notes, "source_run": str(run.path)}


def file_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest itself, by relative path."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}


def copy_runner(runner_module, out: Path) -> str:
    """Put a device runner and the ``runner_common.py`` it imports into ``out``; returns the runner's file name."""
    import shutil

    from ..devices.runner import runner_common

    name = Path(runner_module.__file__).name
    shutil.copy(runner_module.__file__, out / name)
    shutil.copy(runner_common.__file__, out / Path(runner_common.__file__).name)
    return name


def write_manifest(root: Path, manifest: dict) -> dict:
    manifest = {**manifest, "edgetl_version": __version__, "files": file_checksums(root)}
    atomic_write_json(manifest, root / MANIFEST)
    return manifest


def import_weights(run_path: str | Path, params_path: str | Path, out: str | Path) -> Path:
    """Load parameters trained on a device (``params.npz`` by torchvision name) into a new edgetl checkpoint."""
    from ..io import atomic_save

    run = load_run(run_path)
    try:
        params = dict(np.load(params_path))
    except Exception:
        raise ExportError(f"cannot read {params_path}: expected the params.npz a device runner writes") from None
    state = run.model.state_dict()
    unknown = [n for n in params if n not in state]
    wrong = [n for n in params if n in state and tuple(state[n].shape) != params[n].shape]
    if unknown or wrong:
        raise ExportError(f"{params_path} does not fit the run in {run.path}: "
                          f"{len(unknown)} unknown and {len(wrong)} mis-shaped tensors (e.g. {(unknown + wrong)[0]}); "
                          f"import weights into the run they were exported from")
    for name, value in params.items():
        state[name] = torch.from_numpy(value)
    ckpt = torch.load(run.path / CHECKPOINT, map_location="cpu", weights_only=False)
    ckpt["state_dict"] = state
    ckpt["edgetl"] = {**ckpt["edgetl"], "imported_from": str(params_path)}
    for key in ("optimizer", "scheduler"):  # device training has its own optimizer state
        ckpt.pop(key, None)
    atomic_save(ckpt, out)
    return Path(out)


def verify_manifest(root: str | Path) -> list[str]:
    """Files whose checksum does not match the manifest (missing files included); empty when intact."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        p = root / rel
        if not p.is_file() or file_sha256(p) != digest:
            bad.append(rel)
    return bad
