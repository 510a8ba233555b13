"""Where a device runtime's training step spends its time: the training graph's operators in execution order, per
layer beside the profiler's FLOPs (TFLite: each operator alone and in the step; ONNX Runtime: its own profiler).

    python bench/step_ops.py                                   # TFLite, MobileNetV2 mobiletl:5, batch 8, 224 px, 2 threads
    python bench/step_ops.py --model mobilenet_v3_large --policy ft:5 --threads 1 --clock cpu --ops 40
    python bench/step_ops.py --runtime onnx --json ops.json    # ONNX Runtime's training model, its profiler's times
    python bench/step_ops.py --artifacts artifacts/tflite      # an export as it is

A policy with a frozen prefix exports it apart, so the step profiled is the trained region's: the cached step.

TFLite has no op profiler in Python, so two figures per operator (:mod:`edgetl.formats.tflite.profile`): its time
alone (cut out into a model of its own) and its time in the step (the subgraph cut into about ``--segments`` spans
of whole layers, each timed in place as the difference of two prefixes, and shared among its operators as their
times alone are). ``--clock cpu`` counts this thread's CPU time, which other processes barely disturb; it is exact
at ``--threads 1`` only. ONNX Runtime times every node in place (``SessionOptions.enable_profiling``) over
``--steps`` steps; its optimizer runs in a session of its own, outside that profile.

Tables: the step by part (forward, backward, optimizer...), every layer with its forward and backward time, FLOPs
and GFLOP/s, the slowest operators, and the time per operator type (for TFLite, with whether XNNPACK runs it).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


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


def _segments(keys: list, alone: list[float], most: int) -> list[int]:
    """Cut points (op indices) where the layer changes, merged pairwise (the cheapest span alone first) down to
    ``most`` spans."""
    cuts = [0] + [k for k in range(1, len(keys)) if keys[k] != keys[k - 1]] + [len(keys)]
    while len(cuts) - 1 > most:
        spans = [sum(alone[a:b]) for a, b in zip(cuts, cuts[1:])]
        i = min(range(len(spans) - 1), key=lambda j: spans[j] + spans[j + 1])
        del cuts[i + 1]
    return cuts


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


def profile_tflite(art: Path, args, log) -> dict:
    from edgetl.formats.tflite import profile as tp

    model = (art / "model.tflite").read_bytes()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    log("timing every operator alone")
    ops = tp.op_times(model, "train", threads=args.threads, clock=clock)
    keys = _keys(ops, tp.layer_of)
    alone = [o.seconds for o in ops]
    cuts = _segments(keys, alone, args.segments)
    log(f"timing {len(cuts)} prefixes of the step in place")
    spans = tp.prefix_seconds(model, "train", cuts, threads=args.threads, clock=clock,
                              progress=lambda i: log(f"  prefix {i + 1}/{len(cuts)}") if i % 10 == 9 else None)
    step = tp.signature_seconds(model, "train", threads=args.threads, steps=7, clock=clock)
    in_step = [0.0] * len(ops)
    fit = _monotone(spans)
    for (a, b), t0, t1 in zip(zip(cuts, cuts[1:]), fit, fit[1:]):
        span, total = t1 - t0, sum(alone[a:b])
        for k in range(a, b):
            in_step[k] = span * (alone[k] / total if total else 1.0 / (b - a))
    rows = [{"index": o.index, "op": o.op, "inputs": " ".join(o.inputs), "output": o.output, "name": o.name,
             "layer": key[0], "part": key[1], "xnnpack": o.delegated, "alone_s": o.seconds, "in_step_s": t}
            for o, key, t in zip(ops, keys, in_step)]
    return {"ops": rows, "step_s": step, "cuts": cuts, "prefix_s": spans, "prefix_fit_s": fit}


def _onnx_layer(name: str) -> tuple[str, str]:
    """(layer, part) of an ONNX node named by the exporter's module scopes (``/model/features/features.13/conv/
    conv.0/conv.0.0/Conv``, gradients under ``..._Grad/``); unscoped nodes (gradient accumulation) by their op."""
    scopes = name.strip("/").split("/")
    if len(scopes) < 3 or scopes[0] != "model":
        return ("gradient accumulation" if "Accumulator" in name else "loss" if "Loss" in name else "other"), "backward"
    parts: list[str] = []
    for comp in scopes[1:-1]:
        if comp.endswith("_Grad"):
            break
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts) or "model", "backward" if "_Grad" in name else "forward"


def profile_onnx(art: Path, args, log) -> dict:
    import onnxruntime
    from onnxruntime.training import api

    manifest = json.loads((art / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.enable_profiling, options.profile_file_prefix = True, os.path.join(tmp, "trace")
        state = api.CheckpointState.load_checkpoint(str(art / "checkpoint"))
        module = api.Module(str(art / "training_model.onnx"), state, session_options=options)
        optimizer = api.Optimizer(str(art / "optimizer_model.onnx"), module)
        module.train()
        shape = [args.batch_size, *(manifest["split"]["feature_shape"] if manifest.get("split")
                                    else manifest["input"]["shape"][1:])]  # ONNX Runtime trains any batch
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal(shape, dtype=np.float32), np.zeros(shape[0], np.int64)
        times = []
        log(f"{args.steps} steps with ONNX Runtime's profiler")
        for _ in range(args.steps):
            t0 = time.perf_counter()
            module(x, y)
            optimizer.step()
            module.lazy_reset_grad()
            times.append(time.perf_counter() - t0)
        del optimizer, module  # the profile is written when the session ends
        trace = json.loads(Path(glob.glob(os.path.join(tmp, "trace*.json"))[0]).read_text())
    runs = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_step = len(runs) // args.steps
    order, nodes = [], {}
    for e in runs[per_step:]:  # the first step warms up
        name = e["name"][:-len("_kernel_time")]
        if name not in nodes:
            order.append(name)
            nodes[name] = {"op": e["args"]["op_name"], "dur": [], "output": e["args"].get("output_type_shape")}
        nodes[name]["dur"].append(e["dur"] * 1e-6)
    rows = []
    for i, name in enumerate(order):
        layer, part = _onnx_layer(name)
        out = nodes[name]["output"] or [{}]
        rows.append({"index": i, "op": nodes[name]["op"], "inputs": "", "name": name,
                     "output": "x".join(str(d) for d in next(iter(out[0].values()), [])), "layer": layer,
                     "part": part, "xnnpack": None, "alone_s": None, "in_step_s": float(np.median(nodes[name]["dur"]))})
    return {"ops": rows, "step_s": float(np.median(times[1:])), "note": "step: forward, backward and optimizer; "
            "operators: the training model's (forward and backward), in place"}


def _layer_flops(model: str, policy: str, resolution: int, batch: int) -> dict:
    from edgetl.profile.analytic import analyze

    prof = analyze(model, policy, resolution, num_classes=5)
    return {layer.name: (layer.kind, layer.flops(batch)) for layer in prof.layers}


def _ms(s) -> str:
    return f"{1e3 * s:.2f}" if s is not None else "-"


def _sum(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def report(data: dict, flops: dict, top: int, console: Console) -> None:
    ops, step = data["ops"], data["step_s"]
    parts = collections.defaultdict(list)
    for o in ops:
        parts[o["part"]].append(o)
    table = Table(title=f"{data['setting']}: the step {_ms(step)} ms, {len(ops)} operators")
    for col in ("part", "in the step ms", "alone ms", "share of the step"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for part, group in sorted(parts.items(), key=lambda kv: -sum(o["in_step_s"] for o in kv[1])):
        inside = sum(o["in_step_s"] for o in group)
        table.add_row(part, _ms(inside), _ms(_sum(o["alone_s"] for o in group)), f"{inside / step:.0%}")
    console.print(table)

    layers = collections.OrderedDict()
    for o in ops:
        entry = layers.setdefault(o["layer"], {"forward": 0.0, "backward": 0.0, "other": 0.0})
        entry[o["part"] if o["part"] in ("forward", "backward") else "other"] += o["in_step_s"]
    table = Table(title="Per layer, in execution order: time in the step and the profiler's FLOPs")
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
        table.add_row(str(o["index"]), o["op"], {True: "yes", False: "no", None: "-"}[o["xnnpack"]],
                      _ms(o["in_step_s"]), _ms(o["alone_s"]), o["inputs"], o["output"], o["layer"], o["part"])
    console.print(table)

    kinds = collections.defaultdict(list)
    for o in ops:
        kinds[o["op"]].append(o)
    table = Table(title="Per operator type")
    for col in ("op", "count", "XNNPACK", "in the step ms", "alone ms"):
        table.add_column(col, justify="left" if col in ("op", "XNNPACK") else "right")
    for op, group in sorted(kinds.items(), key=lambda kv: -sum(o["in_step_s"] for o in kv[1])):
        where = {o["xnnpack"] for o in group}
        table.add_row(op, str(len(group)), "yes" if where == {True} else "no" if where == {False} else
                      "-" if where == {None} else "partly", _ms(sum(o["in_step_s"] for o in group)),
                      _ms(_sum(o["alone_s"] for o in group)))
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", choices=("tflite", "onnx"), default="tflite")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--policy", default="mobiletl:5")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="TFLite: wall or this thread's CPU time")
    ap.add_argument("--segments", type=int, default=60, help="TFLite: spans of the step timed in place")
    ap.add_argument("--steps", type=int, default=6, help="ONNX Runtime: profiled steps (the first warms up)")
    ap.add_argument("--ops", type=int, default=25, help="the slowest operators listed")
    ap.add_argument("--artifacts", help="an existing export directory (default: export a random run)")
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

            log(f"exporting {args.model} {args.policy} as {args.runtime}")
            run = random_run(Path(tmp) / "run", args.model, args.policy, args.resolution, args.optimizer)
            art = Path(tmp) / args.runtime
            export(run, args.runtime, art, validate=False, batch_size=args.batch_size)
        manifest = json.loads((art / "manifest.json").read_text())
        data = (profile_tflite if manifest["format"] == "tflite" else profile_onnx)(art, args, log)
    batch, res = manifest["input"]["shape"][0] or args.batch_size, manifest["input"]["shape"][-1]
    data["setting"] = (f"{manifest['runtime']}: {manifest['model']} {manifest['policy']}, batch {batch}, {res} px, "
                       f"{args.threads} thread(s)" + (f", {args.clock} clock" if manifest["format"] == "tflite" else ""))
    report(data, _layer_flops(manifest["model"], manifest["policy"], res, batch), args.ops, console)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
