"""The numeric settings every command takes, and the ranges they must lie in: checked where the API receives them.

    check_numbers(batch_size=8, epochs=0)          # raises ConfigError: --epochs must be a whole number from 1 ...
    check_numbers(epochs=(1, Limit(2, 1000)))      # a command's own range for a setting

A setting is named as the command line spells it (``--batch-size``), since that is what a person typed; the
Python API's keyword is the same word with underscores. ``None`` means "not given" and is never checked. Ranges
refuse what cannot work (a batch of 0, a negative seed, a learning rate of NaN) and what is absurd (a resolution
of a million pixels), before any data is read or process started.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Limit:
    low: float
    high: float
    integer: bool = True
    above: bool = False  # the value must be above ``low``, not equal to it (a learning rate, a fraction)
    below: bool = False  # the value must be below ``high`` (a held-out fraction)
    why: str = ""  # said after the range

    def describe(self) -> str:
        if self.integer:
            text = f"a whole number from {self.low:,} to {self.high:,}"
        else:
            low = f"above {self.low:g}" if self.above else f"at least {self.low:g}"
            high = f"below {self.high:g}" if self.below else f"at most {self.high:g}"
            text = f"a number {low} and {high}"
        return f"{text} ({self.why})" if self.why else text

    def admits(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        return (value > self.low if self.above else value >= self.low) and \
            (value < self.high if self.below else value <= self.high)


SECONDS = Limit(0, 10**7, integer=False, above=True)  # up to about four months
#: the setting's range wherever a command takes it (a command with its own passes a Limit to check_numbers)
LIMITS = {
    "epochs": Limit(1, 100_000),
    "steps": Limit(1, 10**7),
    "local_steps": Limit(1, 10**7),
    "rounds": Limit(1, 100_000),
    "batch_size": Limit(1, 4096),
    "prefix_batch": Limit(1, 4096),
    "resolution": Limit(32, 2048, why="MobileNets downsample 32x"),
    "num_classes": Limit(1, 100_000),
    "lr": Limit(0, 10, integer=False, above=True),
    "server_lr": Limit(0, 10, integer=False, above=True),
    "weight_decay": Limit(0, 10, integer=False),
    "mu": Limit(0, 1000, integer=False),
    "seed": Limit(0, 2**32 - 1),
    "workers": Limit(0, 256),
    "threads": Limit(1, 1024),
    "hardswish_threshold": Limit(-100, 100, integer=False),
    "cache_budget_mb": Limit(0, 10**7, integer=False),
    "val_split": Limit(0, 1, integer=False, above=True, below=True),
    "fraction": Limit(0, 1, integer=False, above=True),
    "shard_size": Limit(1, 10**9),
    "count": Limit(1, 10**9),
    "devices": Limit(1, 10_000),
    "min_devices": Limit(1, 10_000),
    "restarts": Limit(0, 1000),
    "port": Limit(1, 65535),
    "timeout": SECONDS,
    "round_timeout": SECONDS,
    "join_timeout": SECONDS,
    "eval_size": Limit(1, 10**9),
    "top_k": Limit(1, 1000),
    "calibration_images": Limit(1, 100_000),
}


def check_numbers(**values) -> None:
    """Refuse the first setting outside its range in one line naming it, its range and the value given; a value
    is a number (checked against ``LIMITS``), ``(number, Limit)`` or None (not given)."""
    for name, value in values.items():
        value, limit = value if isinstance(value, tuple) else (value, LIMITS[name])
        if value is None or limit.admits(value):
            continue
        raise ConfigError(f"--{name.replace('_', '-')} must be {limit.describe()}, got {value}")

