"""The fleet's rounds, run by the ServerApp on the laptop: handshake, sampling, aggregation, evaluation, saving.

    serve(grid, "runs/fleet/.fleet/config.json")     # called by fab/server_app.py inside flwr-serverapp

Aggregation is Flower's own strategy (``FedAvg`` weighted by ``num-examples``, ``FedAdam``, ``FedProx``) over
``ArrayRecord``s of the travelling tensors (:mod:`edgetl.fleet.params`). Before the first round every node is
asked what it holds (a ``query`` message): a node whose manifest or runtime differs from the fleet's is refused
with the reason (:class:`Admission`). Node ids that appear later (a device whose SuperNode the orchestrator
restarted, or one that joined late) get the same handshake at the start of the next round and are admitted.
A round sends to the eligible nodes and waits ``round_timeout`` seconds; it counts when at least ``min_devices``
answered (the others are named as lost, and as rejoined when they answer again), else the global model stays.
With fewer than ``min_devices`` eligible nodes connected, or a device the orchestrator is restarting not back
yet (``returning.json``; one round per restart waits for it), a round first waits up to ``join_timeout`` seconds
for devices to come back; with too few it is then skipped.

After every round the global tensors are written atomically (``global.npz`` then ``state.json``), so a fleet
run stopped at any point resumes from the last round saved. Each round's record is appended to
``rounds.jsonl``, which the orchestrator follows to show the live table. At the end the global model is
written as a normal edgetl run directory.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np

STATE, GLOBAL, ROUNDS, DONE = "state.json", "global.npz", "rounds.jsonl", "done.json"
#: the devices whose SuperNode the orchestrator is restarting (JSON: label -> restart attempt): the next round
#: waits for them, once per attempt
RETURNING = "returning.json"


def _record(work: Path, record: dict) -> None:
    with open(work / ROUNDS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_global(work: Path, arrays: dict[str, np.ndarray], round_: int) -> None:
    """The global tensors after ``round_``, atomically: the arrays first, then the state that names them."""
    tmp = work / (GLOBAL + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, work / GLOBAL)
    from ..io import atomic_write_json

    atomic_write_json({"round": round_}, work / STATE)


def load_global(work: Path) -> tuple[dict[str, np.ndarray], int] | None:
    if not (work / STATE).exists() or not (work / GLOBAL).exists():
        return None
    state = json.loads((work / STATE).read_text())
    with np.load(work / GLOBAL, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, int(state["round"])


def make_strategy(name: str, min_devices: int, fraction: float, options: dict):
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    common = {"fraction_train": fraction, "fraction_evaluate": 0.0, "min_train_nodes": min_devices,
              "min_available_nodes": min_devices}
    strategies = {
        "fedavg": lambda: FedAvg(**common),
        "fedadam": lambda: FedAdam(**common, eta=float(options.get("eta", 1e-2)),
                                   eta_l=float(options.get("eta_l", 1e-2)), tau=float(options.get("tau", 1e-3))),
        "fedprox": lambda: FedProx(**common, proximal_mu=float(options.get("mu", 0.01))),
    }
    return strategies[name]()


class _Eligible:
    """The grid as the strategy sees it: only the nodes accepted at the handshake and still connected."""

    def __init__(self, grid, accepted: set[int]):
        self._grid, self._accepted = grid, accepted

    def get_node_ids(self):
        return [n for n in self._grid.get_node_ids() if n in self._accepted]

    def __getattr__(self, name):
        return getattr(self._grid, name)


class Evaluator:
    """PyTorch evaluation of the global tensors on the held-out set (the source run's model, tensors replaced)."""

    def __init__(self, config: dict):
        import torch

        from ..data import held_out, load_datasets
        from ..run import Run

        self.torch = torch
        self.run = Run.load(config["source_run"])
        self.state = {k: v.clone() for k, v in self.run.model.state_dict().items()}
        seed = int(config.get("seed", 0))
        if config.get("eval_held_out"):  # data the user named as held out, classes matched by name: evaluated whole
            val, _ = held_out(config["eval_data"], self.run.resolution, seed, class_names=self.run.class_names)
            n = len(val)
        else:  # the run's own data: its validation split, at most eval_size images of it
            _, val, _ = load_datasets(config["eval_data"], self.run.resolution, seed=seed)
            n = min(len(val), int(config.get("eval_size") or len(val)))
        self.loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val, range(n)), batch_size=64)

    def load(self, arrays: dict[str, np.ndarray]):
        state = dict(self.state)
        state.update({k: self.torch.from_numpy(np.asarray(v, np.float32)) for k, v in arrays.items()})
        self.run.model.load_state_dict(state)
        return self.run.model

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict:
        model = self.load(arrays).eval()
        correct = total = 0
        loss = 0.0
        with self.torch.no_grad():
            for x, y in self.loader:
                logits = model(x)
                loss += float(self.torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
        return {"eval_acc": correct / total, "eval_loss": loss / total, "eval_images": total}


class Admission:
    """Which Flower nodes take part, and which device each one is (its label: the device URI).

    ``handshake(nodes)`` asks nodes what they hold (a ``query`` message) and accepts those whose manifest and
    runtime match the fleet's; a refused node is never asked again. It runs before the first round for every
    node, and at the start of every round for the node ids that appeared since: a device whose SuperNode was
    restarted comes back under a new node id and is readmitted, its old id retired.
    """

    def __init__(self, grid, config: dict, work: Path):
        self.grid, self.config, self.work = grid, config, work
        self.accepted: set[int] = set()
        self.seen: set[int] = set()
        self.labels: dict[int, str] = {}
        self.away: set[str] = set()  # devices lost in a round that have not answered since
        self.waited: set[tuple[str, int]] = set()  # restarts a round already waited for, in vain

    def label(self, node: int) -> str:
        return self.labels.get(node) or str(node)

    def wait_for(self, want: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(list(self.grid.get_node_ids())) < want and time.monotonic() < deadline:
            time.sleep(0.5)

    def returning(self) -> set[tuple[str, int]]:
        """(label, attempt) of the restarts the orchestrator announced (``returning.json``) whose device is not
        connected under an accepted id yet, and that no round has waited for already."""
        try:
            restarts = dict(json.loads((self.work / RETURNING).read_text()))
        except (OSError, ValueError, TypeError):
            return set()
        connected = {self.labels.get(n) for n in self.grid.get_node_ids() if n in self.accepted}
        return {(label, int(attempt)) for label, attempt in restarts.items() if label not in connected} - self.waited

    def new_nodes(self) -> list[int]:
        return [n for n in self.grid.get_node_ids() if n not in self.seen]

    def handshake(self, nodes: list[int], timeout: float) -> dict:
        """Ask ``nodes`` what they hold; the record of who was accepted, refused, and which old ids were retired."""
        from flwr.app import ConfigRecord, Message, RecordDict

        self.seen.update(nodes)
        messages = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type="query", dst_node_id=n)
                    for n in nodes]
        replies = self.grid.send_and_receive(messages, timeout=timeout) if messages else []
        accepted, refused, retired, answered = [], [], [], set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                refused.append({"node": node, "reason": f"it did not answer the handshake: {reply.error.reason}"})
                continue
            facts = dict(reply.content["facts"])
            self.labels[node] = label = str(facts.get("label", ""))
            reason = refusal(facts, self.config)
            if reason:
                refused.append({"node": node, "label": label, "reason": reason})
                continue
            # one SuperNode per device: a new node with a known device's label replaced the old one, which died
            old = [n for n in self.accepted if label and self.labels.get(n) == label]
            self.accepted.difference_update(old)
            retired += old
            self.accepted.add(node)
            accepted.append(node)
        for node in nodes:
            if node not in answered:  # no reply at all: ask again next round
                self.seen.discard(node)
        return {"nodes": len(nodes), "accepted": sorted(accepted), "retired": sorted(retired), "refused": refused,
                "labels": {str(n): self.labels[n] for n in nodes if n in self.labels}}

    def settle(self, answered: list[int], lost: list[int]) -> list[str]:
        """After a round: the devices that answered again after being lost (rejoined); remember who was lost."""
        back = [self.label(n) for n in answered if self.label(n) in self.away]
        self.away.difference_update(back)
        self.away.update(self.label(n) for n in lost)
        return back


