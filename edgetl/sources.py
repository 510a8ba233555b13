"""Where a trained model comes from: a run, a checkpoint, a deploy result or an export, as one object.

    source = open_source("runs/last")        # or runs/last/checkpoint.pt, deploy/pi, artifacts/tflite
    source.kind, source.class_names, source.preprocessing, source.runtime
    predict, batch = source.predictor()      # (N, 3, R, R) float32 images -> logits, as its runtime computes them
    run = load_run("deploy/pi")              # a Run (PyTorch) with the device's weights loaded: export it again

The kinds:

- ``run``: a run directory (``checkpoint.pt``), and ``checkpoint``: a checkpoint file (``.pt``, e.g. what
  ``edgetl import-weights`` wrote). They run in PyTorch.
- ``deploy``: what ``edgetl deploy --out`` wrote: the weights the device trained (``params.npz``), the report
  naming the run and the export they came from (``report.json``) and the export's manifest. The weights are
  loaded into the run (which must still be here) and run in PyTorch.
- ``export`` and ``inference export``: an export directory (``manifest.json``). It runs in the export's own
  runtime, through the device runner's code, so its numbers are the ones a device computes.

Evaluation (:mod:`edgetl.evaluate`), prediction and inference exports take any of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CHECKPOINT, RunError
from .data import preprocessing
from .errors import DataError, EdgeTLError
from .formats import by_runtime, runners
from .run import Run, device_params
from .runtime import runner_module
from .runtime.runner_common import EVAL_BATCH, RunnerError

if typing.TYPE_CHECKING:
    from .exporters.manifest import Manifest

#: the files of a deploy result (``edgetl deploy --out``) this module reads; the deploy writes them
DEPLOY_REPORT, DEVICE_WEIGHTS, EXPORT_MANIFEST = "report.json", "params.npz", "manifest.json"


class SourceError(EdgeTLError):
    """A model source that is missing, damaged, or cannot do what is asked of it."""


@contextlib.contextmanager
def runner_errors(error=DataError):
    """The runners' one-line refusals (:class:`RunnerError`) as edgetl errors, for the API and the CLI."""
    try:
        yield
    except RunnerError as exc:
        raise error(str(exc)) from None


@dataclass
class ModelSource:
    """A trained model from anywhere, ready to classify images: see the module docstring."""

    path: Path
    kind: str  # run, checkpoint, deploy, export, inference export
    model: str
    policy: str | None
    class_names: list[str]
    preprocessing: dict
    runtime: str  # "pytorch", or the export's runtime
    run: Run | None = None  # the PyTorch kinds
    manifest: Manifest | None = None  # the export kinds (and a deploy result's export)

    @property
    def resolution(self) -> int:
        return int(self.preprocessing["center_crop"])

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "model": self.model, "policy": self.policy,
                "runtime": self.runtime, "classes": len(self.class_names)}

    def predictor(self, threads: int | None = None):
        """``(images -> logits, batch)``: the model as its runtime runs it, and the batch one call takes (the
        last batch of a set is padded to it)."""
        if self.run is not None:
            model = self.run.model.eval()

            @torch.no_grad()
            def predict(images: np.ndarray) -> np.ndarray:
                return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()

            return predict, EVAL_BATCH
        try:
            runner = runner_module(runners()[self.runtime])
        except ImportError as exc:  # the runner module itself needs nothing beyond numpy; be clear anyway
            raise SourceError(f"cannot load the runner of {self.runtime}: {exc}") from None
        with runner_errors(SourceError):
            try:
                return runner.predictor(str(self.path), None, threads)
            except ImportError as exc:
                extra = by_runtime(self.runtime).extra  # what installs it on this computer
                raise SourceError(f"{self.path} is a {self.manifest.format} export and runs in {self.runtime}, "
                                  f"which is not installed here ({exc.name} missing): pip install 'edgetl[{extra}]'"
                                  ) from None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise SourceError(f"{path} is not a readable {what}: it is damaged; make it again") from None


