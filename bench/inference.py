"""Inference exports measured: fp32 and int8, both formats, for trained runs, on real photographs.

    python bench/inference.py --run runs/v3 --run runs/v2 --calibration data/train --data data/test --json inf.json

For each run and format: the fp32 inference export and the int8 one calibrated on ``--calibration-images``
images of ``--calibration`` (as ``edgetl export RUN --inference [--quantize int8 --calibration DIR]`` makes
them, validated), then both evaluated on ``--data`` with ``edgetl evaluate`` in their own runtime, beside the
run itself in PyTorch. The table: file sizes and their ratio, int8's top-1 agreement with fp32 on every test
image (computed here from the two exports' own predictions; and on the images fp32 does not find nearly tied,
its two most probable classes ``NEAR_TIE`` or more apart), accuracies, and the median single-image latency each
export measured. Exports are kept in ``--work``; ``--json`` saves each finished row and a rerun skips them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgetl import Run, evaluate, export, predict
from edgetl.exporters import ValidationFailed
from edgetl.exporters.inference import NEAR_TIE
from edgetl.io import atomic_write_json


def agreement(a, b, margin: float = 0.0) -> tuple[float, int]:
    """Top-1 agreement of two Predictions over the same images, counting only those where ``a``'s two most probable
    classes are at least ``margin`` apart; and how many images that is."""
    pairs = [(x, y) for x, y in zip(a.rows, b.rows) if x.top[0][1] - x.top[1][1] >= margin]
    return float(np.mean([x.top[0][0] == y.top[0][0] for x, y in pairs])), len(pairs)


def measure(run: Path, fmt: str, args, log) -> dict:
    name = Run.load(run).model_name
    work = Path(args.work) / f"{run.name}-{fmt}"
    exports = {}
    for kind, options in (("fp32", {}), ("int8", {"quantize": "int8", "calibration": args.calibration,
                                                    "calibration_images": args.calibration_images})):
        try:
            exports[kind] = export(run, fmt, work / kind, inference=True, log=log, **options)
        except ValidationFailed as exc:  # kept and reported: the ✗ is a result
            exports[kind] = exc.result
    scores = {kind: evaluate(work / kind, args.data) for kind in exports}
    torch_score = evaluate(run, args.data)
    preds = {kind: predict(work / kind, [args.data], top_k=2) for kind in exports}
    decided, n_decided = agreement(preds["fp32"], preds["int8"], NEAR_TIE)
    size = {kind: r.manifest.size_bytes for kind, r in exports.items()}
    latency = {kind: r.manifest.latency for kind, r in exports.items()}
    (check,) = exports["int8"].validation.checks
    return {"run": str(run), "model": name, "format": fmt, "fp32_bytes": size["fp32"],
            "int8_bytes": size["int8"], "ratio": size["int8"] / size["fp32"],
            "fp32_check_ok": exports["fp32"].validation.ok,
            "fp32_max_logit_diff": exports["fp32"].validation.checks[0].max_diff,
            "int8_check": check.as_dict(), "test_images": scores["fp32"].images,
            "agreement_test": agreement(preds["fp32"], preds["int8"])[0], "agreement_test_decided": decided,
            "test_images_decided": n_decided,
            "top1_pytorch": torch_score.top1, "top1_fp32": scores["fp32"].top1, "top1_int8": scores["int8"].top1,
            "latency_ms_fp32": latency["fp32"]["median_single_image_ms"],
            "latency_ms_int8": latency["int8"]["median_single_image_ms"], "threads": latency["fp32"]["threads"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a trained run (repeatable)")
    ap.add_argument("--formats", default="tflite,onnx")
    ap.add_argument("--calibration", required=True, help="images to calibrate on (an ImageFolder: its accuracy change)")
    ap.add_argument("--calibration-images", type=int, default=200)
    ap.add_argument("--data", required=True, help="labelled test images, DIR/<class>/*")
    ap.add_argument("--work", default="bench-inference")
    ap.add_argument("--json", help="save each row as it finishes; a rerun skips the rows it holds")
    args = ap.parse_args()
    console = Console()
    saved = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {"rows": []}
    done = {(r["run"], r["format"]) for r in saved["rows"]}
    for run in map(Path, args.run):
        for fmt in args.formats.split(","):
            if (str(run), fmt) in done:
                continue
            console.print(f"[dim]{run} {fmt}[/]")
            saved["rows"].append(measure(run, fmt, args, lambda line: console.print(f"[dim]  {line}[/]")))
            if args.json:
                atomic_write_json({"settings": {k: v for k, v in vars(args).items() if k != "run"}, **saved}, args.json)
    table = Table(title=f"inference exports: int8 calibrated on {args.calibration_images} images of {args.calibration}, "
                        f"tested on {args.data}")
    for col in ("model", "format", "fp32 MiB", "int8 MiB", "int8 / fp32", "fp32 vs PyTorch", "int8 agreement (check: decided)",
                "int8 agreement (test)", f"(test, fp32 margin >= {NEAR_TIE})", "top-1 PyTorch", "top-1 fp32",
                "top-1 int8", "ms fp32", "ms int8"):
        table.add_column(col, justify="left" if col in ("model", "format") else "right")
    for r in saved["rows"]:
        c = r["int8_check"]
        table.add_row(r["model"], r["format"], f"{r['fp32_bytes'] / 2**20:.2f}", f"{r['int8_bytes'] / 2**20:.2f}",
                      f"{r['ratio']:.3f}", f"{'✓' if r['fp32_check_ok'] else '✗'} {r['fp32_max_logit_diff']:.1e}",
                      f"{'✓' if c['ok'] else '✗'} {1 - c['max_diff']:.1%}", f"{r['agreement_test']:.1%}",
                      f"{r['agreement_test_decided']:.1%} of {r['test_images_decided']}",
                      f"{r['top1_pytorch']:.1%}", f"{r['top1_fp32']:.1%}", f"{r['top1_int8']:.1%}",
                      f"{r['latency_ms_fp32']:.2f}", f"{r['latency_ms_int8']:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
