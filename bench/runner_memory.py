"""The device runners' memory and step time with the frozen prefix streamed, and with the feature cache.

    python bench/runner_memory.py                         # MobileNetV2, ft:5 and mobiletl:5, batch 8, 224 x 224
    python bench/runner_memory.py --model mobilenet_v3_small --resolution 96 --format tflite --json out.json

For each policy and format: a run with random weights (data statistics), exported (``--validate`` to also
check it against PyTorch), then each runner in fresh processes that cannot import torch, TensorFlow or edgetl,
with ``--threads 1``: ``--baseline`` (runtime imported, models loaded), two epochs without the cache, and two
epochs with ``--cache-features`` (the second epoch reads the cache). Reported: peak RSS, the baseline, the
median step time without the cache, and the median step time of the cached epoch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from exportutil import blocked_env, make_run  # noqa: E402

from edgetl.exporters import export  # noqa: E402

RUNNERS = {"onnx": "ort_runner.py", "tflite": "tflite_runner.py"}


def runner(art: Path, fmt: str, work: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(art / RUNNERS[fmt]), "--artifacts", str(art), "--threads", "1", *args],
                          env=blocked_env(work), capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return proc


def measure(art: Path, fmt: str, work: Path, batch: int, images: int, prefix_batch: str) -> dict:
    shard = work / "shard.npz"
    manifest = json.loads((art / "manifest.json").read_text())
    res = manifest["input"]["shape"][-1]
    rng = np.random.default_rng(0)
    np.savez(shard, images=rng.standard_normal((images, 3, res, res), dtype=np.float32),
             labels=rng.integers(0, len(manifest["class_names"]), images))
    base = json.loads(runner(art, fmt, work, "--baseline", "--prefix-batch", prefix_batch).stdout.strip().splitlines()[-1])
    common = ["--data", str(shard), "--epochs", "2", "--batch-size", str(batch), "--prefix-batch", prefix_batch]
    runner(art, fmt, work, *common, "--out", str(work / "plain"))
    plain = json.loads((work / "plain" / "metrics.json").read_text())
    row = {"baseline_rss_bytes": base["baseline_rss_bytes"], "peak_rss_bytes": plain["peak_rss_bytes"],
           "step_seconds": float(np.median(plain["step_seconds"][1:])), "prefix_batch": plain["prefix_batch"],
           "losses": plain["losses"]}
    if manifest.get("split"):
        runner(art, fmt, work, *common, "--cache-features", "--out", str(work / "cached"))
        cached = json.loads((work / "cached" / "metrics.json").read_text())
        per_epoch = cached["epochs"][0]["steps"]
        row.update(cached_step_seconds=float(np.median(cached["step_seconds"][per_epoch:])),
                   cached_peak_rss_bytes=cached["peak_rss_bytes"], cache=cached["cache"],
                   cached_losses=cached["losses"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--format", action="append", choices=sorted(RUNNERS))
    ap.add_argument("--policy", action="append")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--images", type=int, default=24, help="images per epoch (a few steps)")
    ap.add_argument("--prefix-batch", default="auto")
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    report = []
    mib = 2**20
    print(f"{'format':8} {'policy':11} {'peak MiB':>9} {'base MiB':>9} {'step s':>7} {'cached s':>9} {'micro':>5} "
          f"{'cached peak':>11}", flush=True)
    for policy in args.policy or ["ft:5", "mobiletl:5"]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            run = make_run(work / "run", args.model, policy, resolution=args.resolution)
            for fmt in args.format or sorted(RUNNERS):
                art = work / fmt
                export(run, fmt, art, validate=args.validate, steps=3, batch_size=args.batch_size)
                (work / f"w-{fmt}").mkdir()
                row = {"format": fmt, "policy": policy, **measure(art, fmt, work / f"w-{fmt}", args.batch_size,
                                                                   args.images, args.prefix_batch)}
                report.append(row)
                print(f"{fmt:8} {policy:11} {row['peak_rss_bytes'] / mib:9.1f} {row['baseline_rss_bytes'] / mib:9.1f} "
                      f"{row['step_seconds']:7.3f} {row.get('cached_step_seconds', float('nan')):9.3f} "
                      f"{row['prefix_batch'] or '-':>5} {row.get('cached_peak_rss_bytes', 0) / mib:11.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
