"""Where the TFLite training step spends its time: the training subgraph's operators in execution order, per layer
beside the profiler's FLOPs.

    python bench/tflite_ops.py                                  # MobileNetV2 mobiletl:5, batch 8, 224 x 224, 2 threads
    python bench/tflite_ops.py --model mobilenet_v3_large --policy ft:5 --threads 1 --clock cpu --ops 40
    python bench/tflite_ops.py --artifacts artifacts/tflite --json ops.json      # an export as it is

A policy with a frozen prefix exports it apart, so the step profiled is the trained region's: the cached step. Two
figures per operator (:mod:`edgetl.exporters.tflite_profile`): its time alone (cut out into a model of its own) and
its time in the step (the subgraph cut into about ``--segments`` spans of whole layers, each timed in place as the
difference of two prefixes, and shared among its operators as their times alone are). ``--clock cpu`` counts this
thread's CPU time, which other processes barely disturb; it is exact at ``--threads 1`` only.

Tables: the step by part (forward, backward, optimizer...), every layer with its forward and backward time, FLOPs and
GFLOP/s, the slowest operators, and the time per operator type with whether XNNPACK runs it.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _segments(keys: list, alone: list[float], most: int) -> list[int]:
    """Cut points (op indices) where the layer changes, merged pairwise (the cheapest span alone first) down to
    ``most`` spans."""
    cuts = [0] + [k for k in range(1, len(keys)) if keys[k] != keys[k - 1]] + [len(keys)]
    while len(cuts) - 1 > most:
        spans = [sum(alone[a:b]) for a, b in zip(cuts, cuts[1:])]
        i = min(range(len(spans) - 1), key=lambda j: spans[j] + spans[j + 1])
        del cuts[i + 1]
    return cuts


def _monotone(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): a longer prefix of the step
    cannot take less time, so a noisy measurement that says so is averaged with its neighbours."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def _keys(ops, layer_of) -> list:
    """(layer, part) per op; an op the lowering did not name (a variable handle, an assignment) takes its
    neighbour's: the next op's for a handle, the previous one's for an assignment."""
    keys = [layer_of(o.name) for o in ops]
    for k in range(len(keys) - 1, -1, -1):
        if keys[k] is None and ops[k].op == "VAR_HANDLE" and k + 1 < len(keys):
            keys[k] = keys[k + 1]
    for k in range(len(keys)):
        if keys[k] is None:
            keys[k] = keys[k - 1] if k else ("model", "forward")
    return keys


def profile(model: bytes, threads: int, segments: int, clock, log) -> dict:
    from edgetl.exporters import tflite_profile as tp

    log("timing every operator alone")
    ops = tp.op_times(model, "train", threads=threads, clock=clock)
    keys = _keys(ops, tp.layer_of)
    alone = [o.seconds for o in ops]
    cuts = _segments(keys, alone, segments)
    log(f"timing {len(cuts)} prefixes of the step in place")
    spans = tp.prefix_seconds(model, "train", cuts, threads=threads, clock=clock,
                              progress=lambda i: log(f"  prefix {i + 1}/{len(cuts)}") if i % 10 == 9 else None)
    step = tp.signature_seconds(model, "train", threads=threads, steps=7, clock=clock)
    in_step = [0.0] * len(ops)
    fit = _monotone(spans)
    for (a, b), t0, t1 in zip(zip(cuts, cuts[1:]), fit, fit[1:]):
        span, total = t1 - t0, sum(alone[a:b])
        for k in range(a, b):
            in_step[k] = span * (alone[k] / total if total else 1.0 / (b - a))
    rows = [{"index": o.index, "op": o.op, "inputs": o.inputs, "output": o.output, "name": o.name,
             "layer": key[0], "part": key[1], "xnnpack": o.delegated, "alone_s": o.seconds, "in_step_s": t}
            for o, key, t in zip(ops, keys, in_step)]
    return {"ops": rows, "step_s": step, "cuts": cuts, "prefix_s": spans, "prefix_fit_s": fit}


def _layer_flops(model: str, policy: str, resolution: int, batch: int) -> dict:
    from edgetl.profile.analytic import analyze

    prof = analyze(model, policy, resolution, num_classes=5)
    return {layer.name: (layer.kind, layer.flops(batch)) for layer in prof.layers}


def _ms(s: float) -> str:
    return f"{1e3 * s:.2f}"


