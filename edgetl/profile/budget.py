"""Fit training into a memory budget: which policies fit, the largest K, the largest batch size.

    budget = parse_size("64MiB")                   # or a device profile: DEVICE_PROFILES["rpi4-2gb"]
    fit = fit_policies("mobilenet_v2", budget, batch=8, resolution=224)
    fit.fits                                       # policy -> (predicted bytes, fits?)
    fit.largest_k                                  # largest K of mobiletl:K that fits (None if none)
    largest_batch("mobilenet_v2", "mobiletl:5", budget, resolution=224)
    fit = fit_policies(..., prefix_batch="auto")   # the frozen prefix streamed: fit.prefix_batch[policy]

The prediction is the analytic training memory of :mod:`.analytic` (weights, gradients, optimizer
state, activations saved for backward, the largest layer's working set). It leaves out the runtime
itself, which the device profiles already subtract from the device's RAM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..limits import check_numbers
from ..models import create_model, inverted_residual_blocks
from .analytic import ModelProfile, analyze

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    usable_bytes: int  # what a training process can really use: RAM less OS, services and the runtime


_MIB = 1024**2
#: usable memory: total RAM less the OS and desktop-free services (~150-300 MiB on Raspberry Pi OS
#: Lite), less a Python + runtime baseline (~150 MiB for onnxruntime / LiteRT), with headroom; Android
#: kills background apps and caps a foreground app's heap far below its RAM.
DEVICE_PROFILES = {p.name: p for p in (
    DeviceProfile("rpi4-1gb", "Raspberry Pi 4, 1 GB", 550 * _MIB),
    DeviceProfile("rpi4-2gb", "Raspberry Pi 4, 2 GB", 1450 * _MIB),
    DeviceProfile("rpi4-4gb", "Raspberry Pi 4, 4 GB", 3300 * _MIB),
    DeviceProfile("rpi4-8gb", "Raspberry Pi 4, 8 GB", 7000 * _MIB),
    DeviceProfile("rpi5-4gb", "Raspberry Pi 5, 4 GB", 3300 * _MIB),
    DeviceProfile("rpi5-8gb", "Raspberry Pi 5, 8 GB", 7000 * _MIB),
    DeviceProfile("android-midrange", "mid-range Android phone (6 GB RAM), foreground app", 1024 * _MIB),
    DeviceProfile("android-lowend", "low-end Android phone (3 GB RAM), foreground app", 384 * _MIB),
)}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``64MiB``, ``1.5GB`` or ``512M`` (K/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(f"cannot read the size {text!r}; write it like 64MiB, 1.5GB or 512M")
    return int(float(m.group(1)) * _UNITS[unit])


def device_profile(name: str) -> DeviceProfile:
    try:
        return DEVICE_PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown device profile {name!r}; choose one of: {', '.join(DEVICE_PROFILES)}") from None


@dataclass
class Fit:
    budget: int
    batch: int
    #: policy -> predicted training memory in bytes
    predicted: dict[str, int] = field(default_factory=dict)
    largest_k: int | None = None
    #: policy -> the frozen prefix's micro-batch the prediction assumes (None: no prefix, or not streamed)
    prefix_batch: dict[str, int | None] = field(default_factory=dict)

    def fits(self, policy: str) -> bool:
        return self.predicted[policy] <= self.budget


def _memory(prof: ModelProfile, batch: int, optimizer: str, prefix_batch: int | str | None = None) -> int:
    return int(prof.totals(batch, optimizer, prefix_batch)["training_memory_bytes"])


def fit_policies(model: str, budget: int, batch: int, resolution: int, optimizer: str = "sgd",
                 policies: list[str] | None = None, num_classes: int = 1000,
                 prefix_batch: int | str | None = None) -> Fit:
    """Predicted memory of each policy and the largest K of ``mobiletl:K`` within ``budget``; ``prefix_batch``
    ("auto", or a number) streams the frozen prefix, and ``auto`` chooses the micro-batch per policy."""
    check_numbers(batch_size=batch, resolution=resolution, num_classes=num_classes)
    n_blocks = len(inverted_residual_blocks(create_model(model)))
    policies = policies or ["full", "bn+last", "bias", "last", "ft:5", "mobiletl:5"]
    fit = Fit(budget, batch)

    def predict(spec: str) -> None:
        prof = analyze(model, spec, resolution, num_classes)
        micro = prof.auto_prefix_batch(batch) if prefix_batch == "auto" else (prefix_batch if prof.split else None)
        fit.prefix_batch[spec] = micro
        fit.predicted[spec] = _memory(prof, batch, optimizer, micro)

    for p in policies:
        predict(p)
    for k in range(n_blocks, -1, -1):  # memory grows with K: the first that fits from the top is the largest
        spec = f"mobiletl:{k}"
        if spec not in fit.predicted:
            predict(spec)
        if fit.fits(spec):
            fit.largest_k = k
            break
    return fit


def largest_batch(model: str, policy: str, budget: int, resolution: int, optimizer: str = "sgd",
                  limit: int = 1 << 16, num_classes: int = 1000, prefix_batch: int | str | None = None) -> int:
    """The largest batch size whose predicted training memory fits ``budget`` (0 if none does)."""
    prof = analyze(model, policy, resolution, num_classes)
    lo, hi = 0, limit
    while lo < hi:  # memory is increasing in the batch size
        mid = (lo + hi + 1) // 2
        micro = min(prefix_batch, mid) if isinstance(prefix_batch, int) else prefix_batch
        if _memory(prof, mid, optimizer, micro) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
