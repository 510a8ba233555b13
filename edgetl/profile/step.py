"""Measure one training step in a fresh process: peak RSS, step time, and the bytes saved for backward.

    m = measure_step("mobilenet_v2", "mobiletl:5", batch=8, resolution=224)    # runs a subprocess
    m["peak_rss_bytes"], m["step_rss_bytes"], m["step_seconds"], m["saved_activation_bytes"]

A fresh process is the only honest way to read a peak: the parent's allocator already holds memory.
The child builds the model, applies the policy, allocates the batch, reads its RSS (the baseline),
runs one warm-up step and ``steps`` timed steps, and reports its peak RSS and the increase over the
baseline, which is what training adds on top of the loaded model. The peak is ``VmHWM`` of
``/proc/self/status``, reset to the baseline first: ``getrusage``'s ``ru_maxrss`` survives
``execve`` and would report the parent's peak.

Run directly, it is the child: ``python -m edgetl.profile.step MODEL POLICY BATCH RESOLUTION OPTIMIZER``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from ..errors import EdgeTLError

STEP_TIMEOUT_S = 600


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise EdgeTLError(f"/proc/self/status has no {field}; peak RSS is measured on Linux only")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # then the peak includes start-up, which is below the step's peak anyway


def _child(model: str, policy: str, batch: int, resolution: int, optimizer: str, steps: int = 3,
           prefix_batch: int | str | None = None, cached: bool = False, threads: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from ..models import create_model
    from ..optim import OptimizerSpec
    from ..prefix import features_given, prefix_modules, resolve_prefix_batch, run_prefix, set_prefix_batch
    from ..surgery import apply_policy, trainable_parameters
    from .saved import measure_saved

    torch.manual_seed(0)
    net = apply_policy(create_model(model, num_classes=10), policy).train()
    micro = resolve_prefix_batch(net, prefix_batch, batch, resolution)
    set_prefix_batch(net, micro)
    params = list(trainable_parameters(net).values())
    opt = OptimizerSpec.parse(optimizer, lr=0.01).build(params)
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    baseline = _status_bytes("VmRSS")
    _reset_peak()

    def timed(inputs) -> list[float]:
        """Seconds of each of ``steps`` training steps on ``inputs``, after one untimed warm-up step."""
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(inputs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        return times

    times = timed(x)
    peak = _status_bytes("VmHWM")
    cached_times = []
    if cached and prefix_modules(net):  # the steps of epochs after the first: the prefix's outputs come from a cache
        features = run_prefix(prefix_modules(net), x, micro)
        with features_given(net):
            cached_times = timed(features)
    saved = measure_saved(net, x, y).activation_bytes
    return {"baseline_rss_bytes": baseline, "peak_rss_bytes": peak, "step_rss_bytes": peak - baseline,
            "step_seconds": statistics.median(times), "saved_activation_bytes": saved, "prefix_batch": micro,
            "cached_step_seconds": statistics.median(cached_times) if cached_times else None,
            "threads": torch.get_num_threads()}


def measure_step(model: str, policy: str, batch: int, resolution: int, optimizer: str = "sgd",
                 prefix_batch: int | str | None = None, cached: bool = False, steps: int = 3,
                 threads: int | None = None) -> dict:
    """Run :func:`_child` in a fresh Python process and return its measurements (``cached``: also the step time
    with the prefix's outputs given, as in the epochs after the first with ``--cache-features``; ``threads``:
    PyTorch's intra-op threads, default its own choice)."""
    cmd = [sys.executable, "-m", "edgetl.profile.step", model, policy, str(batch), str(resolution), optimizer,
           str(prefix_batch or ""), "1" if cached else "", str(steps), str(threads or "")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EdgeTLError(f"measuring one step of {model} {policy} took over {STEP_TIMEOUT_S}s; "
                          f"lower --batch-size or --resolution") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise EdgeTLError(f"the measurement process for {model} {policy} failed: {tail[0]}; "
                          f"if it ran out of memory, lower --batch-size")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    m, p, b, r, o = sys.argv[1:6]
    pb, c, n, t = (sys.argv[6:10] + ["", "", "3", ""][len(sys.argv[6:10]):])[:4]
    print(json.dumps(_child(m, p, int(b), int(r), o, int(n), (pb if pb == "auto" else int(pb)) if pb else None, bool(c),
                            int(t) if t else None)))