def report(data: dict, flops: dict, top: int, console: Console) -> None:
    ops, step = data["ops"], data["step_s"]
    parts = collections.defaultdict(lambda: [0.0, 0.0])
    for o in ops:
        parts[o["part"]][0] += o["in_step_s"]
        parts[o["part"]][1] += o["alone_s"]
    table = Table(title=f"{data['setting']}: the step {_ms(step)} ms ({len(ops)} operators, "
                        f"{sum(o['xnnpack'] for o in ops)} run by XNNPACK)")
    for col in ("part", "in the step ms", "alone ms", "share of the step"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for part, (inside, alone) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
        table.add_row(part, _ms(inside), _ms(alone), f"{inside / step:.0%}" if step else "-")
    console.print(table)

    layers = collections.OrderedDict()
    for o in ops:
        entry = layers.setdefault(o["layer"], {"forward": 0.0, "backward": 0.0, "other": 0.0})
        entry[o["part"] if o["part"] in ("forward", "backward") else "other"] += o["in_step_s"]
    table = Table(title="Per layer, in execution order of the forward pass: time in the step and the profiler's FLOPs")
    for col in ("layer", "type", "forward ms", "backward ms", "forward GFLOP", "backward GFLOP", "forward GFLOP/s",
                "backward GFLOP/s", "other ms"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for name, t in layers.items():
        kind, f = flops.get(name, ("", {}))
        fwd, bwd = f.get("forward_flops", 0.0), f.get("backward_input_flops", 0.0) + f.get("backward_weight_flops", 0.0)
        rate = [f"{g / s / 1e9:.0f}" if g and s > 0 else "-" for g, s in ((fwd, t["forward"]), (bwd, t["backward"]))]
        table.add_row(name, kind, _ms(t["forward"]), _ms(t["backward"]), f"{fwd / 1e9:.3f}" if fwd else "-",
                      f"{bwd / 1e9:.3f}" if bwd else "-", *rate, _ms(t["other"]) if t["other"] else "")
    console.print(table)

    table = Table(title=f"The {top} slowest operators in the step")
    for col in ("#", "op", "XNNPACK", "in the step ms", "alone ms", "inputs", "output", "layer", "part"):
        table.add_column(col, justify="right" if col in ("#", "in the step ms", "alone ms") else "left")
    for o in sorted(ops, key=lambda o: -o["in_step_s"])[:top]:
        table.add_row(str(o["index"]), o["op"], "yes" if o["xnnpack"] else "no", _ms(o["in_step_s"]), _ms(o["alone_s"]),
                      " ".join(o["inputs"]), o["output"], o["layer"], o["part"])
    console.print(table)

    kinds = collections.defaultdict(lambda: [0, 0.0, 0.0, set()])
    for o in ops:
        k = kinds[o["op"]]
        k[0] += 1
        k[1] += o["in_step_s"]
        k[2] += o["alone_s"]
        k[3].add(o["xnnpack"])
    table = Table(title="Per operator type")
    for col in ("op", "count", "XNNPACK", "in the step ms", "alone ms"):
        table.add_column(col, justify="left" if col in ("op", "XNNPACK") else "right")
    for op, (n, inside, alone, where) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        table.add_row(op, str(n), "yes" if where == {True} else "no" if where == {False} else "partly", _ms(inside),
                      _ms(alone))
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--policy", default="mobiletl:5")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--segments", type=int, default=60, help="spans of the step timed in place")
    ap.add_argument("--ops", type=int, default=25, help="the slowest operators listed")
    ap.add_argument("--artifacts", help="an existing TFLite export directory (default: export a random run)")
    ap.add_argument("--json")
    args = ap.parse_args()
    console = Console(width=220)
    err = Console(stderr=True)

    def log(msg):
        err.print(f"[dim]{msg}[/]")

    with tempfile.TemporaryDirectory() as tmp:
        art = Path(args.artifacts) if args.artifacts else None
        if art is None:
            from edgetl.benchmark import random_run
            from edgetl.exporters import export

            log(f"exporting {args.model} {args.policy}")
            run = random_run(Path(tmp) / "run", args.model, args.policy, args.resolution, args.optimizer)
            art = Path(tmp) / "tflite"
            export(run, "tflite", art, validate=False, batch_size=args.batch_size)
        manifest = json.loads((art / "manifest.json").read_text())
        model = (art / "model.tflite").read_bytes()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    data = profile(model, args.threads, args.segments, clock, log)
    batch = manifest["input"]["shape"][0]
    data["setting"] = (f"{manifest['model']} {manifest['policy']}, batch {batch}, {manifest['input']['shape'][-1]}"
                       f" px, {args.threads} thread(s), {args.clock} clock")
    flops = _layer_flops(manifest["model"], manifest["policy"], manifest["input"]["shape"][-1], batch)
    report(data, flops, args.ops, console)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
