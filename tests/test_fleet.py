"""edgetl fleet: real Flower processes on loopback (a SuperLink, SuperNodes on local:// devices, behind the sshd
fixture and behind the ADB peer), TLS with the fleet's own certificates, an ONNX Runtime export of V3-Small at 32 px.

A fleet round costs tens of seconds here (every round starts a ClientApp process per device, which loads the
runtime), so the end-to-end tests are marked slow; shards, the travelling tensors, the certificates and the
bounded restarts of a SuperNode that keeps dying are checked in the default stage.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.devices.bundle import BUNDLE_JSON
from edgetl.exporters import Artifacts, export
from edgetl.fleet import Fleet, FleetError, FleetEvents, make_shards, run_fleet, travelling
from edgetl.fleet.certs import FleetCerts, make_node_key
from edgetl.run import Run

from .exportutil import make_run

flwr = pytest.importorskip("flwr")
pytest.importorskip("onnxruntime.training")
PY = sys.executable


@pytest.fixture(scope="module")
def fleet_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    run = make_run(root / "run", "mobilenet_v3_small", "mobiletl:3", resolution=32, optimizer="sgd", lr=0.05)
    art = root / "art"
    export(run, "onnx", art, steps=2, batch_size=8)
    shards = root / "shards"
    make_shards("patterns", 3, shards, resolution=32, by_class=True, count=120, seed=0)
    for name, keep in (("device-2.npz", 16), ("device-3.npz", 28)):  # unequal shards: the weights matter
        with np.load(shards / name) as z:
            images, labels = z["images"][:keep], z["labels"][:keep]
        np.savez(shards / name, images=images, labels=labels)
    return run, art, shards


def local(tmp_path, name):
    return f"local://{tmp_path / name}?python={PY}"


def leftovers(ports) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(f"127.0.0.1:{port}" in words or f"--port {port}" in words for port in ports):
            found.append(words)
    return found


class Recorder(FleetEvents):
    def __init__(self, on_round=None):
        self.rounds, self.refusals, self.messages, self.on_round = [], [], [], on_round

    def message(self, text):
        self.messages.append(text)

    def refused(self, record):
        self.refusals.append(record)

    def round(self, record):
        self.rounds.append(record)
        if self.on_round:
            self.on_round(record)


# -- default stage ------------------------------------------------------------------------------------------

def test_shards_split_by_class_and_iid(tmp_path):
    by_class = make_shards("patterns", 3, tmp_path / "c", resolution=32, by_class=True, count=60)
    iid = make_shards("patterns", 3, tmp_path / "i", resolution=32, count=60)
    labels = [np.load(p)["labels"] for p in by_class]
    assert sum(map(len, labels)) == 60 and all(np.load(p)["images"].dtype == np.uint8 for p in by_class)
    # by class: each shard holds few classes; iid: every shard holds (nearly) all five
    assert max(len(np.unique(x)) for x in labels) <= 3
    assert min(len(np.unique(np.load(p)["labels"])) for p in iid) >= 4
    meta = json.loads((tmp_path / "c" / "shards.json").read_text())
    assert meta["split"] == "by-class" and [s["images"] for s in meta["shards"]] == [20, 20, 20]
    with pytest.raises(Exception, match="fewer than 100 devices"):
        make_shards("patterns", 100, tmp_path / "x", resolution=32, count=10)


def test_travelling_tensors_are_the_trainable_ones_and_trained_statistics(fleet_export):
    run, art, _ = fleet_export
    manifest = json.loads((art / "manifest.json").read_text())
    names = travelling(manifest)
    state = Run.load(run).model.state_dict()
    trainable = {n for n, p in Run.load(run).model.named_parameters() if p.requires_grad}
    assert set(manifest["trainable"]) == trainable and trainable <= set(names)
    stats = [n for n in names if n not in trainable]
    assert stats and all(n.endswith(("running_mean", "running_var")) for n in stats)
    assert all(n in state for n in names) and len(names) < len(state)


def test_certificates_verify_the_superlink_name(tmp_path):
    certs = FleetCerts.ensure(tmp_path, host="0.0.0.0", address="10.1.2.3:9092")
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(certs.cert, certs.key)  # the key matches the certificate
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    assert oct(certs.key.stat().st_mode & 0o777) == "0o600"
    private, public = make_node_key(tmp_path / "keys", "node-1")
    assert public.read_text().startswith("ecdsa-sha2-nistp256 ") and oct(private.stat().st_mode & 0o777) == "0o600"


def test_fleet_refuses_bad_settings_in_one_line(fleet_export, tmp_path):
    run, art, shards = fleet_export
    with pytest.raises(FleetError, match="no data"):
        Fleet(art, [local(tmp_path, "a")], tmp_path / "o")
    with pytest.raises(FleetError, match="holds 3 shard"):
        Fleet(art, [local(tmp_path, str(i)) for i in range(4)], tmp_path / "o", data=str(shards))
    with pytest.raises(FleetError, match="--min-devices"):
        Fleet(art, [local(tmp_path, "a")], tmp_path / "o", data=str(shards), min_devices=2)
    with pytest.raises(FleetError, match="authentication needs TLS"):
        Fleet(art, [local(tmp_path, "a")], tmp_path / "o", data=str(shards), insecure=True, auth=True)


def test_held_out_eval_data_is_evaluated_whole_with_the_models_classes_by_name(tmp_path):
    """--eval-data DIR: every image of a folder of class folders (not a 90/10 split), labelled in the model's class
    order by name; a folder of other classes is refused naming the difference."""
    from edgetl.data import held_out
    from edgetl.errors import DataError

    from .conftest import make_image_folder

    folder = make_image_folder(tmp_path / "test", classes=("stripes_vertical", "checkerboard", "dots"), per_class=3)
    model = ["stripes_vertical", "dots", "checkerboard"]
    data, names = held_out(folder, 32, class_names=model)
    assert names == model and len(data) == 9
    by_file = sorted(p.parent.name for p in folder.rglob("*.png"))  # ImageFolder's order: sorted folders, files
    assert [model[data[i][1]] for i in range(len(data))] == by_file
    with pytest.raises(DataError, match="missing: rings; not the model's: dots"):
        held_out(folder, 32, class_names=["stripes_vertical", "checkerboard", "rings"])


def test_a_round_waits_for_the_devices_being_restarted_until_they_are_back(tmp_path):
    """The server's side of a restart: the restarts in returning.json whose device is not connected under an
    accepted id, each waited for by one round only."""
    from edgetl.fleet.server import RETURNING, Admission
    from edgetl.io import atomic_write_json

    class Grid:
        node_ids = [1, 2]

        def get_node_ids(self):
            return list(self.node_ids)

    grid = Grid()
    admission = Admission(grid, {}, tmp_path)
    admission.accepted, admission.labels = {1, 2}, {1: "pi-1", 2: "pi-2"}
    assert admission.returning() == set()  # nothing restarted
    atomic_write_json({"pi-1": 1, "pi-3": 2}, tmp_path / RETURNING)
    assert admission.returning() == {("pi-3", 2)}  # pi-1 is connected under an accepted id
    grid.node_ids = [2]  # pi-1's old id is gone: its SuperNode is being restarted
    assert admission.returning() == {("pi-1", 1), ("pi-3", 2)}
    grid.node_ids, admission.accepted, admission.labels[4] = [2, 4], {2, 4}, "pi-1"  # back under a new id
    assert admission.returning() == {("pi-3", 2)}
    admission.waited.update(admission.returning())  # a round waited for pi-3 in vain: no later round does
    assert admission.returning() == set()
    atomic_write_json({"pi-3": 3}, tmp_path / RETURNING)  # until it is restarted again
    assert admission.returning() == {("pi-3", 3)}


def test_a_supernode_that_keeps_dying_is_restarted_a_bounded_number_of_times_then_given_up(fleet_export, tmp_path):
    """The orchestrator's watch over real processes: a SuperNode whose program exits at once (a broken install)
    is restarted ``restarts`` times, the waits doubling from ``restart_backoff``, then given up with the reason."""
    import time

    from edgetl.devices import connect

    run, art, shards = fleet_export
    bindir = tmp_path / "env" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "flower-supernode").write_text("#!/bin/sh\nexit 3\n")
    (bindir / "flower-supernode").chmod(0o755)
    uri = local(tmp_path, "d0")
    fleet = Fleet(Artifacts.load(art), [uri], tmp_path / "o", data=str(shards), restarts=2, restart_backoff=0.5,
                  watch_s=0, events=Recorder())  # an Artifacts, as a directory: the same fleet
    assert fleet.artifacts == Path(art).resolve() and fleet.manifest == Artifacts.load(art).manifest
    with connect(uri) as device:
        first = fleet.start_node(device, str(bindir / "python"), "127.0.0.1:9", {"label": "d0"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(r.get("gave_up") for r in fleet.restart_log):
            fleet.watch()
            time.sleep(0.05)
        fleet.watch()  # given up: no further attempt
    log = fleet.restart_log
    assert [(r.get("attempt"), r.get("ok"), r.get("gave_up")) for r in log] == [(1, True, None), (2, True, None),
                                                                                (None, None, True)]
    assert log[1]["at"] - log[0]["at"] >= 0.5 and log[2]["at"] - log[1]["at"] >= 1.0  # the backoff doubles
    assert "SuperNode process is gone" in log[2]["reason"] and "--restarts 2" in log[2]["reason"]
    assert len(fleet.retired) == 2 and fleet.retired[0] is first and len({n.pid for n in fleet.retired + fleet.nodes}) == 3
    assert any("gave up on d0" in m for m in fleet.events.messages)


# -- slow stage: whole fleet runs ------------------------------------------------------------------------------

@pytest.mark.slow
def test_fedavg_is_the_example_weighted_mean_and_frozen_tensors_stay(fleet_export, sshd, tmp_path):
    run, art, shards = fleet_export
    devices = [sshd.uri(tmp_path / "pi", tmp_path / "known_hosts"), local(tmp_path, "d2"), local(tmp_path, "d3")]
    events = Recorder()
    out = tmp_path / "fleet"
    result = run_fleet(art, devices, out, data=str(shards), rounds=2, local_steps=3, eval_size=100, round_timeout=300,
                       keep_client_arrays=True, events=events)  # TLS: the fleet's own certificates
    assert not any("--insecure" in m for m in events.messages)
    assert [r["round"] for r in result.rounds] == [1, 2] and all(len(r["answered"]) == 3 for r in result.rounds)
    last = result.rounds[-1]
    assert sorted(last["examples"].values()) == [16, 28, 40]
    clients = np.load(out / ".fleet" / "clients-2.npz")
    with np.load(out / ".fleet" / "global.npz") as z:
        global_ = {k: z[k] for k in z.files}
    total = sum(last["examples"].values())
    for name, value in global_.items():
        mean = sum(last["examples"][node] * clients[f"{node}/{name}"].astype(np.float64)
                   for node in last["examples"]) / total
        # the global is float32: a few ulps of the float64 mean (running variances reach ~10, where 1 ulp is 1e-6)
        assert np.all(np.abs(value - mean) <= 1e-6 * (1 + np.abs(mean))), name
    # the run directory holds the global model: travelling tensors from the fleet, everything else bit-identical
    before, after = Run.load(run).model.state_dict(), Run.load(out).model.state_dict()
    names = set(global_)
    for key, tensor in after.items():
        if key in names:
            assert np.array_equal(tensor.numpy(), global_[key]), key
        else:
            assert torch.equal(tensor, before[key]), key
    assert any(not torch.equal(after[k], before[k]) for k in names)
    report = json.loads((out / "fleet.json").read_text())
    assert report["message"]["bytes_per_device_per_direction"] == last["bytes_per_device"]
    assert last["bytes_sent"] == 3 * last["bytes_per_device"] == last["bytes_received"]
    assert 0 < report["message"]["ratio_to_whole_model"] < 1 and (out / "fleet.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_device_killed_mid_round_does_not_stop_the_fleet_and_rejoins(fleet_export, tmp_path):
    run, art, shards = fleet_export
    devices = [local(tmp_path, f"d{i}") for i in range(3)]
    labels = [d.split("?")[0] for d in devices]
    holder = {}

    def on_round(record):
        if record.get("round") == 1:  # round 2 is being sent out: the third device dies in it
            holder["killed"] = holder["fleet"].nodes[2]
            holder["killed"].kill()

    fleet = Fleet(art, devices, tmp_path / "fleet", data=str(shards), rounds=3, local_steps=2, min_devices=2,
                  eval_size=50, round_timeout=60, insecure=True, restart_backoff=1, watch_s=1, events=Recorder(on_round))
    holder["fleet"] = fleet
    result = fleet.run()
    assert [r["round"] for r in result.rounds] == [1, 2, 3]
    one, two, three = result.rounds
    assert len(one["answered"]) == 3 and all("skipped" not in r for r in result.rounds)
    # round 2 completes with the two devices left, naming the one it lost
    assert sorted(two["answered_devices"]) == labels[:2] and two["lost_devices"] == [labels[2]]
    # the orchestrator restarted the dead SuperNode; round 3 readmits it under its new node id and all three answer
    assert fleet.retired == [holder["killed"]] and fleet.nodes[2] is not holder["killed"]
    assert three["joined"] == [labels[2]] and three["rejoined"] == [labels[2]]
    assert sorted(three["answered_devices"]) == labels and len(three["answered"]) == 3
    new_id = next(n for n in three["answered"] if n not in one["answered"])
    assert new_id not in two["sampled"]
    report = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    assert report["lost"] == [{"round": 2, "lost": two["lost"], "devices": [labels[2]], "errors": two["errors"]}]
    assert report["rejoined"] == [{"round": 3, "devices": [labels[2]]}]
    assert [(r["device"], r["attempt"], r["ok"]) for r in report["restarts"]] == [(labels[2], 1, True)]
    # every process started is gone, the killed SuperNode's included: nothing serves the SuperLink's or a
    # SuperNode's port any more (Flower's SuperExecs run in sessions of their own)
    assert all(not n.alive() for n in fleet.nodes + fleet.retired)
    assert leftovers([fleet.port, *(n.port for n in fleet.nodes + fleet.retired)]) == []


class OtherArtifacts(Fleet):
    """Device 3 holds another export of the same model (other batch size): its manifest differs."""

    other = None

    def bundle_for(self, index, uri, shard):
        from edgetl.devices.bundle import make_bundle

        return make_bundle(self.other if index == 3 else self.artifacts, shard)


@pytest.mark.slow
def test_wrong_artifacts_are_refused_at_start_with_the_reason(fleet_export, tmp_path):
    run, art, shards = fleet_export
    other = tmp_path / "other"
    export(run, "onnx", other, steps=2, batch_size=4)
    fleet = OtherArtifacts(art, [local(tmp_path, f"d{i}") for i in range(3)], tmp_path / "fleet", data=str(shards),
                           rounds=1, local_steps=2, min_devices=2, eval_size=50, insecure=True, events=Recorder())
    fleet.other = other
    result = fleet.run()
    assert len(result.refused) == 1 and "artifacts differ" in result.refused[0]["reason"]
    assert result.refused[0]["label"].endswith("d2") and len(result.rounds[0]["answered"]) == 2
    assert json.loads((tmp_path / "fleet" / "fleet.json").read_text())["refused"][0]["reason"] == result.refused[0]["reason"]


@pytest.mark.slow
def test_resume_after_the_server_is_killed_continues_from_the_last_round(fleet_export, tmp_path):
    run, art, shards = fleet_export
    devices = [local(tmp_path, f"d{i}") for i in range(2)]
    out = tmp_path / "fleet"
    holder = {}

    def on_round(record):
        if record.get("round") == 1:
            holder["fleet"].link.kill()  # the SuperLink and its ServerApp die after round 1 was saved

    fleet = Fleet(art, devices, out, data=str(shards), rounds=3, local_steps=2, eval_size=50, insecure=True,
                  events=Recorder(on_round))
    holder["fleet"] = fleet
    with pytest.raises(FleetError, match="stopped before the last round"):
        fleet.run()
    assert json.loads((out / ".fleet" / "state.json").read_text())["round"] == 1
    with np.load(out / ".fleet" / "global.npz") as z:
        after_one = {k: z[k] for k in z.files}
    events = Recorder()
    result = run_fleet(art, devices, out, data=str(shards), rounds=3, local_steps=2, eval_size=50, insecure=True,
                       resume=True, events=events)
    assert [r["round"] for r in events.rounds] == [2, 3]  # no round 0 evaluation again, no round 1 again
    assert [r["round"] for r in result.rounds] == [1, 2, 3]
    assert not any(r.get("event") == "start" for r in events.rounds)
    assert set(after_one) == set(travelling(json.loads((art / "manifest.json").read_text())))


class OneStrangerKey(Fleet):
    """Device 2 starts its SuperNode with a key of its own that the SuperLink never registered."""

    def _node_key(self, device, index, certs_dir, name=None):
        if index != 2:
            return super()._node_key(device, index, certs_dir, name)
        from edgetl.fleet.certs import push_private_key

        private, _ = make_node_key(self.work / "strangers", "stranger")
        return push_private_key(device, private, certs_dir)


@pytest.mark.slow
def test_with_authentication_a_stranger_key_is_refused_and_a_restarted_device_rejoins(fleet_export, tmp_path):
    """--auth: a SuperNode with a key the fleet did not register never joins, however often it is restarted; a
    device of the fleet whose SuperNode dies is restarted with a fresh key the fleet registers, and rejoins."""
    run, art, shards = fleet_export
    devices = [local(tmp_path, f"d{i}") for i in range(3)]
    labels = [d.split("?")[0] for d in devices]
    holder = {}

    def on_round(record):
        if record.get("round") == 1:
            holder["fleet"].nodes[0].kill()

    fleet = OneStrangerKey(art, devices, tmp_path / "fleet", data=str(shards), rounds=3, local_steps=2,
                           min_devices=1, eval_size=50, round_timeout=90, auth=True, join_timeout=30,
                           restart_backoff=1, watch_s=1, events=Recorder(on_round))
    holder["fleet"] = fleet
    result = fleet.run()
    assert len(result.refused) == 1 and result.refused[0]["label"] == labels[1]
    assert "did not join" in result.refused[0]["reason"] and "Failed to activate SuperNode" in result.refused[0]["reason"]
    one, two, three = result.rounds
    assert sorted(one["answered_devices"]) == [labels[0], labels[2]]
    assert two["answered_devices"] == [labels[2]] and two["lost_devices"] == [labels[0]]
    assert sorted(three["answered_devices"]) == [labels[0], labels[2]] and three["rejoined"] == [labels[0]]
    assert three["joined"] == [labels[0]]  # under a new node id: the fresh key's
    keys = sorted(p.name for p in (fleet.work / "keys").glob("*.pub"))
    assert keys == ["node-1-restart-1.pub", "node-1.pub", "node-3.pub"]
    restarted = {r["device"] for r in fleet.restart_log if r.get("ok")}
    assert labels[0] in restarted and labels[1] in restarted  # the stranger was restarted too, with its own key
    assert leftovers([fleet.port, *(n.port for n in fleet.nodes + fleet.retired)]) == []


@pytest.mark.slow
def test_the_fleet_learns_about_as_well_as_centralised_training_on_the_union(fleet_export, tmp_path):
    """Accuracy rises over rounds and ends within 5 points of the same runner trained on the union of the shards
    for the same total number of steps (bench/fleet_central.py's comparison)."""
    import importlib.util

    run, art, _ = fleet_export
    shards = tmp_path / "shards"
    make_shards("patterns", 3, shards, resolution=32, count=240, seed=1)
    result = run_fleet(art, [local(tmp_path, f"d{i}") for i in range(3)], tmp_path / "fleet", data=str(shards),
                       rounds=4, local_steps=10, eval_size=300, insecure=True)
    report = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    start, final = report["initial_eval"]["eval_acc"], report["final_eval_acc"]
    spec = importlib.util.spec_from_file_location("fleet_central", Path(__file__).parents[1] / "bench" / "fleet_central.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = json.loads((tmp_path / "fleet" / ".fleet" / "config.json").read_text())
    central = bench.central(config, shards, art)
    print(f"fleet: {start:.3f} -> {final:.3f} after {len(result.rounds)} rounds; centralised: {central['eval_acc']:.3f} "
          f"after {central['steps']} steps")
    assert final > start + 0.03
    assert abs(final - central["eval_acc"]) <= 0.05


#: the ClientApp's training step recomputed apart from the fleet: the bundle's runner on the device's shard from
#: the tensors the round sent, and FedProx's proximal pull (a gradient step on mu/2 |w - w_global|^2) after each step
RETRAIN = r"""
import json, sys
import numpy as np
root, shard, given, steps, seed, mu, out = sys.argv[1:]
sys.path.insert(0, root)
import ort_runner, runner_data
manifest = json.load(open(root + "/manifest.json"))
with np.load(given) as z:
    start = {k: z[k] for k in z.files}
trainer = ort_runner.Session(root)
trainer.set_params({k: start[k] for k in manifest["trainable"]})
trainer.running.update({k: v for k, v in start.items() if k in trainer.running})
train, _, _ = runner_data.open_data(manifest, data=root + "/" + shard)
mu = float(mu)
def pull(*_):
    w = trainer.params()
    trainer.set_params({k: w[k] - trainer.lr * mu * (w[k] - start[k]) for k in manifest["trainable"]})
ort_runner.common.fit(trainer, train, steps=int(steps), seed=int(seed), progress=pull if mu else None)
np.savez(out, **{k: trainer.trained()[k] for k in start})
"""


def weighted_mean(record, clients, names):
    total = sum(record["examples"].values())
    return {k: sum(n * clients[f"{node}/{k}"].astype(np.float64) for node, n in record["examples"].items()) / total
            for k in names}


def initial(run, names):
    state = Run.load(run).model.state_dict()
    return {k: state[k].numpy().astype(np.float64) for k in names}


@pytest.mark.slow
def test_fedadam_global_is_the_adam_step_on_the_clients_mean(fleet_export, tmp_path):
    """Flower's FedAdam (flwr 1.42): delta = weighted mean - x; m = b1 m + (1 - b1) delta; v = b2 v + (1 - b2) delta^2;
    x += eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) m / (sqrt(v) + tau), moments carried across rounds."""
    run, art, shards = fleet_export
    out = tmp_path / "adam"
    names = travelling(json.loads((art / "manifest.json").read_text()))
    result = run_fleet(art, [local(tmp_path, "a0"), local(tmp_path, "a1")], out, data=str(shards), rounds=2,
                       local_steps=2, strategy="fedadam", eval_size=50, insecure=True, keep_client_arrays=True)
    eta, b1, b2, tau = 1e-2, 0.9, 0.99, 1e-3  # edgetl's --server-lr default; Flower's FedAdam moments and tau
    x = initial(run, names)
    m = {k: 0.0 for k in names}
    v = {k: 0.0 for k in names}
    assert [r["round"] for r in result.rounds] == [1, 2] and all(len(r["answered"]) == 2 for r in result.rounds)
    for record in result.rounds:
        t = record["round"]
        mean = weighted_mean(record, np.load(out / ".fleet" / f"clients-{t}.npz"), names)
        previous = x
        delta = {k: mean[k] - x[k] for k in names}
        m = {k: b1 * m[k] + (1 - b1) * delta[k] for k in names}
        v = {k: b2 * v[k] + (1 - b2) * delta[k] ** 2 for k in names}
        step = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        x = {k: x[k] + step * m[k] / (np.sqrt(v[k]) + tau) for k in names}
        with np.load(out / ".fleet" / f"global-{t}.npz") as z:
            saved = {k: z[k] for k in z.files}
        assert set(saved) == set(names)
        for k in names:
            assert np.all(np.abs(saved[k] - x[k]) <= 1e-6 * (1 + np.abs(x[k]))), (t, k)
        # not FedAvg's answer, and the model moved
        assert max(np.max(np.abs(saved[k] - mean[k])) for k in names) > 1e-3
        assert max(np.max(np.abs(saved[k] - previous[k])) for k in names) > 1e-3
    with np.load(out / ".fleet" / "global.npz") as z:
        assert all(np.array_equal(z[k], np.load(out / ".fleet" / "global-2.npz")[k]) for k in names)


@pytest.mark.slow
def test_fedprox_clients_pull_towards_the_global_model(fleet_export, tmp_path):
    """With mu > 0 each client's tensors are the runner's steps with the proximal pull after each, recomputed here
    from the round's global tensors on that device's shard; without the pull they would differ. The aggregate is
    the example-weighted mean, as FedAvg's."""
    run, art, shards = fleet_export
    out, mu, steps = tmp_path / "prox", 2.0, 3
    names = travelling(json.loads((art / "manifest.json").read_text()))
    devices = [local(tmp_path, "p0"), local(tmp_path, "p1")]
    fleet = Fleet(art, devices, out, data=str(shards), rounds=1, local_steps=steps, strategy="fedprox",
                  strategy_options={"mu": mu}, eval_size=50, insecure=True, keep_client_arrays=True)
    result = fleet.run()
    record = result.rounds[0]
    clients = np.load(out / ".fleet" / "clients-1.npz")
    start = tmp_path / "start.npz"
    np.savez(start, **{k: v.astype(np.float32) for k, v in initial(run, names).items()})
    trainable = json.loads((art / "manifest.json").read_text())["trainable"]
    for node, label in zip(record["answered"], record["answered_devices"]):
        config = fleet.node_config([d.split("?")[0] for d in devices].index(label))
        sent = {k: clients[f"{node}/{k}"] for k in names}
        redone = {}
        for pull in (mu, 0.0):
            path = tmp_path / f"redo-{node}-{pull}.npz"
            done = subprocess.run([PY, "-c", RETRAIN, config["bundle"], config["data"], str(start), str(steps),
                                   "1", str(pull), str(path)],  # the runner's seed: seed 0, round 1
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            with np.load(path) as z:
                redone[pull] = {k: z[k] for k in z.files}
        gap = max(float(np.max(np.abs(sent[k] - redone[mu][k]))) for k in names)
        without = max(float(np.max(np.abs(sent[k] - redone[0.0][k]))) for k in trainable)
        print(f"{label}: |client - recomputed with mu={mu}| {gap:.2e}, |client - recomputed without| {without:.2e}")
        assert gap <= 1e-6 and without > 1e-4
    global_ = np.load(out / ".fleet" / "global.npz")
    mean = weighted_mean(record, clients, names)
    assert all(np.all(np.abs(global_[k] - mean[k]) <= 1e-6 * (1 + np.abs(mean[k]))) for k in names)


@pytest.mark.slow
def test_devices_train_on_their_own_image_folders_which_never_leave_them(fleet_export, sshd, adb_peer, tmp_path):
    """--device-data: an ssh and an adb device read the ImageFolder at the same path on their side (here one folder,
    both being this machine); nothing of it is pushed or comes back."""
    from PIL import Image

    run, art, _ = fleet_export
    classes = json.loads((art / "manifest.json").read_text())["class_names"]
    captures = tmp_path / "pi-home" / "captures"  # on the device's side of the ssh connection
    rng = np.random.default_rng(0)
    for i, name in enumerate(classes):
        (captures / name).mkdir(parents=True)
        for j in range(i % 3 + 1):  # 1, 2, 3, 1, 2 images: the count says the device read this folder
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(captures / name / f"{j}.png")
    images = sum(1 for _ in captures.rglob("*.png"))
    _, phone = adb_peer()
    fleet = Fleet(art, [sshd.uri(tmp_path / "pi", tmp_path / "known_hosts"), phone], tmp_path / "fleet",
                  device_data=str(captures), rounds=1, local_steps=2, eval_size=50, insecure=True)
    result = fleet.run()
    record = result.rounds[0]
    assert sorted(record["answered_devices"]) == sorted(d.split("?")[0] for d in fleet.devices)
    assert list(record["examples"].values()) == [images, images]
    for i in range(2):
        config = fleet.node_config(i)
        assert config["device-data"] == str(captures) and "data" not in config
        # the bundle pushed holds the artifacts and runner only
        bundle = Path(config["bundle"])
        assert json.loads((bundle / BUNDLE_JSON).read_text())["shard"] is None
        assert not [p for p in bundle.rglob("*") if p.suffix in (".png", ".npy") or p.name.startswith("shard")]
    assert leftovers([fleet.port, *(n.port for n in fleet.nodes)]) == []
    # no image or shard reached the laptop's fleet directory
    assert not [p for p in (tmp_path / "fleet").rglob("*") if p.suffix in (".png", ".npy") and p.name != "fleet.png"]
