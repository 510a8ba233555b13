"""The fleet's ClientApp: trains the global tensors on this device's data with edgetl's runner, in-process.

Runs in the SuperNode's ``flwr-clientapp`` process with flwr, numpy and the runtime only (no torch, no edgetl).
The node's settings (``flower-supernode --node-config``) name the bundle edgetl pushed (``bundle``: artifacts,
manifest, runner files) and the data: ``data`` (a shard in the bundle) or ``device-data`` (an ImageFolder here,
which never leaves the device).

- ``query``: what this device holds (the manifest's sha256, the runtime and its version), so the server can
  refuse a device whose artifacts or runtime differ from the fleet's before any round.
- ``train``: set the travelling tensors from the message, run ``local-steps`` steps, answer with the trained
  tensors (the same names: trainable parameters and running statistics), ``num-examples`` and the loss.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _bundle(context: Context):
    """(the bundle's directory, its manifest, the manifest's sha256, its runner module, the distributions that
    provide its runtime): ``bundle.json`` names the runner and the distributions, as deploy's format registry
    gave them."""
    root = os.path.expanduser(str(context.node_config["bundle"]))
    with open(os.path.join(root, "manifest.json"), "rb") as f:
        raw = f.read()
    with open(os.path.join(root, "bundle.json")) as f:
        bundle = json.load(f)
    runner = _import_runner(root, os.path.splitext(bundle["runner"])[0])
    return root, json.loads(raw), hashlib.sha256(raw).hexdigest(), runner, bundle.get("runtime_dists", ())


def _import_runner(root: str, name: str):
    """The bundle's runner module. The runner files import each other by bare name (on a device they run as scripts,
    their directory first on ``sys.path``), so the bundle directory is on ``sys.path`` while they are imported, and
    only then (they import one another at module level only; later calls find them in ``sys.modules``)."""
    sys.dont_write_bytecode = True  # the bundle directory holds exactly the files that were verified
    sys.path.insert(0, root)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(root)


def _runtime_version(dists) -> str:
    from importlib import metadata

    for dist in dists:
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "missing"


@app.query()
def query(msg: Message, context: Context) -> Message:
    try:
        _, manifest, sha, _, dists = _bundle(context)
        facts = {"manifest-sha256": sha, "runtime": manifest["runtime"], "runtime-version": _runtime_version(dists),
                 "label": str(context.node_config.get("label", ""))}
    except Exception as exc:  # the server refuses this device with the reason
        facts = {"error": f"{type(exc).__name__}: {exc}", "label": str(context.node_config.get("label", ""))}
    return Message(content=RecordDict({"facts": ConfigRecord(facts)}), reply_to=msg)


def _set(session, arrays: dict) -> None:
    if hasattr(session, "set_state"):  # TFLite: every variable goes in through one signature call
        session.set_state({**session.state(), **arrays})
        return
    session.set_params({k: v for k, v in arrays.items() if k in session.trainable})
    session.running.update({k: v.astype(np.float32) for k, v in arrays.items() if k in session.running})


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    root, manifest, sha, runner, _ = _bundle(context)
    config = msg.content["config"]
    if config.get("manifest-sha256") not in (None, sha):
        raise RuntimeError("this device holds other artifacts than the fleet's; it was refused at start")
    received = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    runner.common.lean_heap()  # freed step buffers go back to the system, as the runner's --heap lean does
    session = runner.Session(root, lr=float(config["lr"]) if config.get("lr") else None)
    _set(session, received)
    data = runner.common.data  # runner_data, as the runner imported it
    shard = context.node_config.get("data")
    train_split, _, _ = data.open_data(manifest, data=os.path.join(root, str(shard)) if shard else None,
                                       device_data=context.node_config.get("device-data") or None)
    mu, lr = float(config.get("proximal-mu", 0.0)), session.lr
    progress = None
    if mu > 0:  # FedProx: the proximal term's gradient mu * (w - w_global), applied after each of the runner's steps
        anchor = {k: received[k] for k in manifest["trainable"]}

        def progress(_step, _total, _loss):
            params = session.params()
            session.set_params({k: params[k] - lr * mu * (params[k] - anchor[k]) for k in anchor})

    seed = int(config.get("seed", 0)) * 1_000_003 + int(config.get("server-round", 0))
    state = runner.common.fit(session, train_split, steps=int(config["local-steps"]), seed=seed, progress=progress)
    trained = session.trained()
    out = ArrayRecord({k: Array(np.ascontiguousarray(trained[k], dtype=np.float32)) for k in received})
    metrics = MetricRecord({"num-examples": len(train_split), "train-loss": float(np.mean(state["losses"])),
                            "steps": int(state["steps"]), "seconds": time.perf_counter() - t0})
    return Message(content=RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)
