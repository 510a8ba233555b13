"""The fleet report: ``fleet.json`` (settings, per-round records, bytes, devices lost and rejoined, SuperNode
restarts) and ``fleet.png`` (accuracy and bytes per round), written beside the global model's run directory.

    report = write_report("runs/fleet", records, config, manifest)
"""

from __future__ import annotations

from pathlib import Path

from ..exporters.manifest import Manifest
from ..io import atomic_write_json


def write_report(out, records: list[dict], config: dict, manifest: Manifest, refused: list[dict] | None = None,
                 restarts: list[dict] | None = None) -> dict:
    out = Path(out)
    rounds = [r for r in records if r.get("event") == "round"]
    start = next((r for r in records if r.get("event") == "start"), None)
    handshakes = [r for r in records if r.get("event") == "handshake"]
    travelling = config["travelling"]
    whole = _whole_model_bytes(config["source_run"])
    per_device = _travelling_bytes(config["source_run"], travelling)
    lost = [{"round": r["round"], "lost": r["lost"], "devices": r.get("lost_devices", []), "errors": r.get("errors", {})}
            for r in rounds if r.get("lost")]
    rejoined = [{"round": r["round"], "devices": r["rejoined"]} for r in rounds if r.get("rejoined")]
    report = {
        "format": "edgetl.fleet/1", "artifacts_format": manifest.format, "model": manifest.model,
        "policy": manifest.policy,
        "settings": {k: config.get(k) for k in ("rounds", "local_steps", "min_devices", "fraction", "strategy",
                                                "strategy_options", "seed", "eval_data", "devices", "restarts")},
        "message": {"tensors": len(travelling), "bytes_per_device_per_direction": per_device,
                    "whole_model_bytes": whole, "ratio_to_whole_model": per_device / whole if whole else None},
        "initial_eval": start, "rounds": rounds, "lost": lost, "rejoined": rejoined, "restarts": restarts or [],
        "refused": refused if refused is not None else [r for h in handshakes for r in h["refused"]],
        "final_eval_acc": rounds[-1].get("eval_acc") if rounds else None,
    }
    atomic_write_json(report, out / "fleet.json")
    if rounds:
        plot(report, out / "fleet.png")
    return report


def _state(run: str):
    from ..run import read_checkpoint  # weights only: a run directory received from anyone runs no code

    return read_checkpoint(run)["state_dict"]


def _whole_model_bytes(run: str) -> int:
    from .params import model_bytes

    return model_bytes(_state(run))


def _travelling_bytes(run: str, names: list[str]) -> int:
    state = _state(run)
    return int(sum(state[n].numel() * 4 for n in names if n in state))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    xs = [r["round"] for r in rounds]
    acc = [r.get("eval_acc") for r in rounds]
    if report.get("initial_eval"):
        xs, acc = [0] + xs, [report["initial_eval"]["eval_acc"]] + acc
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=80)
    a.plot(xs, [100 * v if v is not None else float("nan") for v in acc], marker="o")
    a.set_xlabel("round")
    a.set_ylabel("server eval accuracy (%)")
    a.set_title(f"{report['model']} {report['policy']}")
    a.grid(alpha=0.3)
    for r in report["lost"]:
        a.axvline(r["round"], color="red", alpha=0.3)
    b.bar([r["round"] for r in rounds], [(r.get("bytes_sent", 0) + r.get("bytes_received", 0)) / 2**20 for r in rounds])
    whole = report["message"]["whole_model_bytes"]
    b.set_xlabel("round")
    b.set_ylabel("MiB sent + received")
    b.set_title(f"{100 * report['message']['ratio_to_whole_model']:.1f}% of the model per device" if whole else "")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
