"""Parity matrix: every model x policy x format exported and validated against PyTorch, one cell per check.

    python bench/parity.py                                           # all of it: 3 models x 6 policies x 2 formats
    python bench/parity.py --models mobilenet_v2 --policies full --formats tflite --json v2-full.json
    python bench/parity.py --models mobilenet_v2 --policies ft:5,mobiletl:5 --train-epochs 1

Each export is made as ``edgetl export`` makes it (batch 8 and 224 x 224 unless told otherwise) from a run
with random weights and batch-norm statistics from data (as the tests' ``make_run``), or, with
``--train-epochs N``, from weights trained N epochs on the built-in ``patterns`` data with every layer trained
(one ``edgetl train --policy full`` run per model, kept in ``--work``), each policy applied to them. The table
shows each export's checks (``edgetl/exporters/validation.py``) as ✓/✗ with its margin, error / tolerance (a check
passes at margin <= 1), and, for a failed export, where it departs layer by layer (TFLite). The full matrix
is 36 exports of a few minutes each: pick a subset to run it in pieces, each writing its own JSON.
With ``--json``, every finished cell is saved at once, and a rerun with the same settings skips the cells
the file already holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from exportutil import make_run  # noqa: E402

from edgetl.exporters import ExportError, export  # noqa: E402
from edgetl.io import atomic_write_json  # noqa: E402

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
POLICIES = ["full", "last", "bn+last", "bias", "ft:5", "mobiletl:5"]
FORMATS = ["onnx", "tflite"]
#: column -> how a check's name starts (validation.py names them)
CHECKS = {"logits": "inference logits", "losses": "training losses", "gradients": "gradients",
          "statistics": "running statistics", "optimizer": "one "}


def _split(values: list[str] | None, default: list[str]) -> list[str]:
    return [v for arg in values for v in arg.split(",") if v] if values else default


def make_trained_run(root: Path, model: str, policy: str, args) -> Path:
    """A run with ``policy`` applied to weights trained ``args.train_epochs`` epochs on ``patterns`` with every
    layer trained (``edgetl train --policy full``): trained once per model and kept in ``--work``, so that every
    policy starts from the same trained weights (their batch-norm statistics included) and a rerun trains no more."""
    from edgetl import Run, apply_policy, create_model, train
    from edgetl.run import read_checkpoint

    trained = Path(args.work) / f"trained-{model}-{args.resolution}px-{args.train_epochs}ep"
    status = json.loads((trained / "run.json").read_text())["status"] if (trained / "run.json").exists() else None
    if status != "finished":  # an interrupted training continues from its last checkpoint
        train(model=model, policy="full", data="patterns", weights="none", epochs=args.train_epochs,
              batch_size=args.batch_size, resolution=args.resolution, out=str(trained),
              resume=(trained / "checkpoint.pt").exists())
    base = Run.load(trained)
    net = create_model(model, len(base.class_names))
    net.load_state_dict(read_checkpoint(trained)["state_dict"])
    apply_policy(net, policy)
    Run.save(net, policy, None, root, class_names=base.class_names, resolution=args.resolution,
             optimizer=base.optimizer, config={"data": "patterns", "trained_from": str(trained)})
    return root


def run_cell(work: Path, model: str, policy: str, fmt: str, args) -> dict:
    """Export one cell and return its checks (as the manifest stores them) and timing."""
    tag = f"{model}-{policy.replace(':', '').replace('+', '')}"
    run = work / f"run-{tag}"
    if not run.exists():
        if args.train_epochs:
            make_trained_run(run, model, policy, args)
        else:
            make_run(run, model, policy, resolution=args.resolution)
    t0 = time.perf_counter()
    error = None
    out = work / f"{tag}-{fmt}"
    try:
        export(run, fmt, out, steps=args.steps, batch_size=args.batch_size)
    except ExportError as exc:  # a failed check: the manifest still holds every check
        error = str(exc)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    validation = manifest.get("validation", {})
    return {"model": model, "policy": policy, "format": fmt, "ok": error is None and bool(validation.get("ok")),
            "checks": validation.get("checks", []), "layers": validation.get("layers"), "error": error,
            "seconds": time.perf_counter() - t0}


def cell_text(check: dict | None) -> str:
    if check is None:
        return "·"
    margin = check["max_diff"] / check["tolerance"] if check["tolerance"] else float("inf")
    mark = "[green]✓[/]" if check["ok"] else "[red]✗[/]"
    return f"{mark} {margin:.2f}"


def table(results: list[dict], title: str) -> Table:
    t = Table(title=title)
    for col in ("model", "policy", "format", *CHECKS, "worst", "s"):
        t.add_column(col, justify="left" if col in ("model", "policy", "format") else "right")
    t.add_column("where it departs (failed exports)", overflow="fold")
    for r in results:
        by_kind = {k: next((c for c in r["checks"] if c["name"].startswith(prefix)), None) for k, prefix in CHECKS.items()}
        margins = [c["max_diff"] / c["tolerance"] for c in r["checks"] if c["tolerance"]]
        worst = f"{'[green]✓[/]' if r['ok'] else '[red]✗[/]'} {max(margins):.2f}" if margins else "[red]✗[/]"
        note = (r["layers"] or {}).get("summary", "") or ("" if r["ok"] else (r["error"] or "")[:300])
        t.add_row(r["model"], r["policy"], r["format"], *(cell_text(by_kind[k]) for k in CHECKS), worst,
                  f"{r['seconds']:.0f}", note)
    return t


def _resume(path: str | None, header: dict) -> dict[tuple, dict]:
    """Cells already in ``path`` from a run with the same settings, by (model, policy, format)."""
    if not path or not Path(path).exists():
        return {}
    saved = json.loads(Path(path).read_text())
    if any(saved.get(k) != v for k, v in header.items()):
        raise SystemExit(f"{path} holds a matrix with other settings ({ {k: saved.get(k) for k in header} }); "
                         f"remove it or write elsewhere with --json")
    return {(c["model"], c["policy"], c["format"]): c for c in saved.get("cells", [])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", action="append", help=f"comma-separated (default: {','.join(MODELS)})")
    ap.add_argument("--policies", action="append", help=f"comma-separated (default: {','.join(POLICIES)})")
    ap.add_argument("--formats", action="append", help=f"comma-separated (default: {','.join(FORMATS)})")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="teacher-forced validation steps per export")
    ap.add_argument("--train-epochs", type=int, default=0, help="train the runs first (default: random weights)")
    ap.add_argument("--json", help="write every cell's checks here")
    ap.add_argument("--work", default="parity-work", help="where the trained runs are kept (--train-epochs)")
    args = ap.parse_args(argv)
    models, policies, formats = (_split(args.models, MODELS), _split(args.policies, POLICIES),
                                 _split(args.formats, FORMATS))
    for name, chosen, known in (("model", models, MODELS), ("policy", policies, POLICIES), ("format", formats, FORMATS)):
        unknown = [c for c in chosen if c not in known and not (name == "policy" and ":" in c)]
        if unknown:
            ap.error(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(known)}")
    console = Console(width=220)
    header = {"batch_size": args.batch_size, "resolution": args.resolution, "steps": args.steps,
              "train_epochs": args.train_epochs}
    done = _resume(args.json, header)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgetl-parity-") as tmp:
        for model in models:
            for policy in policies:
                for fmt in formats:
                    key = (model, policy, fmt)
                    resumed = key in done
                    r = done.pop(key) if resumed else run_cell(Path(tmp), model, policy, fmt, args)
                    results.append(r)
                    took = f"from {args.json}" if resumed else f"{r['seconds']:.0f}s"
                    console.print(f"{model} {policy} {fmt}: {'ok' if r['ok'] else 'FAILED'} ({took})")
                    if args.json:  # after every cell, so that an interrupted matrix resumes where it stopped
                        atomic_write_json({**header, "cells": [*results, *done.values()]}, args.json)
    weights = f"trained {args.train_epochs} epoch(s)" if args.train_epochs else "random weights"
    console.print(table(results, f"parity, batch {args.batch_size}, {args.resolution}x{args.resolution}, {weights}: "
                                 f"margin = error / tolerance per check"))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
