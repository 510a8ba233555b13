"""Profile several policies side by side and render the result: JSON, CSV, rich tables, a PNG.

    report = build_report("mobilenet_v2", ["full", "ft:5", "mobiletl:5"], batch=8, resolution=224, measure=True)
    print_report(report)                 # rich tables
    write_json(report, "report.json"); write_csv(report, "report.csv"); plot(report, "memory.png")

JSON schema ``edgetl.profile/1`` (keys are stable; bytes are integers, FLOPs are 2 x multiply-adds):

    {"schema", "model", "batch_size", "resolution", "optimizer", "num_classes",
     "policies": [{"policy",
                   "totals": {saved_activation_bytes, trainable_param_bytes, frozen_param_bytes,
                              gradient_bytes, optimizer_state_bytes, transient_bytes,
                              training_memory_bytes, forward_flops, backward_input_flops,
                              backward_weight_flops, training_flops},
                   "reduction": {"vs_full": {saved_activation_bytes, training_memory_bytes, training_flops},
                                 "vs_ft": {...} | null},          # fractions saved, e.g. 0.42 = -42 %
                   "measured": {saved_activation_bytes, saved_ratio, peak_rss_bytes, step_rss_bytes,
                                step_seconds} | null,
                   "blocks": {"features.N" | "classifier" | "loss": saved_activation_bytes},
                   "layers": [{name, type, block, saved_bytes, measured_saved_bytes | null,
                               trainable_params, frozen_params, forward_flops, backward_input_flops,
                               backward_weight_flops, needs_input_grad, needs_weight_grad}]}]}
"""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING

import torch

from ..limits import check_numbers
from ..models import create_model
from ..optim import OptimizerSpec
from ..policies import TopBlocks, parse_policy
from ..surgery import apply_policy
from ..units import mib
from .analytic import profile_model
from .saved import measure_saved

if TYPE_CHECKING:
    from rich.console import Console

SCHEMA = "edgetl.profile/1"
_REDUCED = ("saved_activation_bytes", "training_memory_bytes", "training_flops")


def _reduction(totals: dict, base: dict) -> dict:
    return {k: (1 - totals[k] / base[k]) if base[k] else 0.0 for k in _REDUCED}


def _profile_one(model: str, policy: str, batch: int, resolution: int, optimizer: str, num_classes: int,
                 measure: bool) -> dict:
    net = apply_policy(create_model(model, num_classes=num_classes), policy)
    prof = profile_model(net, resolution, name=model)
    totals = prof.totals(batch, optimizer)
    measured_layers, measured = {}, None
    if measure:
        from .step import measure_step  # imported here: it starts a subprocess

        torch.manual_seed(0)
        saved = measure_saved(net, torch.randn(batch, 3, resolution, resolution))
        measured_layers = saved.by_layer
        step = measure_step(model, policy, batch, resolution, optimizer)
        measured = {"saved_activation_bytes": saved.activation_bytes,
                    "saved_ratio": saved.activation_bytes / max(totals["saved_activation_bytes"], 1),
                    **{k: step[k] for k in ("peak_rss_bytes", "step_rss_bytes", "step_seconds")}}
    layers, blocks = [], {}
    for layer in prof.layers:
        saved_bytes = layer.saved_bytes(batch)
        blocks[layer.block] = blocks.get(layer.block, 0) + saved_bytes
        layers.append({"name": layer.name, "type": layer.kind, "block": layer.block, "saved_bytes": saved_bytes,
                       "measured_saved_bytes": measured_layers.get(layer.name, 0) if measure else None,
                       "trainable_params": layer.trainable_params, "frozen_params": layer.frozen_params,
                       **layer.flops(batch), "needs_input_grad": layer.cost.needs_input_grad,
                       "needs_weight_grad": layer.cost.needs_weight_grad})
    return {"policy": str(parse_policy(policy)), "totals": totals, "measured": measured, "blocks": blocks,
            "layers": layers}


def build_report(model: str, policies: list[str], batch: int = 8, resolution: int = 224, optimizer: str = "sgd",
                 num_classes: int = 1000, measure: bool = False) -> dict:
    """Profile each policy (plus ``full`` and ``ft:K`` baselines, for the reductions) into one report."""
    check_numbers(batch_size=batch, resolution=resolution, num_classes=num_classes)
    specs = [str(parse_policy(p)) for p in policies]
    entries = {p: _profile_one(model, p, batch, resolution, optimizer, num_classes, measure) for p in specs}
    baselines = {}

    def baseline(spec: str) -> dict:
        if spec in entries:
            return entries[spec]["totals"]
        if spec not in baselines:
            baselines[spec] = _profile_one(model, spec, batch, resolution, optimizer, num_classes, False)["totals"]
        return baselines[spec]

    for spec, entry in entries.items():
        policy = parse_policy(spec)
        entry["reduction"] = {
            "vs_full": _reduction(entry["totals"], baseline("full")),
            "vs_ft": _reduction(entry["totals"], baseline(f"ft:{policy.k}")) if isinstance(policy, TopBlocks) else None,
        }
    return {"schema": SCHEMA, "model": model, "batch_size": batch, "resolution": resolution, "optimizer": optimizer,
            "num_classes": num_classes, "policies": list(entries.values())}


def gflops(n: float) -> str:
    return f"{n / 1e9:,.2f}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{-100 * x:+.1f}%"