def refusal(facts: dict, config: dict) -> str | None:
    """Why a node's facts (its ``query`` answer) keep it out of the fleet, or None."""
    if facts.get("error"):
        return str(facts["error"])
    if facts.get("manifest-sha256") != config["manifest_sha256"]:
        return (f"its artifacts differ from the fleet's (manifest sha256 {str(facts.get('manifest-sha256'))[:12]}, "
                f"the fleet's {config['manifest_sha256'][:12]}): push the fleet's artifacts to it")
    if facts.get("runtime-version") == "missing":
        return f"it has no {facts.get('runtime')} runtime: run `edgetl devices setup DEVICE --fleet`"
    return None


def serve(grid, config_path: str) -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from .params import arrays_bytes, initial_arrays

    config = json.loads(Path(config_path).read_text())
    work = Path(config["work"])
    random.seed(int(config.get("seed", 0)))
    evaluator = Evaluator(config)
    names = config["travelling"]
    saved = load_global(work) if config.get("resume") else None
    arrays, start = saved if saved else (initial_arrays(evaluator.state, names), 0)
    if not saved:
        save_global(work, arrays, 0)
        _record(work, {"event": "start", "round": 0, **evaluator(arrays)})
    admission = Admission(grid, config, work)
    join_timeout = float(config.get("join_timeout", 120))
    admission.wait_for(int(config["devices"]), join_timeout)
    _record(work, {"event": "handshake", **admission.handshake(list(grid.get_node_ids()), join_timeout)})
    min_devices = int(config["min_devices"])
    strategy = make_strategy(config["strategy"], min_devices, float(config["fraction"]), config.get("strategy_options", {}))
    eligible = _Eligible(grid, admission.accepted)
    current = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    for round_ in range(start + 1, int(config["rounds"]) + 1):
        t0 = time.monotonic()
        joined = []

        def admit_new():  # a device that came back (its SuperNode restarted) or joined late: the checks of the start
            new = admission.new_nodes()
            if new:
                admit = admission.handshake(new, min(join_timeout, float(config["round_timeout"])))
                _record(work, {"event": "admit", "round": round_, **admit})
                joined.extend(admission.label(n) for n in admit["accepted"])

        admit_new()
        live = eligible.get_node_ids()
        deadline = time.monotonic() + join_timeout
        # too few, or a restarted device not back yet: wait for it, so that it rejoins at this round
        while (len(live) < min_devices or admission.returning()) and time.monotonic() < deadline:
            time.sleep(1)
            admit_new()
            live = eligible.get_node_ids()
        admission.waited.update(admission.returning())  # one that did not come back delays no later round
        if len(live) < min_devices:
            _record(work, {"event": "round", "round": round_, "sampled": [], "answered": [], "lost": [], "joined": joined,
                           "skipped": f"{len(live)} eligible device(s) connected after {join_timeout:.0f} s, fewer than "
                                      f"--min-devices {min_devices}"})
            continue
        train_config = ConfigRecord({"local-steps": int(config["local_steps"]), "seed": int(config.get("seed", 0)),
                                     "manifest-sha256": config["manifest_sha256"], "lr": float(config.get("lr") or 0.0)})
        messages = list(strategy.configure_train(round_, current, train_config, eligible))
        sampled = [m.metadata.dst_node_id for m in messages]
        sent = sum(arrays_bytes({k: v.numpy() for k, v in m.content["arrays"].items()}) for m in messages)
        replies = list(grid.send_and_receive(messages, timeout=float(config["round_timeout"])))
        good = [r for r in replies if not r.has_error()]
        answered = [r.metadata.src_node_id for r in good]
        lost = [n for n in sampled if n not in answered]
        received = sum(arrays_bytes({k: v.numpy() for k, v in r.content["arrays"].items()}) for r in good)
        record = {"event": "round", "round": round_, "sampled": sampled, "answered": answered, "lost": lost,
                  "errors": {str(r.metadata.src_node_id): r.error.reason for r in replies if r.has_error()},
                  "bytes_sent": sent, "bytes_received": received,
                  "bytes_per_device": sent // max(len(sampled), 1),
                  "answered_devices": [admission.label(n) for n in answered],
                  "lost_devices": [admission.label(n) for n in lost], "joined": joined,
                  "rejoined": admission.settle(answered, lost)}
        if len(good) < min_devices:
            record["skipped"] = f"{len(good)} device(s) answered, fewer than --min-devices {min_devices}: the global model stays"
        else:
            agg, metrics = strategy.aggregate_train(round_, good)
            current = agg
            arrays = {k: v.numpy() for k, v in agg.items()}
            examples = [float(r.content["metrics"]["num-examples"]) for r in good]
            losses = [float(r.content["metrics"]["train-loss"]) for r in good]
            record.update(train_loss=float(np.average(losses, weights=examples)), examples=dict(
                zip(map(str, answered), map(int, examples))))
            save_global(work, arrays, round_)
            if config.get("keep_client_arrays"):  # tests recompute the aggregate from what the clients sent
                np.savez(work / f"clients-{round_}.npz", **{f"{r.metadata.src_node_id}/{k}": v.numpy()
                                                            for r in good for k, v in r.content["arrays"].items()})
                np.savez(work / f"global-{round_}.npz", **arrays)
        record.update(evaluator(arrays))
        record["seconds"] = time.monotonic() - t0
        _record(work, record)
    saved = load_global(work)
    model = evaluator.load(saved[0] if saved else arrays)
    from ..run import Run

    run = evaluator.run
    Run(model, run.model_name, run.policy, run.class_names, run.resolution, run.optimizer,
        config={"fleet": {k: config[k] for k in ("rounds", "local_steps", "strategy", "min_devices", "fraction")},
                "source_run": config["source_run"], "data": config.get("eval_data")}).write(config["out"])
    from ..io import atomic_write_json

    atomic_write_json({"round": saved[1] if saved else 0}, work / DONE)
