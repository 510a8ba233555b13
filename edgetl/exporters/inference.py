"""Inference exports for apps: the trained weights baked in as constants, one standalone model, validated.

    result = export("deploy/pi", "tflite", "artifacts/app", inference=True)             # fp32 (the default)
    result = export("runs/last", "onnx", "artifacts/app", inference=True, quantize="int8", calibration="./train")
    result.validation, result.manifest.size_bytes, result.manifest.latency

The model is the run's network as torchvision builds it, with the trained weights: the policy's training
modules (masked activations, shift-only norms) compute in inference exactly what plain layers compute, so they
are put back, and the frozen prefix is folded back in. Every weight is a constant: no variables, no training
signatures, any batch; the input is NCHW float32 preprocessed as the manifest says. Each format lowers it
(``Exporter.lower_inference``); this module owns the flow: the images, the manifest (``kind: inference``,
classes, preprocessing, ``labels.txt``), the checks and the directory, built under a temporary name and renamed
into place only when complete.

``quantize="int8"`` is post-training integer quantization calibrated on the user's images (``calibration``, a
folder of images, class folders or not; never the default). What is checked (✓/✗, as every export):

- fp32: the export's logits against PyTorch's on the validation images within ``LOGIT_ATOL`` (relative to the
  largest logit), as training exports are checked;
- int8: top-1 agreement with the fp32 model (PyTorch) on the validation images the fp32 model decides (its two
  most probable classes ``NEAR_TIE`` or more apart), at least ``INT8_AGREEMENT``. An image fp32 finds nearly tied
  turns either way under any rounding (int8's, or another runtime's): measured on MobileNetV3-Small from CIFAR,
  most of int8's changes of class fall there, and with 16-bit activations too. Beside it: the agreement on every
  image and, with labelled images (class folders named as the model's classes), the accuracy change.

Validation images: ``validation`` when given, else the calibration folder's images not used to calibrate (all
of them when none are left, said in a note), else the run's own validation data. The manifest also records the
file size and the median single-image latency in the export's runtime, through the device runner's own code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import preprocessing
from ..errors import ConfigError, DataError
from ..formats import runners
from ..models import create_model
from ..run import Run
from ..runtime import runner_data, runner_eval, runner_module
from ..runtime.runner_common import RunnerError
from ..sources import runner_errors
from .base import Artifacts, ExportError
from .manifest import MANIFEST, Manifest, write_manifest
from .reference import reference_batches
from .validation import Check, Validation, compare_logits

QUANTIZATIONS = ("int8",)
#: an int8 model must pick the fp32 model's top class on at least this fraction of the validation images that the
#: fp32 model decides (see ``NEAR_TIE``)
INT8_AGREEMENT = 0.99
CALIBRATION_IMAGES = 200  # images the quantizer calibrates on, at most
#: an image whose two most probable classes (fp32) are this close is nearly undecided: int8's rounding may turn it
NEAR_TIE = 0.05
VALIDATION_IMAGES = 1000  # images validation runs on, at most
LATENCY_RUNS = 30
LABELS = "labels.txt"


def plain_model(run: Run) -> torch.nn.Module:
    """The run's network as torchvision builds it, with its trained weights, in inference mode: what an app runs."""
    model = create_model(run.model_name, len(run.class_names))
    model.load_state_dict(run.model.state_dict())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _folder_images(path: str, run: Run) -> tuple[runner_data.FolderSplit, bool]:
    """The images under ``path`` with their labels when its class folders are the model's classes (some may be
    missing), else unlabelled: (split, labelled)."""
    prep = preprocessing(run.resolution)
    try:
        split, _ = runner_data.labelled_folder(path, run.class_names, prep)
        return split, True
    except RunnerError:  # not an ImageFolder of the model's classes: its images, unlabelled
        pass
    with runner_errors():
        paths = runner_eval.image_paths([path])
    return runner_data.FolderSplit("images", paths, np.full(len(paths), -1, np.int64), prep, path), False


def _load(split, index) -> tuple[np.ndarray, np.ndarray]:
    """The readable images of ``split`` at ``index`` (unreadable ones skipped) and their labels."""
    xs, ys = [], []
    for i in index:
        x = split.load(int(i))
        if x is not None:
            xs.append(x)
            ys.append(split.labels[i])
    if not xs:
        raise DataError(f"none of the images in {split.root} could be read; give a folder of readable images")
    return np.stack(xs).astype(np.float32), np.asarray(ys, np.int64)


def images(run: Run, calibration: str | None, validation: str | None, count: int, seed: int = 0):
    """``(calibration images or None, validation images, validation labels or None, notes)``."""
    notes, calib, rest, labelled = [], None, None, False
    if calibration:
        split, labelled = _folder_images(calibration, run)
        order = np.random.default_rng(seed).permutation(len(split))
        calib = _load(split, order[:count])[0]
        rest = (split, order[count:count + VALIDATION_IMAGES]) if len(split) > count else None
        if rest is None and not validation:
            notes.append(f"every image in {calibration} calibrated the quantizer, so validation ran on those same "
                         f"images: pass --validation-data DIR for held-out ones")
            rest = (split, order[:VALIDATION_IMAGES])
    if validation:
        split, labelled = _folder_images(validation, run)
        rest = (split, np.random.default_rng(seed).permutation(len(split))[:VALIDATION_IMAGES])
    if rest is not None:
        x, y = _load(*rest)
        return calib, x, (y if labelled else None), notes
    said = len(run.notes)
    x, y = reference_batches(run, batch_size=8, count=4)  # notes why, when the run's data cannot be read
    return calib, x.reshape(-1, *x.shape[2:]), y.reshape(-1), notes + run.notes[said:]


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def _run_export(out: Path, x: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, float]:
    """(logits of ``x``, median single-image seconds), run by the runner's own code in the export's runtime."""
    runner = runner_module(runners()[Manifest.load(out).runtime])
    with runner_errors(ConfigError):
        predict, batch = runner.predictor(str(out), None, threads)
        logits = np.concatenate([np.asarray(predict(x[i:i + batch])) for i in range(0, len(x), batch)])
        one = x[:1]
        for _ in range(3):  # warm-up: the first calls allocate
            predict(one)
        seconds = []
        for _ in range(LATENCY_RUNS):
            t0 = time.perf_counter()
            predict(one)
            seconds.append(time.perf_counter() - t0)
    return logits, float(np.median(seconds))