def print_report(report: dict, console: Console | None = None, layers: bool = False) -> None:
    from rich.console import Console  # the console only when printing: `import edgetl` loads no rich
    from rich.table import Table

    console = console or Console()
    pols = report["policies"]
    head = f"{report['model']}, batch {report['batch_size']}, {report['resolution']}x{report['resolution']}"
    blocks = Table(title=f"activations saved for backward per block (MiB), {head}")
    blocks.add_column("block")
    for p in pols:
        blocks.add_column(p["policy"], justify="right")
    for name in pols[0]["blocks"]:
        blocks.add_row(name, *(mib(p["blocks"].get(name, 0)) for p in pols))
    console.print(blocks)
    if layers:
        for p in pols:
            t = Table(title=f"layers, {p['policy']}")
            for col in ("layer", "type", "saved MiB", "trainable", "frozen", "fwd GFLOPs", "bwd in", "bwd w"):
                t.add_column(col, justify="left" if col in ("layer", "type") else "right")
            for layer in p["layers"]:
                t.add_row(layer["name"], layer["type"], mib(layer["saved_bytes"]), f"{layer['trainable_params']:,}",
                          f"{layer['frozen_params']:,}", gflops(layer["forward_flops"]),
                          gflops(layer["backward_input_flops"]), gflops(layer["backward_weight_flops"]))
            console.print(t)
    totals = Table(title=f"training step totals (MiB, GFLOPs), {head}, optimizer {report['optimizer']}")
    for col in ("policy", "saved", "weights", "grads+opt", "memory", "vs full", "vs ft:K", "train GFLOPs", "vs full"):
        totals.add_column(col, justify="left" if col == "policy" else "right")
    for p in pols:
        t, r = p["totals"], p["reduction"]
        totals.add_row(p["policy"], mib(t["saved_activation_bytes"]),
                       mib(t["trainable_param_bytes"] + t["frozen_param_bytes"]),
                       mib(t["gradient_bytes"] + t["optimizer_state_bytes"]), mib(t["training_memory_bytes"]),
                       _pct(r["vs_full"]["training_memory_bytes"]),
                       _pct(r["vs_ft"]["training_memory_bytes"]) if r["vs_ft"] else "",
                       gflops(t["training_flops"]), _pct(r["vs_full"]["training_flops"]))
    console.print(totals)
    if all(p["measured"] for p in pols):
        m = Table(title="analytic vs measured, one step in a fresh process (MiB)")
        for col in ("policy", "saved analytic", "saved measured", "ratio", "peak RSS", "step RSS",
                    "analytic / step RSS", "step ms"):
            m.add_column(col, justify="left" if col == "policy" else "right")
        for p in pols:
            t, me = p["totals"], p["measured"]
            not_loaded = t["training_memory_bytes"] - t["trainable_param_bytes"] - t["frozen_param_bytes"]
            m.add_row(p["policy"], mib(t["saved_activation_bytes"]), mib(me["saved_activation_bytes"]),
                      f"{me['saved_ratio']:.4f}", mib(me["peak_rss_bytes"]), mib(me["step_rss_bytes"]),
                      f"{not_loaded / max(me['step_rss_bytes'], 1):.2f}", f"{1000 * me['step_seconds']:.0f}")
        console.print(m)


def write_json(report: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def write_csv(report: dict, path) -> None:
    """One row per (policy, layer)."""
    fields = ["policy", "name", "type", "block", "saved_bytes", "measured_saved_bytes", "trainable_params",
              "frozen_params", "forward_flops", "backward_input_flops", "backward_weight_flops", "needs_input_grad",
              "needs_weight_grad"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for p in report["policies"]:
            for layer in p["layers"]:
                w.writerow({"policy": p["policy"], **layer})


def _stacks(p: dict, names: list[str], opt_mult: int) -> tuple[list[float], list[float], list[float]]:
    """MiB per block: saved activations, trainable weights + grads + optimizer state, frozen weights."""
    def params(n, key):
        return sum(layer[key] for layer in p["layers"] if layer["block"] == n) * 4 / 2**20

    return ([p["blocks"].get(n, 0) / 2**20 for n in names], [params(n, "trainable_params") * (1 + opt_mult) for n in names],
            [params(n, "frozen_params") for n in names])


def plot(report: dict, path) -> None:
    """Stacked bars per block (activations, trainable weights + grads + optimizer, frozen weights), one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = report["policies"]
    names = list(pols[0]["blocks"])
    short = [n.replace("features.", "f") for n in names]
    opt_mult = 1 + OptimizerSpec.parse(report["optimizer"]).state_slots  # gradient + optimizer state per weight
    fig, axes = plt.subplots(len(pols), 1, figsize=(max(8, 0.45 * len(names)), 2.6 * len(pols)), sharex=True,
                             sharey=True, squeeze=False)
    for ax, p in zip(axes[:, 0], pols):
        act, train, frozen = _stacks(p, names, opt_mult)
        ax.bar(short, act, label="activations saved for backward", color="#d95f02")
        ax.bar(short, train, bottom=act, label="trainable weights + grads + optimizer", color="#1b9e77")
        ax.bar(short, frozen, bottom=[a + t for a, t in zip(act, train)], label="frozen weights", color="#b3b3b3")
        total = p["totals"]["training_memory_bytes"] / 2**20
        ax.set_title(f"{p['policy']}: {total:,.1f} MiB per step", loc="left", fontsize=10)
        ax.set_ylabel("MiB")
        ax.grid(axis="y", alpha=0.3)
    tallest = max(max(a + t + f for a, t, f in zip(*_stacks(p, names, opt_mult))) for p in pols)
    axes[0, 0].set_ylim(0, 1.12 * tallest)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    axes[-1, 0].tick_params(axis="x", rotation=90)
    fig.suptitle(f"{report['model']}, batch {report['batch_size']}, {report['resolution']}px, {report['optimizer']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
