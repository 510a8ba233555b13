"""The device runners (ONNX Runtime, TFLite) next to PyTorch, per policy, for several models: `edgetl benchmark`.

    python bench/runners.py                      # MobileNetV2 and V3-Large; full, ft:5, mobiletl:5; batch 8, 224 x 224
    python bench/runners.py --model mobilenet_v3_small --resolution 96 --policy mobiletl:5 --json out.json

A thin loop over :func:`edgetl.benchmark.run_benchmark` (the ``edgetl benchmark`` command): per model, every
(policy, runtime) cell in fresh processes, interleaved for ``--rounds`` rounds; peak RSS, the runtime's baseline,
step time and the step time with the feature cache. Export parity figures live in ``bench/parity.py``.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from edgetl.benchmark import RUNTIMES, BenchmarkConfig, run_benchmark
from edgetl.ui import print_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--policy", action="append")
    ap.add_argument("--runtime", action="append", choices=sorted(RUNTIMES))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds per cell")
    ap.add_argument("--prefix-batch", default="auto")
    ap.add_argument("--threads", type=int, help="CPU threads of every runtime (default: every CPU)")
    ap.add_argument("--json")
    args = ap.parse_args()
    console = Console(width=200)
    report = {}
    for name in args.model or ["mobilenet_v2", "mobilenet_v3_large"]:
        cfg = BenchmarkConfig(model=name, batch=args.batch_size, resolution=args.resolution, steps=args.steps,
                              rounds=args.rounds, threads=args.threads, prefix_batch=None if args.prefix_batch == "none"
                              else (args.prefix_batch if args.prefix_batch == "auto" else int(args.prefix_batch)))
        cfg.policies = args.policy or cfg.policies
        cfg.runtimes = args.runtime or cfg.runtimes
        report[name] = run_benchmark(cfg, log=lambda msg: console.print(f"[dim]{msg}[/]"))
        print_benchmark(report[name], console)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
