"""What one fleet round sends per device, against sending the whole model, from real exports.

    python bench/fleet_bytes.py                                  # MobileNetV2 and V3-Small, mobiletl:5, 224 x 224
    python bench/fleet_bytes.py --policy mobiletl:3 --format tflite --classes 10

For each model a run is made (random weights: sizes do not depend on them), exported (no validation: only the
manifest's tensors are read), and the tensors a fleet round exchanges (``edgetl.fleet.travelling``: the policy's
trainable parameters and the running statistics of fully trained norms) are summed as float32, once each way,
against every float tensor of the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from exportutil import make_run  # noqa: E402

from edgetl.exporters import export  # noqa: E402
from edgetl.fleet.params import model_bytes, travelling  # noqa: E402
from edgetl.run import Run  # noqa: E402


def measure(model: str, policy: str, fmt: str, resolution: int, classes: int, root: Path) -> dict:
    run = make_run(root / f"{model}-run", model, policy, resolution=resolution, optimizer="sgd", lr=0.01,
                   class_names=[f"c{i}" for i in range(classes)])
    art = root / f"{model}-{fmt}"
    export(run, fmt, art, batch_size=8, validate=False)
    manifest = json.loads((art / "manifest.json").read_text())
    state = Run.load(run).model.state_dict()
    names = travelling(manifest)
    sent = sum(state[n].numel() * 4 for n in names)
    return {"model": model, "policy": policy, "format": fmt, "tensors": len(names),
            "trainable_params": sum(state[n].numel() for n in manifest["trainable"]),
            "bytes_per_device_each_way": sent, "whole_model_bytes": model_bytes(state),
            "ratio": sent / model_bytes(state)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_small"])
    p.add_argument("--policy", default="mobiletl:5")
    p.add_argument("--format", default="onnx")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(m, args.policy, args.format, args.resolution, args.classes, Path(tmp)) for m in args.models]
    table = Table("model", "policy", "tensors", "trainable params", "per device each way", "whole model", "ratio",
                  title=f"fleet round message, {args.format} export at {args.resolution}, {args.classes} classes")
    for r in rows:
        table.add_row(r["model"], r["policy"], str(r["tensors"]), f"{r['trainable_params']:,}",
                      f"{r['bytes_per_device_each_way'] / 2**20:.2f} MiB", f"{r['whole_model_bytes'] / 2**20:.2f} MiB",
                      f"{100 * r['ratio']:.1f}%")
    Console(width=140).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
