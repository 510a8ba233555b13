"""The device runners (ONNX Runtime, TFLite) against PyTorch for the same training step, side by side in one run.

    python bench/runners.py                      # MobileNetV2 and V3-Large, mobiletl:5, batch 8, 224 x 224
    python bench/runners.py --model mobilenet_v3_small --resolution 96 --format tflite --json out.json

For each model: a run is made (random weights with data statistics, which do not change speed or memory),
exported in each format with validation (10 steps), and then trained for ``--steps`` steps in fresh
processes, ``--rounds`` times each, alternating: by each device runner (its runtime and numpy only; torch,
TensorFlow and edgetl blocked) and by PyTorch (edgetl's training step). Every side runs the run's AdamW.
Reported: each export's parity figures after 10 steps, the median step time and peak RSS of each side,
and their ratios to PyTorch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from exportutil import blocked_env, make_run  # noqa: E402

from edgetl.exporters import export  # noqa: E402
from edgetl.profile.step import measure_step  # noqa: E402

RUNNERS = {"onnx": "ort_runner.py", "tflite": "tflite_runner.py"}
LABELS = {"onnx": "ONNX Runtime", "tflite": "TFLite"}


def runner_step(art: Path, runner: str, batch: int, steps: int, resolution: int, work: Path) -> dict:
    """Median step time and peak RSS of a device runner in a fresh process that cannot import torch."""
    rng = np.random.default_rng(0)
    shard = work / "shard.npz"
    np.savez(shard, images=rng.standard_normal((batch * 4, 3, resolution, resolution), dtype=np.float32),
             labels=rng.integers(0, 5, batch * 4))
    proc = subprocess.run([sys.executable, str(art / runner), "--artifacts", str(art), "--data", str(shard),
                           "--steps", str(steps + 1), "--batch-size", str(batch), "--out", str(work / "trained")],
                          env=blocked_env(work), capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    metrics = json.loads((work / "trained" / "metrics.json").read_text())
    return {"step_seconds": float(np.median(metrics["step_seconds"][1:])), "peak_rss_bytes": metrics["peak_rss_bytes"]}


def _median(samples: list[dict]) -> dict:
    return {k: float(np.median([s[k] for s in samples])) for k in ("step_seconds", "peak_rss_bytes")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--format", action="append", choices=sorted(RUNNERS))
    ap.add_argument("--policy", default="mobiletl:5")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds per side")
    ap.add_argument("--json")
    args = ap.parse_args()
    formats = args.format or sorted(RUNNERS)
    report = {}
    for name in args.model or ["mobilenet_v2", "mobilenet_v3_large"]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            run = make_run(work / "run", name, args.policy, resolution=args.resolution)
            entry = {}
            for fmt in formats:
                manifest = export(run, fmt, work / fmt, steps=10, batch_size=args.batch_size).manifest
                entry[fmt] = {"checks": manifest["validation"]["checks"],
                              "free_running": manifest["validation"]["free_running"], "samples": []}
            torch_samples = []
            for _ in range(args.rounds):  # interleaved, so machine noise hits every side alike; medians reported
                for fmt in formats:
                    entry[fmt]["samples"].append(runner_step(work / fmt, RUNNERS[fmt], args.batch_size, args.steps,
                                                             args.resolution, work))
                torch_samples.append(measure_step(name, args.policy, args.batch_size, args.resolution,
                                                  optimizer="adamw"))
            for fmt in formats:
                entry[fmt].update(_median(entry[fmt].pop("samples")))
            entry["pytorch"] = _median(torch_samples)
            report[name] = entry
    table = Table(title=f"{args.policy}, batch {args.batch_size}, {args.resolution}x{args.resolution}: "
                        f"device runners vs PyTorch (parity after 10 steps)")
    for col in ("model", "runtime", "logit diff", "loss diff", "grad ||diff||/||g||", "10-step drift (max param)",
                "step ms", "vs PyTorch", "peak RSS MiB", "vs PyTorch"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for name, entry in report.items():
        p = entry["pytorch"]
        for fmt in formats:
            r = entry[fmt]
            checks = {c["name"].split(",")[0]: c for c in r["checks"]}
            grad = next(c for c in r["checks"] if c["name"].startswith("gradients"))
            drift = r["free_running"]
            table.add_row(name, LABELS[fmt], f"{checks['inference logits']['max_diff']:.1e}",
                          f"{checks['training losses']['max_diff']:.1e}", f"{grad['max_diff']:.1e}",
                          f"{drift['param_distance_over_moved']:.1e} ({drift['max_param_diff']:.1e})",
                          f"{1000 * r['step_seconds']:.0f}", f"{r['step_seconds'] / p['step_seconds']:.2f}",
                          f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{r['peak_rss_bytes'] / p['peak_rss_bytes']:.2f}")
        table.add_row(name, "PyTorch", "", "", "", "", f"{1000 * p['step_seconds']:.0f}", "1.00",
                      f"{p['peak_rss_bytes'] / 2**20:.0f}", "1.00", end_section=True)
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    main()
