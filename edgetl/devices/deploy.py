"""Deploy an exported model to a device, train it there, and bring the results back.

    report = deploy("artifacts/onnx", "ssh://pi@raspberrypi.local", steps=200, data="./shard", out="deploy/pi")
    report = deploy(..., events=MyEvents())        # progress and messages, as DeployEvents callbacks (silent by default)

Steps: probe the device; check that its runtime is there and that the predicted training memory fits its
available RAM (refusing with the fix, unless ``force``); push the bundle (atomic, resumable); optionally
repeat the export's parity check there (``verify``); run the runner with live progress; pull back the
metrics, trained weights and checkpoint; write ``report.json`` and plot the loss curve. It draws nothing:
what a person sees comes through :class:`DeployEvents` (the CLI's are rich progress bars and a table).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from ..exporters import ExportError
from ..io import atomic_write_json
from . import connect
from .base import DeviceError, DeviceInfo, MemoryRefused, RunnerFailed
from .bundle import make_bundle, push_bundle
from .runtimes import check_runtime

#: resident memory of the runner itself before training (Python, numpy, the runtime), measured on x86_64
RUNTIME_BASELINE_BYTES = {"onnxruntime-training": 120 * 2**20, "ai-edge-litert": 60 * 2**20}
PULLED = ("metrics.json", "params.npz", "checkpoint", "checkpoint.npz", "inference.onnx")


class DeployEvents:
    """What a deploy tells as it goes; override any (the default says nothing)."""

    def message(self, text: str) -> None: ...

    def device(self, info: DeviceInfo) -> None: ...

    def push(self, done: int, total: int) -> None: ...

    def verified(self, checks: list[dict]) -> None: ...

    def step(self, step: int, steps: int, loss: str) -> None: ...


def predicted_memory(manifest: dict, batch_size: int) -> int:
    """Training memory on the device at ``batch_size``: the export's analytic figure plus the runtime's own."""
    memory = manifest.get("memory")
    if memory is None:  # an export made before manifests carried the figure: compute it as the export would
        from ..optim import OptimizerSpec
        from ..profile.analytic import analyze

        prof = analyze(manifest["model"], manifest["policy"], manifest["input"]["shape"][-1],
                       len(manifest["class_names"]))
        need = prof.totals(batch_size, OptimizerSpec.from_dict(manifest["optimizer"]))["training_memory_bytes"]
    else:
        need = memory["fixed_bytes"] + memory["per_sample_bytes"] * batch_size
    return int(need) + RUNTIME_BASELINE_BYTES[manifest["runtime"]]


def deploy(artifacts: str | Path, device_uri: str, steps: int = 50, data: str | Path | None = None,
           out: str | Path | None = None, batch_size: int | None = None, lr: float | None = None, verify: bool = False,
           force: bool = False, timeout: float = 3600, events: DeployEvents | None = None) -> dict:
    events = events or DeployEvents()
    bundle = make_bundle(artifacts, data)
    manifest = bundle.manifest
    fixed = manifest["input"]["shape"][0]  # a TFLite model trains at the batch size it was exported with
    if fixed and batch_size not in (None, fixed):
        raise ExportError(f"{artifacts} trains at batch {fixed}, fixed at export; drop --batch-size, or export "
                          f"again with --batch-size {batch_size}")
    batch_size = batch_size or fixed or 8
    out = Path(out or f"deploy/{time.strftime('%Y%m%d-%H%M%S')}")
    with connect(device_uri) as device:
        info = device.probe()
        events.device(info)
        check_runtime(info, manifest["runtime"])
        need = predicted_memory(manifest, batch_size)
        if info.mem_available_bytes and need > info.mem_available_bytes:
            message = (f"training {manifest['model']} {manifest['policy']} at batch {batch_size} needs about "
                       f"{need / 2**20:,.0f} MiB but {info.uri} has {info.mem_available_bytes / 2**20:,.0f} MiB "
                       f"available: lower --batch-size, export with a smaller K (`edgetl profile --budget` finds "
                       f"what fits), or pass --force to try anyway")
            if not force:
                raise MemoryRefused(message)
            events.message(f"warning: {message}")
        sent = [0]

        def on_bytes(n: int) -> None:
            sent[0] += n
            events.push(sent[0], bundle.size)

        remote = push_bundle(device, bundle, on_bytes=on_bytes, log=events.message, free_bytes=info.free_bytes)
        events.push(bundle.size, bundle.size)
        python = shlex.quote(info.python_bin or "python3")
        runner = f"cd {shlex.quote(remote)} && {python} {bundle.runner} --artifacts ."
        verified = None
        if verify:
            result = device.run(f"{runner} --verify", timeout=timeout)
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            verified = json.loads(lines[-1])["verify"] if lines else None
            events.verified(verified or [])
            if result.returncode != 0 or not verified:
                failed = "; ".join(f"{c['name']} differs by {c['max_diff']:.3g} (tolerance {c['tolerance']:.3g})"
                                   for c in verified or [] if not c["ok"])
                raise RunnerFailed(f"the parity check failed on {device_uri}: {failed or result.tail()}. The device's "
                                   f"runtime computes differently from the export machine; check its version")
        run_dir = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
        args = f" --steps {steps} --batch-size {batch_size} --out {run_dir}"
        args += f" --data {bundle.shard}" if bundle.shard else ""
        args += f" --lr {lr}" if lr is not None else ""
        t0 = time.perf_counter()

        def on_line(line: str) -> None:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "step" and parts[2] == "loss":
                events.step(int(parts[1].split("/")[0]), steps, parts[3])

        result = device.run(runner + args, timeout=timeout, on_line=on_line)
        if result.returncode != 0:
            raise RunnerFailed(f"the runner failed on {device_uri} (exit {result.returncode}); its last output:\n"
                               f"{result.tail()}")
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for name in PULLED:
            if device.exists(f"{remote}/{run_dir}/{name}"):
                device.pull_file(f"{remote}/{run_dir}/{name}", partial / name)
    metrics = json.loads((partial / "metrics.json").read_text())
    report = {"device": info.as_dict(), "bundle": bundle.id, "remote": remote, "run": run_dir,
              "model": manifest["model"], "policy": manifest["policy"], "format": manifest["format"],
              "steps": steps, "batch_size": batch_size, "predicted_memory_bytes": need,
              "losses": metrics["losses"], "median_step_seconds": metrics["median_step_seconds"],
              "peak_rss_bytes": metrics["peak_rss_bytes"], "wall_seconds": time.perf_counter() - t0,
              "verify": verified, "files": sorted(p.name for p in partial.iterdir())}
    atomic_write_json(report, partial / "report.json")
    _plot(report, partial / "loss.png")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    report["out"] = str(out)
    return report


def _plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the plot is a nicety: report.json holds the losses
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(report["losses"]) + 1), report["losses"], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{report['model']} {report['policy']} on {report['device']['model'] or report['device']['os']}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["DeployEvents", "DeviceError", "deploy"]
