"""The accuracy bench: transfer learning on real photographs, every policy, several seeds, laptop and device.

    python bench/transfer.py                                   # the default below: about an hour on a 2-core laptop
    python bench/transfer.py --seeds 1 --policies ft:5,mobiletl:5 --epochs 2 --train-per-class 200   # minutes
    python bench/transfer.py --model mobilenet_v2 --json v2.json --plot v2.png
    python bench/transfer.py --weights imagenet               # the paper's protocol (see below)

Default (no ImageNet weights needed): MobileNetV3-Small at 64 x 64 is pretrained from random weights with
``full`` on CIFAR-10's classes 0-4 (airplane, automobile, bird, cat, deer: the source task, ``--source-epochs``),
then transferred to the disjoint classes 5-9 (dog, frog, horse, ship, truck: the target task) with each policy,
from the same source weights and, per seed, the same new head: the start is saved once per seed as a run
(``start-s<seed>``) and every policy trains from it (``edgetl train --weights START``), ``--epochs`` epochs, AdamW
at its default rate with the run's cosine schedule, batch ``--batch-size``, ``--augment flip`` (the inputs as
evaluated, flipped half the time: the augmentation a device runner has, so both legs see the same). The number
is the target test accuracy after the last epoch (300 test photographs per class), as the run's ``metrics.json``
holds it. Beside it, per policy, the profiler's training memory and FLOPs of one step at that batch size.

The device leg: ``mobiletl:5`` and ``ft:5`` (``--device-policies``) are also trained by the TFLite runner on a
``local://`` device, through ``edgetl deploy --device-data`` (the target's training images, decoded on the
device) with the same start, epochs, batch, schedule, augmentation and seed (so the same batches: the trainer
draws its order and flips as the runner does), and a held-out ``--eval-data`` (the
target's test images) judged there before and after; the device's weights are evaluated here with ``edgetl
evaluate`` on the same test images: laptop and device accuracy side by side.

``--weights imagenet`` (or a ``.pth``) follows the paper's protocol instead: no pretraining, CIFAR-10's ten
classes as the target at ``--resolution`` (use 224), the given weights as every policy's start.

Everything lives in ``--work`` (default ``bench-transfer/``): the unpacked photographs, the source run, the
starts, one run (and deploy result) per cell. Each cell is saved to ``--json`` as it finishes and a rerun skips
it; an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT.parent / "shared" / "data" / "cifar10-subset.tar"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
POLICIES = ["last", "bias", "bn+last", "ft:5", "mobiletl:5", "full"]


@dataclass
class Settings:
    model: str = "mobilenet_v3_small"
    resolution: int = 64
    weights: str | None = None  # None: pretrain on the source task; else imagenet or a .pth (the paper's protocol)
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    device_policies: list[str] = field(default_factory=lambda: ["ft:5", "mobiletl:5"])
    seeds: int = 3
    epochs: int = 6
    source_epochs: int = 8
    batch_size: int = 32
    augment: str = "flip"
    train_per_class: int | None = None  # None: every training image (1,000 per class)

    @property
    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("policies", "device_policies", "seeds")}


# -- data ---------------------------------------------------------------------------------------------------

def unpack(work: Path) -> Path:
    """``work/cifar10/{train,test}/<class>/*.jpg`` from the shared subset, unpacked once."""
    root = work / "cifar10"
    if not (root / "test" / CLASSES[-1]).is_dir():
        if not CIFAR_TAR.is_file():
            raise SystemExit(f"{CIFAR_TAR} is missing: the CIFAR-10 subset lives in ../shared/data")
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(work, filter="data")
    return root


def task(work: Path, cifar: Path, name: str, classes: list[str], per_class: int | None) -> Path:
    """An ImageFolder ``work/<name>/{train,test}/<class>`` of links to the photographs (``per_class`` training
    images of each class, the first by name; every test image)."""
    root = work / name
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            if d.is_dir():
                continue
            d.mkdir(parents=True)
            files = sorted((cifar / split / c).iterdir())
            for f in files[:per_class] if split == "train" and per_class else files:
                (d / f.name).symlink_to(f.resolve())
    return root


# -- the cells ----------------------------------------------------------------------------------------------

def train_run(out: Path, **settings):
    """``edgetl train`` into ``out``, resumed when a previous attempt was cut short; returns the run directory."""
    import edgetl

    status = json.loads((out / "run.json").read_text())["status"] if (out / "run.json").exists() else None
    if status != "finished":
        edgetl.train(out=str(out), resume=status == "running", command=["bench/transfer.py"],
                     **({} if status == "running" else settings))
    return out


def source_run(s: Settings, work: Path, source: Path) -> Path:
    if s.weights:
        return Path(s.weights) if s.weights != "imagenet" else None
    return train_run(work / f"source-{s.model}-{s.resolution}px-{s.source_epochs}ep", model=s.model, policy="full",
                     data=str(source), weights="none", epochs=s.source_epochs, resolution=s.resolution,
                     batch_size=s.batch_size, augment=s.augment, seed=0)


def start_run(s: Settings, work: Path, source: Path | None, classes: list[str], seed: int) -> Path:
    """The transfer's start for ``seed``: the source weights with a new head for the target classes (drawn from
    ``seed``), saved as a run so that every policy and both legs start from exactly these weights."""
    import torch

    from edgetl import OptimizerSpec, Run, apply_policy, create_model
    from edgetl.models import head, load_weights_file

    out = work / f"start-{s.model}-{s.resolution}px-s{seed}"
    if (out / "checkpoint.pt").is_file():
        return out
    torch.manual_seed(seed)
    model = create_model(s.model, len(classes), weights="imagenet" if s.weights == "imagenet" else None)
    if source is not None:
        state = load_weights_file(source, s.model)
        own_head = {f"classifier.{len(model.classifier) - 1}.{p}" for p in ("weight", "bias")}
        model.load_state_dict({k: v for k, v in state.items() if k not in own_head}, strict=False)
    assert head(model).out_features == len(classes)
    apply_policy(model, "full")
    Run.save(model, "full", None, out, class_names=classes, resolution=s.resolution, optimizer=OptimizerSpec("adamw"))
    return out


def laptop_cell(s: Settings, work: Path, target: Path, start: Path, policy: str, seed: int) -> dict:
    import edgetl

    out = train_run(work / "cells" / f"{policy.replace(':', '')}-s{seed}", model=s.model, policy=policy,
                    data=str(target), weights=str(start), epochs=s.epochs, resolution=s.resolution,
                    batch_size=s.batch_size, augment=s.augment, seed=seed)
    metrics = json.loads((out / "metrics.json").read_text())
    evaluated = edgetl.evaluate(out, target / "test")
    return {"leg": "laptop", "policy": policy, "seed": seed, "run": str(out), "accuracy": metrics["epochs"][-1]["val_acc"],
            "evaluate_top1": evaluated.top1, "test_images": evaluated.images,
            "epoch_seconds": [e["seconds"] for e in metrics["epochs"]]}


def device_cell(s: Settings, work: Path, target: Path, start: Path, policy: str, seed: int) -> dict:
    """The same transfer trained by the TFLite runner on a ``local://`` device, its weights evaluated here."""
    import edgetl
    from edgetl.devices.deploy import deploy

    run = work / "device" / f"{policy.replace(':', '')}-s{seed}"
    if not (run / "checkpoint.pt").is_file():
        model = edgetl.create_model(s.model, len(edgetl.Run.load(start).class_names), weights=str(start))
        edgetl.apply_policy(model, policy)
        edgetl.Run.save(model, policy, None, run, class_names=edgetl.Run.load(start).class_names,
                        resolution=s.resolution, optimizer=edgetl.OptimizerSpec("adamw"))
    art = run.parent / f"{run.name}-tflite"
    if not (art / "manifest.json").is_file():
        edgetl.export(run, "tflite", art, batch_size=s.batch_size)
    result = run.parent / f"{run.name}-deploy"
    if not (result / "report.json").is_file():
        deploy(art, f"local://{work / 'device-home'}", device_data=str(target / "train"), eval_data=str(target / "test"),
               epochs=s.epochs, augment="flip" if s.augment == "flip" else "none", seed=seed, out=result,
               timeout=24 * 3600)
    report = json.loads((result / "report.json").read_text())
    evaluated = edgetl.evaluate(result, target / "test")
    return {"leg": "device", "policy": policy, "seed": seed, "run": str(result), "accuracy": evaluated.top1,
            "device_top1": report["eval"]["after"]["top1"], "device_top1_before": report["eval"]["before"]["top1"],
            "test_images": evaluated.images, "steps": report["steps"], "schedule": report["schedule"]}


def costs(s: Settings, policy: str, classes: int) -> dict:
    """The profiler's training memory and FLOPs of one step of ``policy`` at the bench's batch size."""
    from edgetl.optim import OptimizerSpec
    from edgetl.profile.analytic import analyze

    totals = analyze(s.model, policy, s.resolution, classes).totals(s.batch_size, OptimizerSpec("adamw"))
    return {"training_memory_bytes": int(totals["training_memory_bytes"]), "training_flops": int(totals["training_flops"])}


# -- the table ---------------------------------------------------------------------------------------------

def summary(result: dict) -> list[dict]:
    """One row per (policy, leg): mean and standard deviation over the seeds, and the policy's costs."""
    rows = []
    for policy in result["settings"]["policies"]:
        for leg in ("laptop", "device"):
            acc = [c["accuracy"] for c in result["cells"] if c["policy"] == policy and c["leg"] == leg]
            if acc:
                rows.append({"policy": policy, "leg": leg, "seeds": len(acc), "mean": statistics.fmean(acc),
                             "std": statistics.stdev(acc) if len(acc) > 1 else 0.0, **result["costs"][policy]})
    return rows


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    table = Table(title=f"{s['model']} at {s['resolution']}x{s['resolution']}: {result['task']} - target test "
                        f"accuracy after {s['epochs']} epochs, mean ± std over seeds")
    for col in ("policy", "leg", "seeds", "accuracy %", "training memory MiB", "training GFLOPs", "vs ft:5 (points)"):
        table.add_column(col, justify="left" if col in ("policy", "leg") else "right", no_wrap=col in ("policy", "leg"))
    rows = summary(result)
    ft = {r["leg"]: r["mean"] for r in rows if r["policy"] == "ft:5"}
    for r in rows:
        vs = f"{100 * (r['mean'] - ft[r['leg']]):+.1f}" if r["leg"] in ft else "-"
        table.add_row(r["policy"], r["leg"], str(r["seeds"]), f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}",
                      f"{r['training_memory_bytes'] / 2**20:.1f}", f"{r['training_flops'] / 1e9:.2f}", vs)
    Console().print(table)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in summary(result):
        marker, colour = ("o", "tab:blue") if r["leg"] == "laptop" else ("s", "tab:orange")
        ax.errorbar(r["training_memory_bytes"] / 2**20, 100 * r["mean"], yerr=100 * r["std"], fmt=marker, color=colour,
                    capsize=3)
        ax.annotate(r["policy"] + (" (device)" if r["leg"] == "device" else ""),
                    (r["training_memory_bytes"] / 2**20, 100 * r["mean"]), textcoords="offset points",
                    xytext=(5, 4) if r["leg"] == "laptop" else (5, -11), fontsize=8)  # the legs' labels apart
    s = result["settings"]
    ax.set_xscale("log")
    ax.set_xlabel(f"training memory of one step, MiB (profiler, batch {s['batch_size']}, log scale)")
    ax.set_ylabel("target test accuracy, %")
    ax.set_title(f"{s['model']} {s['resolution']}px, {result['task']}: accuracy against memory", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(s: Settings, work: Path, json_path: Path, log=print) -> dict:
    """Every cell of ``s`` (skipping those ``json_path`` holds for the same settings); returns the result."""
    from edgetl.io import atomic_write_json

    work.mkdir(parents=True, exist_ok=True)
    cifar = unpack(work)
    per = s.train_per_class
    if s.weights:  # the paper's protocol: CIFAR-10's ten classes as the target
        source_data, target, classes = None, task(work, cifar, f"cifar10-{per or 'all'}", CLASSES, per), CLASSES
        name = "CIFAR-10 from " + s.weights
    else:
        source_data = task(work, cifar, f"source-{per or 'all'}", CLASSES[:5], per)
        target, classes = task(work, cifar, f"target-{per or 'all'}", CLASSES[5:], per), CLASSES[5:]
        name = "CIFAR-10 classes 0-4 -> 5-9"
    saved = json.loads(json_path.read_text()) if json_path.exists() else {}
    result = {"settings": {**asdict(s)}, "task": name, "cells": [], "costs": {}}
    if saved.get("settings", {}).get("model") == s.model and all(
            saved["settings"].get(k) == v for k, v in s.key.items()):
        result["cells"], result["costs"] = saved["cells"], saved.get("costs", {})
    done = {(c["policy"], c["seed"], c["leg"]) for c in result["cells"]}
    source = source_run(s, work, source_data) if source_data is not None else source_run(s, work, None)
    if source_data is not None:
        log(f"source: {source} ({json.loads((Path(source) / 'metrics.json').read_text())['best_val_acc']:.1%} on the "
            f"source task's test images)")
    for policy in s.policies:
        result["costs"].setdefault(policy, costs(s, policy, len(classes)))
    for seed in range(s.seeds):
        start = start_run(s, work, source, classes, seed)
        for policy in s.policies:
            for leg, cell in (("laptop", laptop_cell), ("device", device_cell)):
                if (policy, seed, leg) in done or (leg == "device" and policy not in s.device_policies):
                    continue
                log(f"{policy} seed {seed} on the {leg}")
                result["cells"].append(cell(s, work, target, start, policy, seed))
                atomic_write_json(result, json_path)
    atomic_write_json(result, json_path)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=Settings.model)
    ap.add_argument("--resolution", type=int, default=Settings.resolution)
    ap.add_argument("--weights", default=None, help="imagenet or a .pth: the paper's protocol (no pretraining)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--device-policies", default="ft:5,mobiletl:5", help="trained on the device too ('' for none)")
    ap.add_argument("--seeds", type=int, default=Settings.seeds)
    ap.add_argument("--epochs", type=int, default=Settings.epochs)
    ap.add_argument("--source-epochs", type=int, default=Settings.source_epochs)
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--augment", default=Settings.augment, choices=("flip", "none"))
    ap.add_argument("--train-per-class", type=int, default=None, help="training images per class [default: all]")
    ap.add_argument("--work", default="bench-transfer")
    ap.add_argument("--json", default=None, help="[default: WORK/transfer.json]")
    ap.add_argument("--plot", default=None, help="a PNG of accuracy against training memory")
    args = ap.parse_args()
    s = Settings(args.model, args.resolution, args.weights, [p for p in args.policies.split(",") if p],
                 [p for p in args.device_policies.split(",") if p], args.seeds, args.epochs, args.source_epochs,
                 args.batch_size, args.augment, args.train_per_class)
    os.environ.setdefault("EDGETL_OFFLINE", "1")  # the default setting needs no download
    work = Path(args.work)
    result = run_bench(s, work, Path(args.json or work / "transfer.json"))
    print_table(result)
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
