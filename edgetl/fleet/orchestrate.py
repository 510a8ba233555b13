"""``edgetl fleet run``: push the bundle to every device, start the SuperLink and the SuperNodes, submit the app,
follow the rounds, stop everything, write the report.

    result = run_fleet("artifacts/tflite", ["ssh://pi@cam-1", "ssh://pi@cam-2"], out="runs/fleet",
                       data="shards/", rounds=20, local_steps=50, events=MyEvents())
    result.rounds        # the per-round records (also in runs/fleet/fleet.json)

``events`` gets ``message(text)``, ``device(uri, info)``, ``refused(record)`` and ``round(record)`` as they happen
(the CLI draws its live table from them); library code draws nothing. Whatever happens, every process started
is stopped at the end, a SuperNode already killed included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data import BUILTIN
from ..devices.base import DeviceError
from ..errors import FleetError
from ..exporters import Artifacts
from ..exporters.manifest import MANIFEST, Manifest
from ..io import absolute
from ..options import with_overrides
from .config import FleetConfig, Network, Supervision
from .processes import SuperLink, SuperNode
from .server import DONE, RETURNING, ROUNDS, STATE

FAB_DIR = Path(__file__).resolve().parent / "fab"
EDGETL_ROOT = Path(__file__).resolve().parents[2]


class FleetEvents:
    def message(self, text: str) -> None: ...

    def device(self, uri: str, info) -> None: ...

    def refused(self, record: dict) -> None: ...

    def round(self, record: dict) -> None: ...


@dataclass
class FleetResult:
    out: Path
    rounds: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards(data: str | None, n: int) -> list[str | None]:
    """One shard per device: ``data`` a directory of ``.npz`` shards (sorted), or one file for all, or none."""
    if data is None:
        return [None] * n
    path = Path(data)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if len(files) < n:
            raise FleetError(f"{data} holds {len(files)} shard(s) (*.npz) for {n} devices: make one per device with "
                             f"`edgetl fleet shard DATA --devices {n} --out {data}`")
        return [str(f) for f in files[:n]]
    return [str(path)] * n


class Fleet:
    """One fleet run; :func:`run_fleet` is the usual way in. ``nodes`` are the SuperNodes started (tests stop one)."""

    def __init__(self, artifacts: Artifacts | str | Path, devices: list[str], out, data: str | None = None,
                 device_data: str | None = None, run: str | None = None, eval_data: str | None = None,
                 config: FleetConfig | None = None, network: Network | None = None,
                 supervision: Supervision | None = None, resume: bool = False, events: FleetEvents | None = None,
                 **options):
        """``config``, ``network``, ``supervision``: :mod:`.config`'s objects; ``options``: any of their fields by name."""
        config, network, supervision = with_overrides([config or FleetConfig(), network or Network(),
                                                      supervision or Supervision()], options, "Fleet")
        for part in (config, network, supervision):
            part.check()
        # every local path once, here: the SuperLink, the ServerApp and the SuperNodes run in other directories
        # an Artifacts or its directory (a directory without a manifest is refused below, as the fleet's error)
        self.artifacts = Path(artifacts.out if isinstance(artifacts, Artifacts) else artifacts).resolve()
        self.out = Path(out).resolve()
        data, run, eval_data = absolute(data), absolute(run), absolute(eval_data, BUILTIN)
        self.work = self.out / ".fleet"
        if not (self.artifacts / MANIFEST).is_file():
            raise FleetError(f"{artifacts} holds no {MANIFEST}; pass a directory written by `edgetl export`")
        if not devices:
            raise FleetError("no devices: pass --device URI (repeatable) or --devices FILE")
        if data is not None and device_data is not None:
            raise FleetError("pass --data (shards pushed from here) or --device-data (images on each device), not both")
        if data is None and device_data is None:
            raise FleetError("no data: pass --data SHARDS (one .npz per device, `edgetl fleet shard` makes them) or "
                             "--device-data PATH (an ImageFolder on each device)")
        self.raw_manifest = (self.artifacts / MANIFEST).read_bytes()
        self.manifest = Manifest.from_dict(json.loads(self.raw_manifest))
        self.source_run = run or absolute(self.manifest.source_run)
        if not self.source_run or not Path(self.source_run).exists():
            raise FleetError(f"the run the artifacts came from ({self.source_run}) is not here; pass --run RUN_DIR "
                             f"(the server evaluates and saves the global model with it)")
        self.devices, self.data, self.device_data = list(devices), data, device_data
        self.shards = _shards(data, len(self.devices))
        self.min_devices = config.min_devices or len(devices)
        if not 1 <= self.min_devices <= len(devices):
            raise FleetError(f"--min-devices is from 1 to the {len(devices)} devices given, not {self.min_devices}")
        self.config, self.network, self.supervision = config, network, supervision
        self.options = {**config.server_options(), "restarts": supervision.restarts}  # what the ServerApp is told
        self.eval_data = eval_data
        self.resume, self.port = resume, network.port or free_port()
        self.events = events or FleetEvents()
        self.nodes: list[SuperNode] = []  # the current SuperNode of each device
        self.retired: list[SuperNode] = []  # SuperNodes that died and were replaced (stopped at the end all the same)
        self.restart_log: list[dict] = []
        self.first_nodes: list[SuperNode] = []  # each device's first SuperNode (its log says why it did not join)
        self._specs, self._tries, self._next_watch, self._node_ids, self._joined = [], {}, 0.0, {}, set()
        self._returning: dict[str, int] = {}  # restarted devices that had joined -> attempt, until readmitted
        self.link: SuperLink | None = None
        self._connections = []

    # -- steps ---------------------------------------------------------------------------------------------
    def _prepare_work(self) -> None:
        if self.resume:
            if not (self.work / STATE).exists():
                raise FleetError(f"nothing to resume in {self.out}: no fleet round was saved there; start without --resume")
            for name in (DONE,):
                (self.work / name).unlink(missing_ok=True)
        else:
            if (self.work / STATE).exists():
                raise FleetError(f"{self.out} already holds a fleet run: pass --resume to continue it, or another --out")
            self.work.mkdir(parents=True, exist_ok=True)

    def _eval_data(self) -> str:
        """The server's held-out data: the one given (evaluated whole), else the source run's (its validation split)."""
        if self.eval_data:
            from ..data import held_out

            held, _ = held_out(self.eval_data, self.manifest.resolution,
                               class_names=self.manifest.class_names)  # refused here when its classes differ
            self.events.message(f"the server evaluates each round on the {len(held):,} held-out images of "
                                f"{self.eval_data}")
            return self.eval_data
        from ..run import Run

        data = absolute(Run.load(self.source_run).data, BUILTIN)
        if not data:
            raise FleetError(f"the run {self.source_run} does not say what data it trained on; pass --eval-data DATA "
                             f"(an ImageFolder, or patterns) for the server's held-out evaluation")
        return data

    def _start_nodes(self, address: str, certs) -> None:
        from ..devices import connect
        from ..devices.bundle import push_bundle

        for i, (uri, shard) in enumerate(zip(self.devices, self.shards), start=1):
            device = connect(uri)
            self._connections.append(device)
            info = device.probe()
            self.events.device(uri, info)
            python = info.python_bin
            if not python or device.run(f"{python} -c 'import flwr'", timeout=120).returncode != 0:
                raise FleetError(f"{uri} has no flwr in {python or 'any Python'}: run `edgetl devices setup {uri} --fleet`")
            bundle = self.bundle_for(i, uri, shard)
            try:
                self.events.message(f"pushing {bundle.size / 2**20:.1f} MiB to {uri}")
                remote = push_bundle(device, bundle, free_bytes=info.free_bytes)
            finally:
                shutil.rmtree(bundle.root, ignore_errors=True)
            config = {"bundle": remote, "label": uri.split("?")[0]}
            if bundle.shard:
                config["data"] = bundle.shard
            if self.device_data:
                config["device-data"] = device.resolve(self.device_data)
            certs_dir = None
            if certs is not None:
                certs_dir = f"{device.workdir}/fleet-certs"
                certs.push_ca(device, certs_dir)
            key = self._node_key(device, i, certs_dir) if self.network.auth else None
            self.start_node(device, python, address, config, certs_dir, key)
            self.events.message(f"SuperNode {i} started on {uri}")

    def start_node(self, device, python: str, address: str, config: dict, certs_dir: str | None = None,
                   key: str | None = None) -> SuperNode:
        """Start a SuperNode on ``device`` as the next device of the fleet; remembered, so that it can be restarted."""
        self._specs.append((device, python, address, config, certs_dir, key))
        self.nodes.append(self._spawn(len(self._specs) - 1))
        self.first_nodes.append(self.nodes[-1])
        return self.nodes[-1]

    def node_config(self, index: int) -> dict:
        """What device ``index``'s SuperNode was told (``bundle``: its directory there, ``data``, ``label``...)."""
        return dict(self._specs[index][3])

    def _spawn(self, index: int, attempt: int = 0) -> SuperNode:
        device, python, address, config, certs_dir, key = self._specs[index]
        if key and attempt and config["label"] in self._joined:  # a key the SuperLink refused stays refused
            key = self._new_key(index, attempt)
        node = SuperNode(device, python, address, config, free_port(), f"{device.workdir}/fleet", certs_dir, key)
        node.label = config["label"]
        return node

    def watch(self) -> None:
        """Restart a device's SuperNode that died, over the device transport: at most ``restarts`` times per device
        in the run, ``restart_backoff`` seconds apart and doubling; then give up on it, with the reason recorded.
        The restarted SuperNode joins under a new node id, and the server readmits it at the next round."""
        now = time.monotonic()
        if not self.supervision.restarts or now < self._next_watch:
            return
        self._next_watch = now + self.supervision.watch_s
        for i, node in enumerate(self.nodes):
            tried = self._tries.setdefault(i, {"count": 0, "next": 0.0, "gave_up": False})
            if tried["gave_up"] or now < tried["next"]:
                continue
            try:
                if node.alive():
                    continue
                why = "its SuperNode process is gone"
            except DeviceError as exc:
                why = f"the device did not answer: {exc}"
            label = self._specs[i][3]["label"]
            if tried["count"] >= self.supervision.restarts:
                tried["gave_up"] = True
                self._mark_returning(label, None)
                self._restart_event({"device": label, "gave_up": True, "reason": f"{why}, and {tried['count']} restart(s) "
                                     f"did not keep it up (--restarts {self.supervision.restarts})"})
                continue
            tried["count"] += 1
            tried["next"] = now + self.supervision.restart_backoff * 2 ** (tried["count"] - 1)
            # before the old id goes: the round it is lost in ends with it, and the next one waits for it
            self._mark_returning(label, tried["count"] if label in self._joined else None)
            self._unregister(label)
            try:
                self.nodes[i] = self._spawn(i, tried["count"])
                self.retired.append(node)
                self._restart_event({"device": label, "attempt": tried["count"], "ok": True, "reason": why})
            except (DeviceError, OSError, FleetError, subprocess.SubprocessError) as exc:
                self._mark_returning(label, None)
                self._restart_event({"device": label, "attempt": tried["count"], "ok": False,
                                     "reason": f"{why}; restarting it failed: {exc}"})

    def _mark_returning(self, label: str, attempt: int | None) -> None:
        """Tell the server (``returning.json``) that ``label``'s SuperNode is coming back from restart ``attempt``
        (None: it is not), so that the next round waits for it."""
        from ..io import atomic_write_json

        if attempt is None:
            self._returning.pop(label, None)
        else:
            self._returning[label] = attempt
        atomic_write_json(self._returning, self.work / RETURNING)

    def _restart_event(self, record: dict) -> None:
        record["at"] = round(time.time(), 3)
        self.restart_log.append(record)
        if record.get("gave_up"):
            self.events.message(f"gave up on {record['device']}: {record['reason']}")
        elif record["ok"]:
            self.events.message(f"{record['device']}: {record['reason']}; SuperNode restarted (attempt {record['attempt']})")
        else:
            self.events.message(f"{record['device']}: {record['reason']}")

    def bundle_for(self, index: int, uri: str, shard: str | None):
        """What device ``index`` gets: the fleet's artifacts, the runner files and its shard."""
        from ..devices.bundle import make_bundle

        return make_bundle(self.artifacts, shard)

    def _node_key(self, device, index: int, certs_dir: str, name: str | None = None) -> str:
        """The device's own key, registered with the SuperLink: only registered keys join the fleet."""
        from .certs import make_node_key, push_private_key

        private, public = make_node_key(self.work / "keys", name or f"node-{index}")
        done = self._flwr("supernode", "register", str(public), "fleet")
        if done.returncode != 0 and "already" not in (done.stdout + done.stderr):
            raise FleetError(f"the SuperLink did not register the key of device {index}: "
                             f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}")
        return push_private_key(device, private, certs_dir)

    def _flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], capture_output=True, text=True,
                              env=self._env, timeout=120)

    def _new_key(self, index: int, attempt: int) -> str:
        """With authentication a node id belongs to its key, and the SuperLink activates it again only after the dead
        SuperNode missed its heartbeats (up to a minute): a restarted device gets a fresh key, registered, so that
        it joins at once under a new id."""
        device, _, _, _, certs_dir, _ = self._specs[index]
        return self._node_key(device, index + 1, certs_dir, name=f"node-{index + 1}-restart-{attempt}")

    def _unregister(self, label: str) -> None:
        """Take the dead SuperNode's node id out of the federation: the round's message to it fails at once instead
        of after its missed heartbeats (up to a minute). Best effort: a restart does not depend on it."""
        node = self._node_ids.pop(label, None)
        if node is not None:
            try:
                self._flwr("supernode", "unregister", str(node), "fleet")
            except (OSError, subprocess.SubprocessError):
                pass

    def _write_app(self, config_path: Path) -> Path:
        app = self.work / "app"
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(FAB_DIR, app / "edgetl_fleet_app", ignore=shutil.ignore_patterns("__pycache__"))
        (app / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
            '[project]\nname = "edgetl-fleet"\nversion = "1.0.0"\ndescription = "edgetl fleet fine-tuning"\n'
            'license = "Apache-2.0"\ndependencies = []\n\n'
            '[tool.flwr.app]\npublisher = "edgetl"\n\n'
            '[tool.flwr.app.components]\nserverapp = "edgetl_fleet_app.server_app:app"\n'
            'clientapp = "edgetl_fleet_app.client_app:app"\n\n'
            f'[tool.flwr.app.config]\nfleet-config = {json.dumps(str(config_path))}\n')
        return app

    def _flwr_home(self, certs) -> dict:
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        tls = f'root-certificates = "{certs.ca}"\n' if certs else "insecure = true\n"
        (home / "config.toml").write_text(f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\n'
                                          f'address = "127.0.0.1:{self.port}"\n{tls}')
        path = os.pathsep.join(p for p in (str(EDGETL_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        # the SuperLink starts flower-superexec and flwr-serverapp by name: this environment's come first
        bins = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": path, "PATH": bins}

    def run(self) -> FleetResult:
        from .report import write_report

        self._prepare_work()
        certs = None
        if self.network.insecure:
            self.events.message("WARNING: --insecure: no TLS and no SuperNode authentication; anyone on the network "
                                "can read the model and join. Use it on loopback for tests only.")
        else:
            from .certs import FleetCerts

            certs = FleetCerts.ensure(self.work / "certs", self.network.host, self.network.address)
        config = {"work": str(self.work), "out": str(self.out), "source_run": str(self.source_run),
                  "artifacts": str(self.artifacts.resolve()), "data": self.data, "device_data": self.device_data,
                  "eval_data": self._eval_data(), "eval_held_out": bool(self.eval_data), "devices": len(self.devices),
                  "min_devices": self.min_devices,
                  "manifest_sha256": hashlib.sha256(self.raw_manifest).hexdigest(), "resume": self.resume,
                  "travelling": self.manifest.travelling(),
                  **self.options}
        config_path = self.work / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        (self.work / RETURNING).unlink(missing_ok=True)  # a stopped run's restarts are not awaited by this one
        env = self._env = self._flwr_home(certs)
        offset = (self.work / ROUNDS).stat().st_size if (self.work / ROUNDS).exists() else 0
        records, refused = [], []
        try:
            self.link = SuperLink(self.work, self.port, self.network.host, certs, self.network.auth, env)
            self.link.wait_ready()
            address = self.network.address or f"127.0.0.1:{self.port}"
            self._start_nodes(address, certs)
            app = self._write_app(config_path)
            flwr = str(Path(sys.executable).parent / "flwr")
            log = open(self.work / "serverapp.log", "ab")
            proc = subprocess.Popen([flwr, "run", str(app), "fleet", "--stream"], stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.work, start_new_session=True)
            try:
                while True:
                    offset = self._follow(offset, records, refused)
                    if (self.work / DONE).exists():
                        break
                    self.watch()
                    if proc.poll() is not None:
                        time.sleep(1)
                        offset = self._follow(offset, records, refused)
                        if (self.work / DONE).exists():
                            break
                        raise FleetError(f"the fleet's ServerApp stopped before the last round: "
                                         f"{self._tail(self.work / 'serverapp.log')}; see {self.work / 'serverapp.log'}")
                    time.sleep(0.3)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
                    proc.wait(timeout=10)
        finally:
            self.stop()
        all_records = [json.loads(line) for line in (self.work / ROUNDS).read_text().splitlines() if line.strip()]
        report = write_report(self.out, all_records, config, self.manifest, refused, self.restart_log)
        return FleetResult(self.out, [r for r in all_records if r.get("event") == "round"], refused, report)

    def _follow(self, offset: int, records: list, refused: list) -> int:
        path = self.work / ROUNDS
        if not path.exists():
            return offset
        with open(path) as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1]
        for line in complete.splitlines():
            record = json.loads(line)
            if record.get("event") == "handshake":
                seen = set(record["labels"].values())
                self._note_ids(record)
                missing = [{"node": None, "label": n.label, "reason": f"its SuperNode did not join the fleet (a key the "
                            f"fleet did not register, or the SuperLink unreachable): {n.why_not_joined()}"}
                           for n in self.first_nodes if n.label not in seen]
                self._joined.update(seen)
                for r in record["refused"] + missing:
                    refused.append(r)
                    self.events.refused(r)
            elif record.get("event") == "admit":  # node ids that appeared after the start, handshaken at a round
                self._joined.update(record["labels"].values())
                for node in record["accepted"]:
                    self._mark_returning(record["labels"][str(node)], None)
                self._note_ids(record)
                for r in record["refused"]:
                    refused.append({**r, "round": record["round"]})
                    self.events.refused(r)
            elif record.get("event") in ("round", "start"):
                records.append(record)
                self.events.round(record)
        return offset + len(complete.encode())

    def _note_ids(self, record: dict) -> None:
        """Each device's node id, from the server's handshake records (the ids it accepted, by device label)."""
        for node, label in record["labels"].items():
            if int(node) in record["accepted"]:
                self._node_ids[label] = int(node)

    @staticmethod
    def _tail(path: Path) -> str:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line]
        return (errors or lines or ["no output"])[-1].strip()

    def stop(self) -> None:
        for node in self.retired + self.nodes:
            node.stop()
        if self.link is not None:
            self.link.stop()
        for device in self._connections:
            device.close()


def run_fleet(artifacts, devices: list[str], out, **options) -> FleetResult:
    return Fleet(artifacts, devices, out, **options).run()
