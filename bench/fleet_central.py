"""A fleet run against centralised training on the union of its shards, with the same total number of steps.

    python bench/fleet_central.py runs/fleet shards/          # after `edgetl fleet run ... --data shards/ --out runs/fleet`

The centralised side trains the same export with the same device runner (the fleet's ClientApp trains with it
too) on every shard's images together, for rounds x local steps x devices steps at the export's batch size,
starting from the same weights; both are evaluated by the fleet server's own PyTorch evaluation, on the same
held-out images. Prints one table: the fleet's accuracy per round, its final accuracy, the centralised one.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgetl.fleet.params import initial_arrays  # noqa: E402
from edgetl.fleet.server import Evaluator  # noqa: E402


def central(config: dict, shards: Path, artifacts: Path) -> dict:
    import importlib

    manifest = json.loads((artifacts / "manifest.json").read_text())
    sys.path.insert(0, str(artifacts))
    runner = importlib.import_module({"onnxruntime-training": "edgetl.runtime.ort_runner",
                                      "ai-edge-litert": "edgetl.runtime.tflite_runner"}[manifest["runtime"]])
    data = importlib.import_module("edgetl.runtime.runner_data")
    files = sorted(shards.glob("*.npz"))[: int(config["devices"])]
    images = np.concatenate([np.load(f)["images"] for f in files])
    labels = np.concatenate([np.load(f)["labels"] for f in files])
    steps = int(config["rounds"]) * int(config["local_steps"]) * len(files)
    evaluator = Evaluator(config)
    session = runner.Session(str(artifacts))
    start = initial_arrays(evaluator.state, config["travelling"])
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "union.npz", images=images, labels=labels)
        split, _, _ = data.open_data(manifest, data=str(Path(tmp) / "union.npz"))
        state = runner.common.fit(session, split, steps=steps, seed=int(config.get("seed", 0)))
    trained = session.trained()
    result = evaluator({k: trained[k] for k in start})
    return {"steps": steps, "images": int(len(labels)), "final_loss": float(np.mean(state["losses"][-10:])), **result}


def main() -> None:
    out, shards = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((out / ".fleet" / "config.json").read_text())
    report = json.loads((out / "fleet.json").read_text())
    artifacts = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(config["artifacts"])
    c = central(config, shards, artifacts)
    table = Table("", "steps", "eval accuracy", title="fleet (FedAvg) vs centralised on the union, same total steps")
    table.add_row("start", "0", f"{100 * report['initial_eval']['eval_acc']:.1f}%")
    for r in report["rounds"]:
        table.add_row(f"fleet round {r['round']}", str(r["round"] * config["local_steps"] * len(r["answered"])),
                      f"{100 * r['eval_acc']:.1f}%")
    table.add_row("centralised", str(c["steps"]), f"{100 * c['eval_acc']:.1f}%")
    Console(width=120).print(table)
    print(json.dumps({"fleet_final": report["final_eval_acc"], "central": c}))


if __name__ == "__main__":
    main()
