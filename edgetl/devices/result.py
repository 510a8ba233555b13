"""What ``deploy()`` returns: :class:`DeployResult`, whose ``to_dict()`` is the result directory's ``report.json``.

    result = deploy("artifacts/onnx", "ssh://pi@raspberrypi.local", steps=200)
    result.mode, result.losses, result.peak_rss_bytes, result.predicted_memory_bytes, result.out
    result.to_dict()                    # report.json, key for key (the file's format is this method's)
    result = DeployResult.load("deploy/pi")      # a result directory read back

A training deploy fills the training fields (steps ... verify); ``--predict`` / ``--evaluate`` fill ``weights``
and ``predictions`` or ``evaluation``. ``images_left_device`` and ``note`` are set when the images stayed on the
device (``--device-data``, predicting, evaluating). The plots (``loss.png``, ``confusion.png``) are drawn here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..sources import DEPLOY_REPORT as REPORT

#: what every result names first: where it ran and what it trained
ORIGIN = ("device", "bundle", "remote", "run", "model", "policy", "format", "artifacts", "source_run")
#: a training deploy's own keys, in report.json's order (predicted_memory_bytes is derived)
TRAIN = ("steps", "batch_size", "predicted_memory_bytes", "predicted_memory", "data", "epochs", "augment", "seed",
         "schedule", "lr", "prefix_batch", "cache", "resumed_from_epoch", "eval", "losses", "median_step_seconds",
         "peak_rss_bytes", "wall_seconds", "verify", "files")


@dataclass
class DeployResult:
    device: dict  # DeviceInfo.as_dict()
    bundle: str
    remote: str
    run: str  # the run directory on the device, in the bundle
    model: str
    policy: str | None
    format: str | None
    artifacts: str
    source_run: str | None
    mode: str  # train, predict or evaluate
    wall_seconds: float
    files: list[str]
    # a training deploy
    steps: int | None = None
    batch_size: int | None = None
    predicted_memory: dict | None = None  # MemoryPrediction.as_dict()
    data: dict | None = None  # where the images were, how many per split, the unreadable ones skipped
    epochs: list[dict] = field(default_factory=list)
    augment: str | None = None
    seed: int | None = None
    schedule: str | None = None
    lr: float | None = None
    prefix_batch: int | None = None
    cache: dict | None = None
    resumed_from_epoch: int | None = None
    eval: dict | None = None  # before and after training, on --eval-data
    losses: list[float] = field(default_factory=list)
    median_step_seconds: float | None = None
    peak_rss_bytes: int | None = None
    verify: list[dict] | None = None
    # --predict / --evaluate
    weights: str | None = None
    predictions: dict | None = None
    evaluation: dict | None = None
    # set when the images stayed on the device
    images_left_device: bool | None = None
    note: str | None = None
    out: Path | None = None  # the result directory here (not in report.json)

    @property
    def predicted_memory_bytes(self) -> int | None:
        return self.predicted_memory["total_bytes"] if self.predicted_memory else None

    @property
    def baseline_bytes(self) -> int | None:
        """The runner's baseline as deploy measured it on the device (``--baseline``, for its memory gate)."""
        return self.predicted_memory["baseline_bytes"] if self.predicted_memory else None

    @property
    def device_name(self) -> str:
        """The device's URI without its query (key files, known hosts): what a person recognises it by."""
        return self.device["uri"].split("?")[0]

    def to_dict(self) -> dict:
        """``report.json``."""
        report = {k: getattr(self, k) for k in ORIGIN}
        report["mode"] = self.mode
        if self.mode == "train":
            report.update({k: getattr(self, k) for k in TRAIN})
        else:
            used = "evaluation" if self.mode == "evaluate" else "predictions"
            report.update({"weights": self.weights, used: getattr(self, used), "wall_seconds": self.wall_seconds,
                           "files": self.files})
        if self.images_left_device is not None:
            report.update(images_left_device=self.images_left_device, note=self.note)
        return report

    @classmethod
    def from_dict(cls, report: dict, out: str | Path | None = None) -> DeployResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in report.items() if k in known}, out=Path(out) if out else None)

    @classmethod
    def load(cls, out: str | Path) -> DeployResult:
        return cls.from_dict(json.loads((Path(out) / REPORT).read_text()), out)


