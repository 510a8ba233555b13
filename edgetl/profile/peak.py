"""The attainable float32 rate of this machine: a matrix product at a given thread count, in a fresh process.

    gflops = matmul_peak(threads=2)       # GFLOP/s: the fastest of a few square sizes, PyTorch's and numpy's

A training step's achieved GFLOP/s (the profiler's FLOPs over its time) is read against this: the share of the
machine's matrix-product rate that a runtime reaches. Each size runs for a fraction of a second and counts its
fastest product (other processes only ever slow one down); the largest rate over sizes and both libraries (MKL or
oneDNN through PyTorch, OpenBLAS through numpy) stands for the machine.

Run directly, it is the child: ``python -m edgetl.profile.peak THREADS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from ..errors import EdgeTLError

SIZES = (256, 512, 1024)
SECONDS_PER_SIZE = 0.3


def _fastest(fn, seconds: float) -> float:
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _child(threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for n in SIZES:
        a, b = (np.random.default_rng(i).standard_normal((n, n), dtype=np.float32) for i in (0, 1))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        flops = 2.0 * n ** 3
        rates[f"torch_{n}"] = flops / _fastest(lambda: torch.mm(ta, tb), SECONDS_PER_SIZE) / 1e9
        rates[f"numpy_{n}"] = flops / _fastest(lambda: a @ b, SECONDS_PER_SIZE) / 1e9
    return {"threads": threads, "gflops": max(rates.values()), "rates": rates}


def matmul_peak(threads: int) -> dict:
    """``{"threads", "gflops", "rates"}``: the attainable float32 GFLOP/s at ``threads`` (see the module docstring)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "edgetl.profile.peak", str(threads)], capture_output=True, text=True,
                          timeout=300, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise EdgeTLError(f"measuring the matmul peak failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_child(int(sys.argv[1]))))
