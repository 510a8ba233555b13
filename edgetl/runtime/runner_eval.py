"""Judging and using a model where it runs: accuracy, confusion and top-k predictions (numpy only).

    tally = Tally(class_names)
    for x, y, real in batches: tally.add(predict(x)[:real], y[:real])
    summary = tally.summary()            # top1, top5, loss, per-class precision/recall, confusion matrix
    rows = predictions(predict, images, batch, class_names, top_k=3)   # [{"image", "top": [{class, probability}]}]

The device runners (``--evaluate``, ``--predict``, ``--eval-data``) and the laptop (``edgetl evaluate``,
``edgetl predict``) compute through this one module, so the accuracy a device reports and the one the
laptop computes from the same weights on the same images are the same arithmetic. Copied beside the runner
onto devices: it imports numpy, and ``runner_data`` for the images.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np

if __package__:  # edgetl.runtime.runner_eval
    from . import runner_data as data
else:  # beside the runner on a device
    import runner_data as data

SCHEMA_EVAL, SCHEMA_PREDICT = "edgetl.eval/1", "edgetl.predict/1"
#: top-k accuracy is reported for k = 5 only where the model has more than 5 classes (else it is always 1)
TOP_K = 5


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, probabilities) of the ``k`` most probable classes per row, most probable first (ties:
    the lower index first, as ``argmax``)."""
    p = np.exp(log_softmax(logits))
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(p, order, axis=1)


class Tally:
    """Running counts of an evaluation: a confusion matrix (rows: true class, columns: predicted), top-5 hits
    and the summed cross-entropy; add batches as they come, so memory does not grow with the images."""

    def __init__(self, class_names: list[str] | None = None):
        """``class_names`` None: classes by index, as many as the first logits have."""
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion = None if class_names is None else np.zeros((len(class_names),) * 2, np.int64)
        self.top5_hits, self.loss_sum = 0, 0.0

    @property
    def images(self) -> int:
        return int(self.confusion.sum()) if self.confusion is not None else 0

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits, labels = np.asarray(logits), np.asarray(labels, np.int64)
        if not len(labels):
            return
        if self.confusion is None:
            self.class_names = [str(i) for i in range(logits.shape[1])]
            self.confusion = np.zeros((logits.shape[1],) * 2, np.int64)
        np.add.at(self.confusion, (labels, logits.argmax(axis=1)), 1)
        self.loss_sum -= float(log_softmax(logits)[np.arange(len(labels)), labels].sum())
        k = min(TOP_K, logits.shape[1])
        self.top5_hits += int((top_k(logits, k)[0] == labels[:, None]).any(axis=1).sum())

    def summary(self) -> dict:
        """What an evaluation reports; accuracies are None where no image was evaluated."""
        n, c = self.images, self.confusion if self.confusion is not None else np.zeros((0, 0), np.int64)
        correct = np.diag(c)
        predicted, actual = c.sum(axis=0), c.sum(axis=1)
        per_class = [{"class": name, "precision": float(correct[i] / predicted[i]) if predicted[i] else None,
                      "recall": float(correct[i] / actual[i]) if actual[i] else None, "support": int(actual[i])}
                     for i, name in enumerate(self.class_names or [])]
        return {"images": n, "top1": float(correct.sum() / n) if n else None,
                "top5": (float(self.top5_hits / n) if n else None) if len(c) > TOP_K else None,
                "loss": self.loss_sum / n if n else None, "per_class": per_class, "confusion": c.tolist()}


def evaluate(predict, split, batch_size: int, class_names: list[str] | None = None, progress=None) -> dict:
    """The summary of ``predict`` (a batch of ``batch_size`` images -> logits; the last batch is padded and only
    its real images count) on ``split``, a ``runner_data`` split, with its unreadable files counted;
    ``progress(done, total)`` after every batch."""
    tally = Tally(class_names)
    for x, y, real in data.batches(split, range(len(split)), batch_size, pad=True):
        tally.add(np.asarray(predict(x))[:real], y[:real])
        if progress:
            progress(tally.images + len(split.bad), len(split))
    skipped, named = data.unreadable(split)
    return {**tally.summary(), "skipped_unreadable": skipped, "unreadable": named}


def predictions(predict, paths: list[str], prep: dict, batch_size: int, class_names: list[str], k: int,
                progress=None):
    """``(rows, unreadable)``: the ``k`` most probable classes of every readable image in ``paths``, in order, and
    the files that could not be read (with why). ``predict`` takes batches of ``batch_size`` (the last padded);
    ``progress(done, total)`` after every batch."""
    split = data.FolderSplit("predict", list(paths), np.zeros(len(paths), np.int64), prep, os.path.commonpath(
        [os.path.dirname(p) or "." for p in paths]) if paths else ".")
    rows, k = [], max(1, min(k, len(class_names)))
    done = 0
    for x, _, real in data.batches(split, range(len(split)), batch_size, pad=True):
        index, prob = top_k(np.asarray(predict(x))[:real], k)
        for i, p in zip(index, prob):
            while done in split.bad:  # the readable images come in order: skip the rows of unreadable ones
                done += 1
            rows.append({"image": split.paths[done],
                         "top": [{"class": class_names[int(c)], "probability": float(q)} for c, q in zip(i, p)]})
            done += 1
        if progress:
            progress(done, len(split))
    unreadable = [{"image": split.paths[i], "error": why} for i, why in sorted(split.bad.items())]
    return rows, unreadable


