"""Training FLOPs per step of full, ft:K and mobiletl:K for K = 1..all (MobileTL reports -36 % at K=5, V3).

    python bench/flops.py                                  # MobileNetV3-Large and -Small, 224x224, batch 1
    python bench/flops.py --model mobilenet_v2 --json flops.json

FLOPs are 2 x multiply-adds: forward of every layer, plus the backward that the policy needs (input
gradients above the lowest trained layer, weight gradients of trained layers), by edgetl's analytic rules.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from edgetl import create_model, inverted_residual_blocks
from edgetl.profile.analytic import analyze


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--json")
    args = ap.parse_args()
    report = {}
    for name in args.model or ["mobilenet_v3_large", "mobilenet_v3_small"]:
        full = analyze(name, "full", args.resolution, 10).totals(1)
        rows = {"full": {"training_flops": full["training_flops"], "forward_flops": full["forward_flops"]}}
        table = Table(title=f"{name}: training GFLOPs per image, {args.resolution}x{args.resolution} "
                            f"(full: {full['training_flops'] / 1e9:.3f})")
        for col in ("K", "ft:K", "vs full", "mobiletl:K", "vs full", "mobiletl vs ft"):
            table.add_column(col, justify="right")
        for k in range(1, len(inverted_residual_blocks(create_model(name))) + 1):
            ft = analyze(name, f"ft:{k}", args.resolution, 10).totals(1)["training_flops"]
            mtl = analyze(name, f"mobiletl:{k}", args.resolution, 10).totals(1)["training_flops"]
            rows[f"ft:{k}"] = {"training_flops": ft, "vs_full": 1 - ft / full["training_flops"]}
            rows[f"mobiletl:{k}"] = {"training_flops": mtl, "vs_full": 1 - mtl / full["training_flops"]}
            table.add_row(str(k), f"{ft / 1e9:.3f}", f"{-100 * (1 - ft / full['training_flops']):+.1f}%",
                          f"{mtl / 1e9:.3f}", f"{-100 * (1 - mtl / full['training_flops']):+.1f}%",
                          f"{-100 * (1 - mtl / ft):+.2f}%", style="bold" if k == 5 else None)
        Console().print(table)
        report[name] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