def data_report(metrics: dict, bundle, device_data: str | None) -> dict:
    """What the runner trained on: where the images were, how many per split, the unreadable ones skipped."""
    ran = metrics.get("data", {})
    if device_data:
        source = {"source": "device", "path": ran.get("path", device_data)}
    elif bundle.shard:
        size = sum((bundle.root / rel).stat().st_size for rel in bundle.files if rel.split("/")[0] == bundle.shard)
        source = {"source": "pushed", "shard": bundle.shard, "shard_bytes": size,
                  "format": "uint8 .npy, memory-mapped" if bundle.shard == "shard" else ".npz"}
    else:
        source = {"source": "reference", "shard": "reference.npz"}
    return {**source, "train_images": ran.get("train_images"), "val_images": ran.get("val_images"),
            "skipped_unreadable": ran.get("skipped_unreadable", 0), "unreadable": ran.get("unreadable", [])}


def trained(origin: dict, partial: Path, bundle, device_data, batch_size, memory, augment, seed, verified,
            seconds) -> DeployResult:
    """A training deploy's result, from the runner's ``metrics.json`` pulled into ``partial``."""
    metrics = json.loads((partial / "metrics.json").read_text())
    return DeployResult(**origin, mode="train", steps=metrics["steps"], batch_size=batch_size,
                        predicted_memory=memory.as_dict(), data=data_report(metrics, bundle, device_data),
                        epochs=metrics.get("epochs", []), augment=augment, seed=seed,
                        schedule=metrics.get("schedule", "constant"), lr=metrics.get("lr"),
                        prefix_batch=metrics.get("prefix_batch"), cache=metrics.get("cache"),
                        resumed_from_epoch=metrics.get("resumed_from_epoch"), eval=metrics.get("eval"),
                        losses=metrics["losses"], median_step_seconds=metrics["median_step_seconds"],
                        peak_rss_bytes=metrics["peak_rss_bytes"], wall_seconds=seconds, verify=verified,
                        files=sorted(p.name for p in partial.iterdir()))


def used(origin: dict, partial: Path, use: str, local_weights: Path | None, seconds: float) -> DeployResult:
    """A ``--predict`` or ``--evaluate`` deploy's result, from what the runner wrote into ``partial``."""
    name = "predictions.json" if use == "predict" else "evaluation.json"
    result = json.loads((partial / name).read_text())
    weights = str(local_weights) if local_weights else result["weights"]
    return DeployResult(**origin, mode=use, weights=weights, wall_seconds=seconds,
                        files=sorted([*(p.name for p in partial.iterdir()), REPORT]),
                        **{"evaluation" if use == "evaluate" else "predictions": result})


def plot(result: DeployResult, out: Path) -> None:
    """``loss.png`` of a training deploy; ``confusion.png`` of what was evaluated on the device (after training)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plots are a nicety: report.json holds the numbers
        return
    evaluated = result.evaluation or (result.eval or {}).get("after")
    if evaluated:
        from ..evaluate import EvalResult

        ev = EvalResult.from_dict(evaluated, {"model": result.model, "policy": result.policy})
        ev.plot_confusion(out / "confusion.png", f"{result.model} {result.policy} on the device: top-1 "
                                                 f"{ev.top1:.1%} on {ev.images} images")
    if result.mode == "train":
        _plot_losses(result, out / "loss.png")


def _plot_losses(result: DeployResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(result.losses) + 1), result.losses, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{result.model} {result.policy} on {result.device['model'] or result.device['os']}", fontsize=9)
    ax.grid(alpha=0.3)
    val = [(sum(e["steps"] for e in result.epochs[:i + 1]), e["val_acc"]) for i, e in enumerate(result.epochs)
           if e.get("val_acc") is not None]
    if val:  # validation accuracy per epoch, placed at the step that ended the epoch
        acc = ax.twinx()
        acc.plot(*zip(*val), color="tab:green", marker="o")
        acc.set_ylabel("validation accuracy", color="tab:green")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
