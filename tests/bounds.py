"""Bounds that measured figures are checked against, instead of being only positive: the memory a fresh Python
holding numpy occupies (every runner and step process holds at least that), the bytes of an export's model files (a
runtime reads them into memory), and the time a median of timed sections can have taken within the wall time
around them."""

import functools
import math
import subprocess
import sys
from pathlib import Path

_RSS = """
import numpy
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:")))
"""


@functools.cache
def numpy_process_rss() -> int:
    """Resident bytes of a fresh Python of this environment that has imported numpy."""
    return int(subprocess.run([sys.executable, "-c", _RSS], capture_output=True, text=True, check=True).stdout)


def model_bytes(art) -> int:
    """Bytes of the model files (.onnx, .tflite) of the export in ``art``."""
    return sum(p.stat().st_size for p in Path(art).iterdir() if p.suffix in (".onnx", ".tflite"))


def median_fits(median: float, timed: int, wall: float) -> bool:
    """A median of ``timed`` sections is positive, and the half of them at least as long fits in ``wall``."""
    return 0 < median and median * math.ceil(timed / 2) <= wall