def decided(reference: np.ndarray) -> np.ndarray:
    """The images fp32 decides: its two most probable classes are at least ``NEAR_TIE`` apart."""
    p = np.sort(np.exp(runner_eval.log_softmax(reference)), axis=1)
    return p[:, -1] - p[:, -2] >= NEAR_TIE


def checks(reference: np.ndarray, got: np.ndarray, labels: np.ndarray | None, quantize: str | None) -> list[Check]:
    """fp32: logits against PyTorch's. int8: top-1 agreement with fp32 on the images fp32 decides (a nearly tied
    image may turn either way under any rounding), with the agreement on every image and the accuracy change
    (labelled images) beside it."""
    if not quantize:
        return [compare_logits(reference, got, f"inference logits against PyTorch, {len(got)} images")]
    same = reference.argmax(1) == got.argmax(1)
    sure = decided(reference)
    agree = float(np.mean(same[sure])) if sure.any() else 1.0
    if labels is not None:
        fp32, q = (float(np.mean(z.argmax(1) == labels)) for z in (reference, got))
        accuracy = f"accuracy {fp32:.2%} (fp32) -> {q:.2%} (int8), {100 * (q - fp32):+.2f} points"
    else:
        accuracy = "unlabelled images (no class folders of the model's classes): accuracy not measured"
    return [Check(f"int8 top-1 agreement with fp32 on the {int(sure.sum())} of {len(got)} images fp32 decides "
                  f"(top two {NEAR_TIE} or more apart; 1 - agreement)", agree >= INT8_AGREEMENT, 1 - agree,
                  1 - INT8_AGREEMENT,
                  f"on every image {float(np.mean(same)):.2%}; {accuracy}; largest logit difference "
                  f"{float(np.max(np.abs(reference - got))):.3g}")]


def export_inference(exporter, run: Run, out: Path, quantize: str | None = None, calibration: str | None = None,
                     validation: str | None = None, validate: bool = True, calibration_images: int = CALIBRATION_IMAGES,
                     threads: int | None = None, log: Callable[[str], None] | None = None):
    """Write an inference export of ``run`` in ``exporter``'s format at ``out`` (see the module docstring); returns
    an :class:`.base.Artifacts`. The directory is complete or absent: it is built beside ``out`` and renamed into place."""
    log = log or (lambda message: None)
    if quantize not in (None, *QUANTIZATIONS):
        raise ConfigError(f"--quantize {quantize!r} is not offered; choose {', '.join(QUANTIZATIONS)} (default: fp32)")
    if quantize and not calibration:
        raise ConfigError(f"--quantize {quantize} calibrates on your images: add --calibration DIR (a folder of "
                          f"images like those the app will see, e.g. the training folder)")
    if calibration_images < 1:
        raise ConfigError(f"--calibration-images must be at least 1, got {calibration_images}")
    model = plain_model(run)
    calib, x, labels, notes = images(run, calibration, validation, calibration_images)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        file = exporter.lower_inference(model, run.resolution, work, quantize, calib, log)
        (work / LABELS).write_text("".join(f"{name}\n" for name in run.class_names))
        size = (work / file).stat().st_size
        fields = {"kind": "inference", "format": exporter.name, "runtime": exporter.inference_runtime, "file": file,
                  "model": run.model_name, "policy": str(run.policy), "class_names": run.class_names,
                  "labels": LABELS, "preprocessing": preprocessing(run.resolution),
                  "input": {"name": "images", "shape": [None, 3, run.resolution, run.resolution], "dtype": "float32",
                            "layout": "NCHW"},
                  "output": {"name": "logits", "shape": [None, len(run.class_names)], "dtype": "float32"},
                  "quantization": ({"type": quantize, "calibration": str(Path(calibration).resolve()),
                                    "calibration_images": len(calib)} if quantize else None),
                  "size_bytes": size, "source_run": str(Path(run.path).resolve()) if run.path else None,
                  "notes": [*run.notes, *(n for n in notes if n not in run.notes)], "validation": {"validated": False}}
        write_manifest(work, fields)  # the runner reads it
        logits, latency = _run_export(work, x, threads)
        fields["latency"] = {"median_single_image_ms": round(1000 * latency, 3), "threads": threads or os.cpu_count(),
                             "runs": LATENCY_RUNS}
        validation_result = None
        if validate:
            validation_result = Validation(checks(torch_logits(model, x), logits, labels, quantize),
                                           extra={"images": len(x)})
            fields["validation"] = {**validation_result.as_dict(), "images": len(x)}
        manifest = write_manifest(work, fields)
        log(f"exported {run.model_name} for inference ({quantize or 'fp32'}) in {time.perf_counter() - t0:.1f}s: "
            f"{size / 2**20:.2f} MiB, {1000 * latency:.2f} ms per image ({fields['latency']['threads']} threads)")
        if out.exists():
            if not (out / MANIFEST).is_file() and any(out.iterdir()):
                raise ExportError(f"{out} exists and is not an export: choose another --out")
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Artifacts(exporter.name, out, manifest, validation_result, fields["notes"])
