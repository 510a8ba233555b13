"""Flower's deployment runtime, started by edgetl: a SuperLink on the laptop, a SuperNode per device.

    link = SuperLink(work, port=9092, host="0.0.0.0", tls=certs)   # flower-superlink, a local process group
    node = SuperNode(device, python, link_address, node_config, port=9094, tls=certs, key=...)  # over the transport
    node.stop(); link.stop()                                         # TERM, then KILL, whole process groups

A SuperNode runs on its device in a session of its own (``setsid``), its log and pid file in the device's
work directory, with the environment's ``bin`` first on ``PATH`` (the SuperNode starts ``flower-superexec`` and
``flwr-clientapp`` from there). Stopping signals the whole group, so the ClientApp processes it started stop too;
a device whose SuperNode was killed already is stopped without complaint.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..devices.base import Device, DeviceError

#: a shell function printing a process and all its descendants (from /proc: Linux and Android alike). Flower's
#: SuperExec makes a session of its own, so signalling a process group does not reach it or its apps.
TREE = ("tree() { echo $1; for c in $(awk -v p=$1 '$4==p{print $1}' /proc/[0-9]*/stat 2>/dev/null); "
        "do tree $c; done; }")


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren... on this machine (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


class FleetProcessError(DeviceError):
    """A SuperLink or SuperNode that would not start."""


def _node_config(values: dict) -> str:
    """``--node-config``'s TOML-like ``key=value`` pairs (strings quoted)."""
    def value(v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else '"' + str(v).replace('"', "") + '"'

    return " ".join(f"{k}={value(v)}" for k, v in values.items())


class SuperLink:
    def __init__(self, work: Path, port: int, host: str = "127.0.0.1", certs=None, auth: bool = False,
                 env: dict | None = None):
        self.work, self.port, self.host = Path(work), port, host
        self.log = self.work / "superlink.log"
        # its state in memory (Flower's default), not in an SQLite file: under load a file's lock outlasted
        # SQLite's 5 s wait ("database is locked"), the SuperLink answered 500 and the ServerApp stopped mid-fleet;
        # nothing of that state outlives the SuperLink (a resumed fleet starts a new one from global.npz)
        args = [str(Path(sys.executable).parent / "flower-superlink"), "--host", host, "--port", str(port),
                "--disable-runtime-dependency-installation"]
        args += certs.superlink_args() if certs else ["--insecure"]
        if auth:
            args += ["--enable-supernode-auth"]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.work)

    def wait_ready(self, timeout: float = 60) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise FleetProcessError(f"the SuperLink stopped at start (exit {self.proc.returncode}): "
                                        f"{' / '.join(tail)}; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise FleetProcessError(f"the SuperLink did not listen on port {self.port} within {timeout:.0f}s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL the SuperLink and every process under it (its SuperExec and ServerApp), as a crash would."""
        tree = descendants(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _signal_all(tree, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, grace: float = 5) -> None:
        """TERM the SuperLink and everything under it, KILL what is left after ``grace`` seconds."""
        tree = descendants(self.proc.pid)  # read first: a SuperExec whose parent died is no longer under it
        if self.proc.poll() is None:
            _signal_all(tree, signal.SIGTERM)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        _signal_all(tree, signal.SIGKILL)
        self.kill()


class SuperNode:
    """A ``flower-supernode`` on ``device``, started with ``python``'s environment."""

    def __init__(self, device: Device, python: str, superlink: str, node_config: dict, port: int, workdir: str,
                 certs_dir: str | None = None, key: str | None = None):
        self.device, self.workdir, self.port = device, workdir.rstrip("/"), port
        self.log, self.pidfile = f"{self.workdir}/supernode-{port}.log", f"{self.workdir}/supernode-{port}.pid"
        bindir = os.path.dirname(python)
        args = [f"{bindir}/flower-supernode", "--superlink", superlink, "--port", str(port),
                "--node-config", _node_config(node_config), "--max-retries", "20"]
        args += ["--root-certificates", f"{certs_dir}/ca.pem"] if certs_dir else ["--insecure"]
        if key:
            args += ["--auth-supernode-private-key", key]
        q = shlex.quote
        command = (f"mkdir -p {q(self.workdir)} || exit 1; cd {q(self.workdir)} || exit 1; PATH={q(bindir)}:\"$PATH\" "
                   f"FLWR_HOME={q(self.workdir + '/flwr-home')} nohup setsid {' '.join(map(q, args))} "
                   f"> {q(self.log)} 2>&1 < /dev/null & echo $! > {q(self.pidfile)}; cat {q(self.pidfile)}")
        out = device.check(command, timeout=60, what="starting the SuperNode")
        try:
            self.pid = int(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise FleetProcessError(f"the SuperNode on {device.uri} did not report its process id: {out!r}") from None

    def alive(self) -> bool:
        return self.device.run(f"kill -0 {self.pid} 2>/dev/null", timeout=30).returncode == 0

    def log_tail(self, lines: int = 5) -> str:
        return self.device.run(f"tail -n {lines} {shlex.quote(self.log)} 2>/dev/null; true", timeout=30).stdout.strip()

    def why_not_joined(self) -> str:
        """The SuperNode's own words on why it is not in the fleet (its log's last error), or its last line."""
        text = self.device.run(f"cat {shlex.quote(self.log)} 2>/dev/null; true", timeout=30).stdout
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
        lines = [line for line in lines if line]
        said = [line for line in lines if "[code:" in line or line.startswith("ERROR") or "Failed" in line]
        return (said or lines or ["it wrote no log"])[-1]

    def kill(self, sig: str = "KILL") -> None:
        """Signal the SuperNode and every process under it (its SuperExec and ClientApps, in sessions of their own)."""
        self.device.run(f"{TREE}; pids=$(tree {self.pid}); kill -{sig} -- -{self.pid} 2>/dev/null; "
                        f"kill -{sig} $pids 2>/dev/null; true", timeout=30)

    def tree_alive(self) -> list[int]:
        """The SuperNode's process and its descendants still running (empty once stopped)."""
        out = self.device.run(f"{TREE}; kill -0 {self.pid} 2>/dev/null && tree {self.pid}; true", timeout=30).stdout
        return [int(w) for w in out.split() if w.isdigit()]

    def stop(self, grace: float = 5) -> None:
        """TERM the SuperNode's processes (read first: its SuperExec outlives it otherwise), KILL what is left."""
        try:
            pids = " ".join(map(str, self.tree_alive()))
            if not pids:
                return
            self.device.run(f"kill -TERM -- -{self.pid} 2>/dev/null; kill -TERM {pids} 2>/dev/null; true", timeout=30)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.device.run(
                    f"for p in {pids}; do kill -0 $p 2>/dev/null && exit 0; done; exit 1", timeout=30).returncode == 0:
                time.sleep(0.2)
            self.device.run(f"kill -KILL {pids} 2>/dev/null; true", timeout=30)
        except DeviceError:
            pass  # the device went away: nothing of ours is left to stop there that we can reach