def image_paths(inputs: list[str]) -> list[str]:
    """The image files named by ``inputs`` (files, or directories searched recursively), in a stable order;
    a name that does not exist is refused."""
    found = []
    for item in inputs:
        path = os.path.abspath(os.path.expanduser(item))
        if os.path.isdir(path):
            for d, subdirs, names in os.walk(path, followlinks=True):
                subdirs.sort()
                found += [os.path.join(d, n) for n in sorted(names) if n.lower().endswith(data.IMAGE_EXTENSIONS)
                          and not n.startswith(".")]
        elif os.path.isfile(path):
            found.append(path)
        else:
            data.refuse(f"{item} does not exist: name image files or folders of images")
    if not found:
        data.refuse(f"no images ({', '.join(data.IMAGE_EXTENSIONS)}) in {', '.join(inputs)}: name image files or "
                    f"folders that hold them")
    return found


# -- the runners' --predict and --evaluate --------------------------------------------------------------

PREDICTIONS, EVALUATION = "predictions.json", "evaluation.json"


def latest_weights(artifacts: str) -> str | None:
    """The ``params.npz`` of the newest finished training of this export on this device: deploys train in
    ``<bundles>/<bundle>/runs/<run>``, and a finished run's ``progress.json`` names the manifest it trained
    (its sha256); None when no training of this export finished here."""
    with open(os.path.join(artifacts, "manifest.json"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    bundles = os.path.dirname(os.path.abspath(artifacts))
    found = []
    for progress in glob.glob(os.path.join(bundles, "*", "runs", "*", "progress.json")):
        params = os.path.join(os.path.dirname(progress), "params.npz")
        try:
            with open(progress) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if record.get("complete") and record.get("config", {}).get("manifest") == sha and os.path.exists(params):
            found.append((os.path.getmtime(params), params))
    return max(found)[1] if found else None


def weights_of(artifacts: str, choice: str) -> tuple[dict | None, str]:
    """``(params or None for the export's own, what they are)`` for ``--weights`` latest, export or a path."""
    if choice == "export":
        return None, "the export's own weights"
    path = latest_weights(artifacts) if choice == "latest" else os.path.expanduser(choice)
    if path is None:
        print("note: no training of this export has finished on this device: using the export's own weights",
              flush=True)
        return None, "the export's own weights (no training of this export finished here)"
    if not os.path.isfile(path):
        data.refuse(f"--weights {choice}: no such file; give the params.npz a training run wrote, latest, or export")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, path
    except (OSError, ValueError) as exc:
        data.refuse(f"--weights {path} is not a params.npz ({exc}); give the params.npz a training run wrote")


def use(args, manifest: dict, make_predictor, write_json) -> int:
    """``--predict`` / ``--evaluate``: classify images, or evaluate on an ImageFolder, with the weights
    ``--weights`` names; writes ``OUT/predictions.json`` or ``OUT/evaluation.json`` (``write_json(data, path)``,
    atomic) and prints its summary as one JSON line. The images are read here and never written anywhere."""
    if args.predict and args.evaluate:
        data.refuse("give --predict or --evaluate, not both")
    if args.top_k < 1:
        data.refuse(f"--top-k must be at least 1, got {args.top_k}")
    classes, prep = list(manifest["class_names"]), manifest["preprocessing"]
    data.pillow()  # one clear line before anything else when the device cannot decode images
    if args.evaluate:
        split, notes = data.labelled_folder(args.evaluate, classes, prep)
    else:
        paths, notes = image_paths(args.predict), []
    for note in notes:
        print(f"note: {note}", flush=True)
    params, weights = weights_of(args.artifacts, args.weights)
    predict, batch = make_predictor(args.artifacts, params, args.threads)
    os.makedirs(args.out, exist_ok=True)

    def progress(done: int, total: int) -> None:
        print(f"images {done}/{total}", flush=True)

    head = {"weights": weights, "model": manifest["model"], "policy": manifest.get("policy"),
            "runtime": manifest["runtime"], "class_names": classes, "notes": notes}
    if args.evaluate:
        result = {"schema": SCHEMA_EVAL, **head, "data": os.path.abspath(os.path.expanduser(args.evaluate)),
                  **evaluate(predict, split, batch, classes, progress)}
        write_json(result, os.path.join(args.out, EVALUATION))
        summary = {k: result[k] for k in ("top1", "top5", "images", "skipped_unreadable")}
    else:
        rows, unreadable = predictions(predict, paths, prep, batch, classes, args.top_k, progress)
        result = {"schema": SCHEMA_PREDICT, **head, "top_k": args.top_k, "predictions": rows, "unreadable": unreadable}
        write_json(result, os.path.join(args.out, PREDICTIONS))
        summary = {"images": len(rows), "skipped_unreadable": len(unreadable)}
    print(json.dumps({"mode": "evaluate" if args.evaluate else "predict", "weights": weights, **summary}), flush=True)
    return 0
