"""The training memory a device runner will need, predicted before it trains: deploy's gate and report, and the
benchmark's prediction column beside each measured peak.

    memory = predict(manifest, batch_size, baseline_bytes, "artifacts/onnx")   # a MemoryPrediction
    memory.total_bytes, memory.gate_bytes                                      # the gate adds MARGIN
    memory = check_memory(device, runner_command, manifest, 8, info, bundle_dir, force=False, ...)   # deploy's gate

What the runner's process really holds, in parts:

- ``baseline``: the runner with its runtime and every model loaded, before a step (``runner --baseline``),
  measured on the device itself, so the runtime's own platform and version (its Python, numpy, the runtime's
  libraries, XNNPACK's packed weights, TFLite's planned arena) count as they are there;
- ``step``: the profiler's analytic training memory of one step at the batch (the manifest's ``memory``):
  weights, gradients, optimizer state, saved activations and transient buffers;
- ``state``: the trained tensors and optimizer state (the manifest's ``state_bytes``), read back whole when the
  results are written, while much of what the steps used is still held by the process's allocator;
- ``bake``: ONNX Runtime's results also bake the inference model with the trained weights: the model loaded,
  its tensors replaced and serialized hold about ``BAKE_FACTOR`` times ``inference.onnx`` (measured).

The total is ``baseline + state + max(step, bake)``: the steps and the writing of the results do not overlap.
Measured on 27 benchmark cells (MobileNetV2, V3-Small, V3-Large; full, ft:5, mobiletl:5; 64 to 224 px; ONNX Runtime
and TFLite) it lies between 4 % below and 21 % above the measured peak; the gate adds ``MARGIN``. ``edgetl
benchmark`` (and ``bench/runners.py``) prints the prediction beside each runner's measured peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..exporters.manifest import Manifest
from ..formats import by_runtime
from .base import DeviceError, DeviceInfo, MemoryRefused
from .runner_cli import last_json

#: what the gate adds to the prediction before comparing it with the device's available memory
MARGIN = 0.15
#: what baking the file a format's results copy (``Format.baked``: ONNX Runtime writes the inference model with the
#: trained weights) holds, in multiples of its size: measured 7.8 to 8.3 on MobileNetV2, V3-Small and V3-Large
BAKE_FACTOR = 8


@dataclass
class MemoryPrediction:
    baseline_bytes: int  # measured: runtime and models loaded
    step_bytes: int  # analytic: one training step at the batch
    state_bytes: int  # the trained tensors and optimizer state, read back for the results
    bake_bytes: int = 0  # baking the inference model with the results (ONNX Runtime)

    @property
    def total_bytes(self) -> int:
        return self.baseline_bytes + self.state_bytes + max(self.step_bytes, self.bake_bytes)

    @property
    def gate_bytes(self) -> int:
        return int(self.total_bytes * (1 + MARGIN))

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "margin": MARGIN, "gate_bytes": self.gate_bytes}


def predict(manifest: Manifest, batch_size: int, baseline_bytes: int, artifacts: str | Path) -> MemoryPrediction:
    """The prediction for training the export in ``artifacts`` at ``batch_size`` where the runner's measured baseline
    is ``baseline_bytes``."""
    memory = manifest.predicted_memory()
    step, state = memory.bytes_at(batch_size), memory.state_bytes
    fmt = by_runtime(manifest.runtime)
    baked = fmt.baked if fmt else None
    bake = (Path(artifacts) / baked).stat().st_size if baked and (Path(artifacts) / baked).is_file() else 0
    return MemoryPrediction(int(baseline_bytes), step, state, BAKE_FACTOR * bake)


def measure_baseline(device, runner: str, timeout: float = 600) -> int:
    """``runner --baseline`` on the device: its resident memory with the runtime and every model loaded."""
    result = device.run(f"{runner} --baseline", timeout=timeout)
    try:
        return int((last_json(result.stdout) or {})["baseline_rss_bytes"])
    except (ValueError, KeyError, TypeError):
        raise DeviceError(f"the runner did not report its baseline memory on {device.uri} (exit {result.returncode}): "
                          f"{result.tail(5)}") from None


def check_memory(device, runner: str, manifest: Manifest, batch_size: int, info: DeviceInfo, artifacts: str | Path,
                 force: bool = False, warn=lambda message: None) -> MemoryPrediction:
    """Measure the runner's baseline on the device, predict the run's memory, and refuse (:class:`MemoryRefused`)
    when the prediction plus ``MARGIN`` exceeds the device's available memory, unless ``force`` (then ``warn``)."""
    memory = predict(manifest, batch_size, measure_baseline(device, runner), artifacts)
    available = info.mem_available_bytes
    if available and memory.gate_bytes > available:
        message = (f"training {manifest.model} {manifest.policy} at batch {batch_size} needs about "
                   f"{memory.total_bytes / 2**20:,.0f} MiB ({memory.baseline_bytes / 2**20:,.0f} MiB the runtime and "
                   f"models, measured there; {memory.step_bytes / 2**20:,.0f} MiB a step; "
                   f"{(memory.state_bytes + memory.bake_bytes) / 2**20:,.0f} MiB the results), "
                   f"{memory.gate_bytes / 2**20:,.0f} MiB with "
                   f"the {MARGIN:.0%} margin, but {info.uri} has {available / 2**20:,.0f} MiB available: lower "
                   f"--batch-size, export with a smaller K (`edgetl profile --budget` finds what fits), or pass "
                   f"--force to try anyway")
        if not force:
            raise MemoryRefused(message)
        warn(f"warning: {message}")
    return memory
