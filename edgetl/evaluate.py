"""Judge and use a trained model from anywhere: a run, a checkpoint, a deploy result or an export.

    result = edgetl.evaluate("runs/last", "./test")           # an EvalResult; "./test" is PATH/<class>/*.jpg
    result.top1, result.top5, result.per_class, result.confusion, result.skipped_unreadable
    result.write_json("eval.json"); result.plot_confusion("confusion.png")
    preds = edgetl.predict("artifacts/tflite", ["photo.jpg", "./new"], top_k=3)    # Predictions
    preds.rows[0].image, preds.rows[0].top                    # [(class, probability), ...], most probable first

A source is opened by :mod:`edgetl.sources`: runs, checkpoints and deploy results run in PyTorch, exports in
their own runtime (the numbers a device computes). Images are read and preprocessed by the device runners'
own code (``runner_data``: the manifest's preprocessing, which is the laptop's evaluation transform) and
scored by ``runner_eval``, the arithmetic the device runs for ``--evaluate`` and ``--eval-data``: a device's
accuracy and this one agree on the same weights and images. Class folders are matched to the model's classes
by name; unreadable images are skipped and counted, never fatal. ``EvalResult.from_dict`` reads a device's
``evaluation.json`` (and a deploy's before/after evaluations) into the same object.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .io import atomic_write_json
from .limits import check_numbers
from .runtime import runner_data, runner_eval
from .sources import ModelSource, open_source, runner_errors

SCHEMA_EVAL, SCHEMA_PREDICT = runner_eval.SCHEMA_EVAL, runner_eval.SCHEMA_PREDICT


@dataclass
class EvalResult:
    """An evaluation: accuracy (top-1, top-5 where there are more than 5 classes), per-class precision and
    recall, the confusion matrix (rows: true class, columns: predicted), and the images skipped as unreadable."""

    source: dict
    data: str
    class_names: list[str]
    images: int
    top1: float | None
    top5: float | None
    loss: float | None
    per_class: list[dict]
    confusion: list[list[int]]
    skipped_unreadable: int = 0
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict, source: dict | None = None, class_names: list[str] | None = None) -> EvalResult:
        """From this schema's JSON, or a device runner's evaluation (its ``evaluation.json`` or ``--eval-data``
        records)."""
        names = class_names or d.get("class_names") or [row["class"] for row in d["per_class"]]
        src = source or d.get("source") or {k: d[k] for k in ("weights", "model", "policy", "runtime") if k in d}
        return cls(src, d.get("data") or d.get("path", ""), list(names), int(d["images"]), d["top1"], d.get("top5"),
                   d.get("loss"), list(d["per_class"]), [list(r) for r in d["confusion"]],
                   int(d.get("skipped_unreadable", 0)), list(d.get("unreadable", [])), list(d.get("notes", [])))

    def as_dict(self) -> dict:
        return {"schema": SCHEMA_EVAL, "source": self.source, "data": self.data, "class_names": self.class_names,
                "images": self.images, "top1": self.top1, "top5": self.top5, "loss": self.loss,
                "per_class": self.per_class, "confusion": self.confusion,
                "skipped_unreadable": self.skipped_unreadable, "unreadable": self.unreadable, "notes": self.notes}

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_json(self.as_dict(), path)

    def plot_confusion(self, path: str | os.PathLike, title: str | None = None) -> None:
        """A PNG of the confusion matrix, each row as fractions of its true class (counts written in the cells)."""
        try:
            import matplotlib
        except ImportError:
            from .errors import ConfigError

            raise ConfigError("plotting needs matplotlib: pip install 'edgetl[plot]'") from None
        import numpy as np

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts = np.asarray(self.confusion, float)
        rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        n = len(self.class_names)
        side = max(4.0, 0.55 * n + 2)
        fig, ax = plt.subplots(figsize=(side + 1, side))
        image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), self.class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), self.class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                                color="white" if rows[i, j] > 0.5 else "black")
        top1 = f"{self.top1:.1%}" if self.top1 is not None else "-"
        ax.set_title(title or f"{self.source.get('model', '')} {self.source.get('policy') or ''}: top-1 {top1} "
                              f"on {self.images} images", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


@dataclass
class Predictions:
    source: dict
    top_k: int
    rows: list[Prediction]
    unreadable: list[dict] = field(default_factory=list)  # {"image", "error"}

    @classmethod
    def from_dict(cls, d: dict, source: dict | None = None) -> Predictions:
        """From this schema's JSON or a device runner's ``predictions.json``."""
        src = source or d.get("source") or {k: d[k] for k in ("weights", "model", "policy", "runtime") if k in d}
        rows = [Prediction(r["image"], [(t["class"], float(t["probability"])) for t in r["top"]]) for r in d["predictions"]]
        return cls(src, int(d["top_k"]), rows, list(d.get("unreadable", [])))

    def as_dict(self) -> dict:
        return {"schema": SCHEMA_PREDICT, "source": self.source, "top_k": self.top_k,
                "predictions": [{"image": r.image, "top": [{"class": c, "probability": p} for c, p in r.top]}
                                for r in self.rows], "unreadable": self.unreadable}

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_json(self.as_dict(), path)

    def write_csv(self, path_or_file) -> None:
        """One row per image and rank: ``image, rank, class, probability`` (unreadable images: rank 0, the error)."""
        own = isinstance(path_or_file, (str, os.PathLike))
        f = open(path_or_file, "w", newline="") if own else path_or_file
        try:
            out = csv.writer(f)
            out.writerow(["image", "rank", "class", "probability"])
            for r in self.rows:
                for rank, (c, p) in enumerate(r.top, 1):
                    out.writerow([r.image, rank, c, f"{p:.6f}"])
            for bad in self.unreadable:
                out.writerow([bad["image"], 0, "", f"unreadable: {bad['error']}"])
        finally:
            if own:
                f.close()


def _source(source) -> ModelSource:
    return source if isinstance(source, ModelSource) else open_source(source)


def evaluate(source, data: str | os.PathLike, batch_size: int | None = None, threads: int | None = None,
             progress=None) -> EvalResult:
    """Evaluate ``source`` (a path or a :class:`ModelSource`) on ``data``, an ImageFolder ``DATA/<class>/*`` whose
    folders are the model's class names (some may be absent); ``progress(done, total)`` after each batch."""
    check_numbers(batch_size=batch_size, threads=threads)
    src = _source(source)
    with runner_errors():
        split, notes = runner_data.labelled_folder(str(data), src.class_names, src.preprocessing)
    predict, fixed = src.predictor(threads)
    with runner_errors():
        result = runner_eval.evaluate(predict, split, batch_size or fixed, src.class_names, progress)
    return EvalResult.from_dict({**result, "data": str(Path(data).resolve()), "notes": notes}, src.describe(),
                                src.class_names)


def predict(source, images, top_k: int = 5, batch_size: int | None = None, threads: int | None = None,
            progress=None) -> Predictions:
    """The ``top_k`` most probable classes of every image in ``images`` (files or folders, searched recursively),
    by ``source``; unreadable images are listed apart."""
    check_numbers(top_k=top_k, batch_size=batch_size, threads=threads)
    src = _source(source)
    names = [str(images)] if isinstance(images, (str, os.PathLike)) else [str(i) for i in images]
    with runner_errors():
        paths = runner_eval.image_paths(names)
    predict_fn, fixed = src.predictor(threads)
    with runner_errors():
        rows, unreadable = runner_eval.predictions(predict_fn, paths, src.preprocessing, batch_size or fixed,
                                                   src.class_names, top_k, progress)
    return Predictions.from_dict({"top_k": top_k, "predictions": rows, "unreadable": unreadable}, src.describe())
