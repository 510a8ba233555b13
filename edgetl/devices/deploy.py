"""Deploy an exported model to a device, train it there, and bring the results back.

    result = deploy("artifacts/onnx", "ssh://pi@raspberrypi.local", steps=200, data="./shard", out="deploy/pi")
    result = deploy("artifacts/tflite", "ssh://pi@cam-1", device_data="/home/pi/captures", epochs=5, val_split=0.1)
    result = deploy(..., events=MyEvents())        # progress and messages, as DeployEvents callbacks (silent by default)
    result = deploy("artifacts/tflite", "ssh://pi@cam-1", device_data="/home/pi/captures", epochs=5,
                    eval_data="/home/pi/test")    # accuracy on the device before and after training
    result = deploy("artifacts/tflite", "ssh://pi@cam-1", predict="/home/pi/new")     # classified there, no training
    result = deploy("artifacts/tflite", "ssh://pi@cam-1", evaluate="/home/pi/test")   # accuracy computed there

Data: ``data`` is on the laptop (an ImageFolder, packed into a uint8 shard and pushed, or a ``.npz``);
``device_data`` is an ImageFolder already on the device, which the runner decodes and streams there: the
images never leave it, and only metrics, weights and the checkpoint come back (the report says so).

Steps: probe the device; check that its runtime is there; push the bundle (atomic, resumable); measure the
runner's baseline there and check that the predicted training memory (:mod:`.memory`), plus a margin, fits the
available RAM (refusing with the fix, unless ``force``); optionally repeat the export's parity check there
(``verify``); run the runner with live progress; pull back the metrics, trained weights and checkpoint; write
``report.json`` (the predicted memory beside the measured peak, the run and the export the weights came from, and
a copy of the export's manifest: ``edgetl evaluate``, ``predict`` and ``export --inference`` take the result
directory) and plot the loss curve. ``eval_data`` (an ImageFolder on the device) is evaluated there before and
after training.

Using what was learned, with no training: ``predict`` classifies images on the device and ``evaluate`` computes
accuracy and the confusion matrix there, with ``weights``: ``latest`` (the newest finished training of this export
on the device, else the export's own), ``export``, or a deploy result / ``params.npz`` here (pushed). Only the
predictions or the evaluation come back, never the images. It draws nothing: what a person sees comes through
:class:`DeployEvents` (the CLI's are rich progress bars and a table).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ..data import BUILTIN
from ..errors import DataError
from ..exporters import Artifacts, ExportError
from ..exporters.manifest import MANIFEST, Manifest
from ..formats import FORMATS
from ..io import absolute, atomic_write_json, file_sha256
from ..limits import check_numbers
from ..sources import DEPLOY_REPORT as REPORT
from ..sources import DEVICE_WEIGHTS
from .base import DeviceError, DeviceInfo, RunnerFailed, RuntimeMissing
from .bundle import make_bundle, push_bundle
from .memory import check_memory
from .result import DeployResult, plot, trained, used
from .runner_cli import Epoch, Eval, Images, Note, Resume, RunnerOptions, Step, last_json, parse_line, runner_command, use_args
from .runtime_packages import check_runtime
from .transports import connect

#: a run's results on the device; ``Format.baked``: the model a format's runner bakes with the trained weights
PULLED = ("metrics.json", "params.npz", "checkpoint", "checkpoint.npz", *(f.baked for f in FORMATS.values() if f.baked),
          "predictions.json", "evaluation.json")


class DeployEvents:
    """What a deploy tells as it goes; override any (the default says nothing)."""

    def message(self, text: str) -> None: ...

    def device(self, info: DeviceInfo) -> None: ...

    def push(self, done: int, total: int) -> None: ...

    def verified(self, checks: list[dict]) -> None: ...

    def step(self, step: int, steps: int, loss: str) -> None: ...

    def images(self, done: int, total: int) -> None:
        """Images classified or evaluated on the device so far (``predict`` and ``evaluate``)."""

    def epoch(self, record: dict) -> None:
        """After each epoch on the device: ``epoch``, ``epochs`` (None in --steps runs), ``train_loss``, and with a
        validation split ``val_acc``, ``val_loss``, ``val_images``; ``skipped_unreadable``."""


def check_pillow(info: DeviceInfo, device_uri: str) -> None:
    """Decoding images on the device needs Pillow beside the runtime."""
    if not any(k.lower() == "pillow" for k in info.runtimes):
        raise RuntimeMissing(f"{info.uri} lacks Pillow for decoding images on the device: run "
                             f"`edgetl devices setup {device_uri}`")


def deploy(artifacts: Artifacts | str | Path, device_uri: str, steps: int | None = None, data: str | Path | None = None,
           out: str | Path | None = None, batch_size: int | None = None, lr: float | None = None, verify: bool = False,
           force: bool = False, timeout: float = 3600, events: DeployEvents | None = None,
           device_data: str | None = None, epochs: int | None = None, val_split: float | None = None,
           augment: str = "none", seed: int = 0, shard_size: int | None = None, prefix_batch: int | str | None = None,
           cache_features: bool = False, cache_dtype: str = "float32", eval_data: str | None = None,
           schedule: str | None = None, predict: str | list[str] | None = None, evaluate: str | None = None,
           weights: str | Path = "latest", top_k: int = 3) -> DeployResult:
    """Train ``artifacts`` (an :class:`~edgetl.exporters.Artifacts` or its directory) on the device for ``epochs``
    epochs or ``steps`` steps (default 50 steps), on ``data`` pushed from the laptop or ``device_data`` on the device
    (``val_split`` of a flat folder held out and evaluated each epoch; ``augment`` none or flip; ``seed`` shuffles);
    ``prefix_batch`` (a number or auto) runs the frozen prefix in micro-batches, ``cache_features`` computes its
    features once and reuses them in later epochs (``cache_dtype`` float32 or float16); ``eval_data`` (on the device)
    is evaluated before and after; ``schedule`` (cosine or constant) overrides the export's. With ``predict`` or
    ``evaluate`` (paths on the device) nothing trains: see the module docstring. Returns a :class:`.result.DeployResult`
    (its ``to_dict()`` is the result directory's ``report.json``)."""
    check_numbers(steps=steps, epochs=epochs, val_split=val_split, seed=seed, shard_size=shard_size,
                  batch_size=batch_size, lr=lr, timeout=timeout, top_k=top_k,
                  prefix_batch=prefix_batch if prefix_batch != "auto" else None)
    events = events or DeployEvents()
    use = _use_mode(predict, evaluate, steps, epochs, data, device_data, eval_data)
    if data is not None and device_data:
        raise DataError("give --data (images on this machine, pushed) or --device-data (images on the device), not both")
    if steps is not None and epochs is not None:
        raise DataError("give --epochs or --steps, not both")
    if cache_features and augment != "none":
        raise DataError(f"--cache-features needs fixed inputs, but --augment {augment} changes every image each epoch: "
                        f"use --augment none with the cache, or drop --cache-features")
    steps = 50 if steps is None and epochs is None else steps
    artifacts = Artifacts.of(artifacts)
    root = artifacts.out.resolve()  # once, here: the runner works in its bundle on the device
    data = absolute(data, BUILTIN)
    bundle = make_bundle(artifacts, data, shard_size=shard_size, seed=seed, val_split=val_split)
    manifest = bundle.manifest
    fixed = manifest.batch_size  # a TFLite model trains at the batch size it was exported with
    if fixed and batch_size not in (None, fixed):
        raise ExportError(f"{root} trains at batch {fixed}, fixed at export; drop --batch-size, or export "
                          f"again with --batch-size {batch_size}")
    batch_size = batch_size or fixed or 8
    # the runner's options, made once: the memory gate, the run and the report read them from here
    options = RunnerOptions(epochs=epochs, steps=steps, batch_size=batch_size, seed=seed, augment=augment,
                            val_split=val_split, schedule=schedule, lr=lr, prefix_batch=prefix_batch,
                            cache_features=cache_features, cache_dtype=cache_dtype)
    out = Path(out or f"deploy/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    local_weights = _local_weights(absolute(weights, "latest", "export"), manifest) if use else None
    with connect(device_uri) as device:
        info = device.probe()
        events.device(info)
        # every device-side path as its user means it (from the home directory), before the runner, working in
        # its bundle, sees it
        device_data, eval_data, evaluate = (device.resolve(p) if p else p for p in (device_data, eval_data, evaluate))
        if predict:
            predict = [device.resolve(str(p)) for p in ([predict] if isinstance(predict, (str, Path)) else predict)]
        check_runtime(info, manifest.runtime)
        if device_data or eval_data or use:
            check_pillow(info, device_uri)
        sent = [0]

        def on_bytes(n: int) -> None:
            sent[0] += n
            events.push(sent[0], bundle.size)

        remote = push_bundle(device, bundle, on_bytes=on_bytes, log=events.message, free_bytes=info.free_bytes)
        events.push(bundle.size, bundle.size)
        runner = runner_command(remote, info.python_bin or "python3", bundle.runner)
        # the runner's baseline measured there, plus the step and the results: refused before training when it
        # does not fit (the bundle stays, so the same deploy with --force or a smaller batch sends nothing again)
        memory = None if use else check_memory(device, runner + options.prefix_line(), manifest, batch_size, info, bundle.root,
                                                force, events.message)  # predicting holds no training state
        verified = None
        if verify:
            checked = device.run(f"{runner} --verify", timeout=timeout)
            verified = (last_json(checked.stdout) or {}).get("verify")
            events.verified(verified or [])
            if checked.returncode != 0 or not verified:
                failed = "; ".join(f"{c['name']} differs by {c['max_diff']:.3g} (tolerance {c['tolerance']:.3g})"
                                   for c in verified or [] if not c["ok"])
                raise RunnerFailed(f"the parity check failed on {device_uri}: {failed or checked.tail()}. The device's "
                                   f"runtime computes differently from the export machine; check its version")
        if use:
            args = _use_args(device, str(weights), local_weights, predict, evaluate, top_k)
        else:
            # the device-side paths as resolved there, and the shard as the bundle names it
            options = replace(options, data=bundle.shard, device_data=device_data, eval_data=eval_data)
            args = options.line()
        # the same bundle and settings train in the same directory, so running the same deploy again after an
        # interruption continues from the device's last checkpoint
        run_dir = f"runs/{hashlib.sha256((bundle.id + args).encode()).hexdigest()[:12]}"
        t0 = time.perf_counter()
        _run_runner(device, runner + args + f" --out {run_dir}", device_uri, timeout, events)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for name in PULLED:
            if device.exists(f"{remote}/{run_dir}/{name}"):
                device.pull_file(f"{remote}/{run_dir}/{name}", partial / name)
    shutil.copy2(root / MANIFEST, partial / MANIFEST)  # the export's: a result is judged by it
    origin = {"device": info.as_dict(), "bundle": bundle.id, "remote": remote, "run": run_dir,
              "model": manifest.model, "policy": manifest.policy, "format": manifest.format,
              "artifacts": str(root), "source_run": manifest.source_run}
    if use:
        result = used(origin, partial, use, local_weights, time.perf_counter() - t0)
    else:
        result = trained(origin, partial, bundle, device_data, batch_size, memory, options.augment, options.seed,
                         verified, time.perf_counter() - t0)
    if device_data or use:
        result.images_left_device = False
        result.note = ("the images stayed on the device: they were decoded there, and only "
                       + ("the predictions" if use == "predict" else "the evaluation" if use else
                          "metrics, trained weights and the checkpoint") + " came back")
    atomic_write_json(result.to_dict(), partial / REPORT)
    plot(result, partial)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    result.out = out
    return result


def _use_mode(predict, evaluate, steps, epochs, data, device_data, eval_data) -> str | None:
    """``predict``, ``evaluate`` or None (a training deploy); refuses what cannot go together."""
    if predict and evaluate:
        raise DataError("give --predict or --evaluate, not both")
    use = "predict" if predict else "evaluate" if evaluate else None
    given = [flag for flag, value in (("--steps", steps), ("--epochs", epochs), ("--data", data),
                                      ("--device-data", device_data), ("--eval-data", eval_data)) if value is not None]
    if use and given:
        raise DataError(f"--{use} uses what a device learned and trains nothing: drop {', '.join(given)} (train first "
                        f"with a deploy of its own, then --{use})")
    return use


def _local_weights(weights: str | Path, manifest: Manifest) -> Path | None:
    """The ``params.npz`` to push for ``--weights`` (a deploy result or a file here), or None for the choices the
    device makes itself (``latest``, ``export``)."""
    if str(weights) in ("latest", "export"):
        return None
    path = Path(weights)
    if path.is_dir():
        report = path / REPORT
        if not (path / DEVICE_WEIGHTS).is_file():
            raise DataError(f"--weights {path}: no {DEVICE_WEIGHTS} there; give the result directory of a training "
                            f"deploy, a params.npz, latest or export")
        if report.is_file() and json.loads(report.read_text()).get("model") not in (None, manifest.model):
            raise DataError(f"--weights {path} were trained for another model than {manifest.model}; give weights "
                            f"trained from this export")
        path = path / DEVICE_WEIGHTS
    if not path.is_file():
        raise DataError(f"--weights {weights}: no such file or deploy result; give a deploy result, a params.npz, "
                        f"latest or export")
    return path


def _use_args(device, weights: str, local_weights: Path | None, predict, evaluate, top_k: int) -> str:
    """The runner's arguments for ``--predict`` / ``--evaluate``, the weights pushed first when they are here."""
    if local_weights is not None:
        digest = file_sha256(local_weights)
        weights = f"{device.workdir}/weights/{digest[:16]}.npz"
        if device.sha256([weights]).get(weights) != digest:
            device.makedirs(f"{device.workdir}/weights")
            device.push_file(local_weights, weights + ".part")
            device.rename(weights + ".part", weights)
    return use_args(predict, evaluate, top_k, weights)


def _run_runner(device, command: str, device_uri: str, timeout: float, events: DeployEvents) -> None:
    """Run the runner with its progress turned into events; a refusal or a crash becomes :class:`RunnerFailed`."""

    def on_line(line: str) -> None:
        event = parse_line(line)
        if isinstance(event, Step):
            events.step(event.step, event.steps, event.loss)
        elif isinstance(event, Images):
            events.images(event.done, event.total)
        elif isinstance(event, Epoch):
            events.epoch(event.record)
        elif isinstance(event, Eval):
            events.message(f"accuracy on the device's evaluation images {event.when} training: {event.top1:.1%} "
                           f"({event.images} images)")
        elif isinstance(event, Resume):
            events.message(f"resuming the interrupted run on the device: epoch {event.epoch} and {event.steps} steps "
                           f"were done")
        elif isinstance(event, Note):
            events.message(event.text)

    result = device.run(command, timeout=timeout, on_line=on_line)
    refused = [line[len("error: "):] for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.returncode == 2 and refused:  # the runner refused its input, in one line with the fix
        raise RunnerFailed(f"the runner failed on {device_uri}: {refused[-1]}")
    if result.returncode != 0:
        raise RunnerFailed(f"the runner failed on {device_uri} (exit {result.returncode}); its last output:\n"
                           f"{result.tail()}")


__all__ = ["DeployEvents", "DeployResult", "DeviceError", "deploy"]
