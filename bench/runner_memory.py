"""The device runners' memory and step times for given exports, side by side (two builds of one export, say).

    python bench/runner_memory.py --artifacts old/tflite --artifacts new/tflite
    python bench/runner_memory.py --model mobilenet_v2 --policy mobiletl:5 --format tflite   # exported here first

Each export is measured as ``edgetl benchmark`` measures a runner cell (:func:`edgetl.benchmark.measure_artifacts`:
fresh processes that cannot import torch, TensorFlow or edgetl; the baseline, an epoch's peak RSS and step time,
and with a frozen prefix the step time of cached epochs), the exports interleaved round-robin. ``edgetl
benchmark`` is the user's command (policies x runtimes, PyTorch included); this script compares directories.
With ``--current-runner`` each directory's runner files are replaced by this checkout's first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

from edgetl.benchmark import RUNNERS, BenchmarkConfig, measure_artifacts, random_run
from edgetl.exporters import export
from edgetl.exporters.manifest import copy_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", action="append", help="an export directory (repeatable)")
    ap.add_argument("--model", default="mobilenet_v2", help="without --artifacts: export this model here")
    ap.add_argument("--policy", action="append", help="without --artifacts (default: ft:5, mobiletl:5)")
    ap.add_argument("--format", action="append", choices=sorted(RUNNERS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="steps per epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--current-runner", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = BenchmarkConfig(model=args.model, batch=args.batch_size, resolution=args.resolution, rounds=args.rounds,
                          steps=args.steps, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        arts = [Path(a) for a in args.artifacts or []]
        for policy in [] if arts else args.policy or ["ft:5", "mobiletl:5"]:
            run = random_run(Path(tmp) / f"run-{policy}", args.model, policy, args.resolution)
            for fmt in args.format or sorted(RUNNERS):
                arts.append(Path(tmp) / f"{fmt}-{policy}")
                export(run, fmt, arts[-1], validate=False, batch_size=args.batch_size)
        for art in arts if args.current_runner else []:
            fmt = json.loads((art / "manifest.json").read_text())["format"]
            copy_runner(importlib.import_module(f"edgetl.runtime.{RUNNERS[fmt][:-3]}"), art)
        rows = measure_artifacts(arts, cfg, log=lambda line: print(line, file=sys.stderr))
    mib = 2**20
    print(f"{'artifacts':40} {'policy':11} {'format':7} {'train MiB':>9} {'peak MiB':>9} {'base MiB':>9} {'plan MiB':>9} "
          f"{'step s':>7} "
          f"{'cached s':>9} {'micro':>5}")
    for r in rows:
        plan = f"{r['planned_bytes'] / mib:9.1f}" if r["planned_bytes"] else f"{'-':>9}"
        cached = f"{r['cached_step_seconds']:9.3f}" if r["cached_step_seconds"] else f"{'-':>9}"
        print(f"{r['artifacts'][-40:]:40} {r['policy']:11} {r['runtime']:7} {r['train_peak_rss_bytes'] / mib:9.1f} "
              f"{r['peak_rss_bytes'] / mib:9.1f} "
              f"{r['baseline_rss_bytes'] / mib:9.1f} {plan} {r['step_seconds']:7.3f} {cached} {r['prefix_batch'] or '-':>5}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
