"""Bytes saved for backward and training-step time per policy, measured side by side in one run.

    python bench/step_memory.py                                   # V2 and V3-Large, batch 8, 224x224
    python bench/step_memory.py --model mobilenet_v3_small --policy full --policy mobiletl:5 --json out.json

Saved bytes are counted with saved-tensor hooks (deduplicated by storage, parameters excluded). Step
times are medians over ``--steps`` steps, with the policies interleaved step by step so that machine
noise hits all of them alike; ratios are against the first ``ft:K`` policy given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

import edgetl
from edgetl.profile import measure_saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--policy", action="append")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    models = args.model or ["mobilenet_v2", "mobilenet_v3_large"]
    policies = args.policy or ["full", "ft:5", "mobiletl:5"]
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    y = torch.randint(0, 10, (args.batch_size,))
    report = {"batch_size": args.batch_size, "resolution": args.resolution, "threads": torch.get_num_threads(),
              "models": {}}
    for name in models:
        runs = {}
        for p in policies:
            model = edgetl.apply_policy(edgetl.create_model(name, num_classes=10), p).train()
            opt = torch.optim.SGD(edgetl.trainable_parameters(model).values(), lr=0.01, momentum=0.9)
            runs[p] = (model, opt, measure_saved(model, x, y).activation_bytes, [])
        for step in range(args.steps + 2):  # two warm-up steps, then interleaved timing
            for p, (model, opt, _, times) in runs.items():
                t0 = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step >= 2:
                    times.append(time.perf_counter() - t0)
        report["models"][name] = {p: {"saved_bytes": saved, "step_ms": 1000 * statistics.median(times)}
                                  for p, (_, _, saved, times) in runs.items()}
    base_name = next((p for p in policies if p.startswith("ft:")), policies[0])
    table = Table(title=f"saved for backward and step time, batch {args.batch_size}, {args.resolution}x{args.resolution}, "
                        f"{report['threads']} threads")
    for col in ("model", "policy", "saved MiB", f"vs {base_name}", "step ms", f"vs {base_name}"):
        table.add_column(col, justify="right" if col not in ("model", "policy") else "left")
    for name, rows in report["models"].items():
        base = rows[base_name]
        for p, r in rows.items():
            table.add_row(name, p, f"{r['saved_bytes'] / 2**20:.2f}", f"{r['saved_bytes'] / base['saved_bytes']:.3f}",
                          f"{r['step_ms']:.0f}", f"{r['step_ms'] / base['step_ms']:.3f}")
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
