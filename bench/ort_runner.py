"""The ONNX Runtime device runner against PyTorch for the same training step, side by side in one run.

    python bench/ort_runner.py                      # MobileNetV2 and V3-Large, mobiletl:5, batch 8, 224 x 224
    python bench/ort_runner.py --model mobilenet_v3_small --resolution 96 --json out.json

For each model: a run is made (random weights with data statistics, which do not change speed or memory),
exported with validation (10 steps), and then trained for ``--steps`` steps in fresh processes, ``--rounds``
times each, alternating: by the device runner (onnxruntime-training and numpy only, torch blocked) and by
PyTorch (edgetl's training step). Reported: the export's parity figures after 10 steps, the median step
time and peak RSS of each, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from exportutil import make_run  # noqa: E402

from edgetl.exporters import export  # noqa: E402
from edgetl.profile.step import measure_step  # noqa: E402


def runner_step(art: Path, batch: int, steps: int, resolution: int, work: Path) -> dict:
    """Median step time and peak RSS of the device runner in a fresh process that cannot import torch."""
    rng = np.random.default_rng(0)
    shard = work / "shard.npz"
    np.savez(shard, images=rng.standard_normal((batch * 4, 3, resolution, resolution), dtype=np.float32),
             labels=rng.integers(0, 5, batch * 4))
    block = work / "block"
    for name in ("torch", "edgetl"):
        (block / name).mkdir(parents=True, exist_ok=True)
        (block / name / "__init__.py").write_text("raise ImportError('not on the device')\n")
    proc = subprocess.run([sys.executable, str(art / "ort_runner.py"), "--artifacts", str(art), "--data", str(shard),
                           "--steps", str(steps + 1), "--batch-size", str(batch), "--out", str(work / "trained")],
                          env={**os.environ, "PYTHONPATH": str(block)}, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    metrics = json.loads((work / "trained" / "metrics.json").read_text())
    return {"step_seconds": float(np.median(metrics["step_seconds"][1:])), "peak_rss_bytes": metrics["peak_rss_bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--policy", default="mobiletl:5")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds per side")
    ap.add_argument("--json")
    args = ap.parse_args()
    report = {}
    for name in args.model or ["mobilenet_v2", "mobilenet_v3_large"]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            run = make_run(work / "run", name, args.policy, resolution=args.resolution)
            manifest = export(run, "onnx", work / "art", steps=10, batch_size=args.batch_size)["manifest"]
            checks = {c["name"]: c for c in manifest["validation"]["checks"]}
            drift = manifest["validation"]["free_running"]
            rounds = []
            for _ in range(args.rounds):  # interleaved, so machine noise hits both alike; medians are reported
                rounds.append((runner_step(work / "art", args.batch_size, args.steps, args.resolution, work),
                               measure_step(name, args.policy, args.batch_size, args.resolution, optimizer="adamw")))
            report[name] = {"checks": checks, "free_running": drift,
                            "onnxruntime": {k: float(np.median([o[k] for o, _ in rounds]))
                                            for k in ("step_seconds", "peak_rss_bytes")},
                            "pytorch": {k: float(np.median([p[k] for _, p in rounds]))
                                        for k in ("step_seconds", "peak_rss_bytes")}}
    table = Table(title=f"{args.policy}, batch {args.batch_size}, {args.resolution}x{args.resolution}: "
                        f"ONNX Runtime device runner vs PyTorch")
    for col in ("model", "logit diff", "grad ||diff||/||g||", "10-step param drift", "ORT step ms", "PyTorch step ms",
                "ratio", "ORT peak RSS MiB", "PyTorch peak RSS MiB", "ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in report.items():
        checks = list(r["checks"].values())
        o, p = r["onnxruntime"], r["pytorch"]
        table.add_row(name, f"{checks[0]['max_diff']:.1e}", f"{checks[2]['max_diff']:.1e}",
                      f"{r['free_running']['param_distance_over_moved']:.1e} (max {r['free_running']['max_param_diff']:.1e})",
                      f"{1000 * o['step_seconds']:.0f}", f"{1000 * p['step_seconds']:.0f}",
                      f"{o['step_seconds'] / p['step_seconds']:.2f}", f"{o['peak_rss_bytes'] / 2**20:.0f}",
                      f"{p['peak_rss_bytes'] / 2**20:.0f}", f"{o['peak_rss_bytes'] / p['peak_rss_bytes']:.2f}")
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    main()