def _read_manifest(path: Path) -> Manifest:
    # imported here: edgetl.exporters, which that import initialises, opens runs through this module
    from .exporters.manifest import Manifest

    try:
        return Manifest.from_dict(_read_json(path / EXPORT_MANIFEST, "manifest"))
    except (KeyError, TypeError, AttributeError):
        raise SourceError(f"{path / EXPORT_MANIFEST} is not an edgetl manifest: it is damaged; export again") from None


def deploy_run_path(result: Path, report: dict) -> Path:
    """The run a deploy result's weights were trained from (the export's ``source_run``), which must be here."""
    named = report.get("source_run")
    if not named:
        raise SourceError(f"the deploy result in {result} does not name the run its export came from (a deploy made "
                          f"before edgetl recorded it): import its weights with `edgetl import-weights RUN "
                          f"{result / DEVICE_WEIGHTS} --out device.pt` and use device.pt")
    path = Path(named)
    if not (path / CHECKPOINT).is_file():
        raise SourceError(f"the deploy result in {result} came from the run {path}, which is not here: copy that run "
                          f"directory back to {path} (edgetl needs its architecture, classes and frozen weights)")
    return path


def load_run(source: str | os.PathLike) -> Run:
    """A :class:`Run` (PyTorch) from a run directory, a checkpoint file, or a deploy result (its run with the
    device's weights loaded)."""
    path = Path(source)
    if path.is_dir() and (path / DEPLOY_REPORT).is_file() and not (path / CHECKPOINT).exists():
        report = _read_json(path / DEPLOY_REPORT, "deploy report")
        if not (path / DEVICE_WEIGHTS).is_file():
            raise SourceError(f"the deploy result in {path} holds no trained weights ({DEVICE_WEIGHTS}): it did not "
                              f"train (a --predict or --evaluate deploy); use the deploy result of a training run")
        run = Run.load(deploy_run_path(path, report))
        state = run.model.state_dict()
        state.update(device_params(path / DEVICE_WEIGHTS, state, run.path))
        run.model.load_state_dict(state)
        run.notes.append(f"weights trained on {report.get('device', {}).get('uri', 'a device')} ({path})")
        return run
    if path.is_dir() and (path / EXPORT_MANIFEST).is_file():
        manifest = _read_manifest(path)
        raise SourceError(f"{path} is an export: it holds no PyTorch model; pass the run it came from "
                          f"({manifest.source_run or 'see its manifest'}), or a deploy result")
    return Run.load(path)


def open_source(source: str | os.PathLike) -> ModelSource:
    """The model at ``source``, whatever its kind (see the module docstring)."""
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path} does not exist: pass a run directory, a checkpoint, a deploy result or an export")
    if path.is_dir() and (path / EXPORT_MANIFEST).is_file() and not (path / DEPLOY_REPORT).is_file():
        manifest = _read_manifest(path)
        runtime = manifest.runtime
        if runtime not in runners():
            raise SourceError(f"{path} is an export for {runtime!r}, which edgetl cannot run; choose an export of: "
                              f"{', '.join(sorted(runners()))}")
        kind = "inference export" if manifest.inference else "export"
        return ModelSource(path, kind, manifest.model, manifest.policy, list(manifest.class_names),
                           manifest.preprocessing, runtime, manifest=manifest)
    try:
        run = load_run(path)
    except RunError as exc:
        raise SourceError(str(exc)) from None
    kind = "deploy" if (path / DEPLOY_REPORT).is_file() else "run" if path.is_dir() else "checkpoint"
    manifest = _read_manifest(path) if kind == "deploy" and (path / EXPORT_MANIFEST).is_file() else None
    return ModelSource(path, kind, run.model_name, str(run.policy), list(run.class_names), preprocessing(run.resolution),
                       "pytorch", run=run, manifest=manifest)
