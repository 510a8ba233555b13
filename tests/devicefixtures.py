"""Real services on loopback for device tests: OpenSSH's sshd, a TCP proxy that drops, the ADB peer.

Every process and thread started here is stopped by the fixture that started it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .adbpeer import ADBPeer

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class SSHServer:
    port: int
    key: Path  # authorised client key
    other_key: Path  # a key the server does not accept
    host_pub: str
    root: Path
    user: str = getpass.getuser()

    def uri(self, workdir: Path, known_hosts: Path, key: Path | None = None, port: int | None = None) -> str:
        return (f"ssh://{self.user}@127.0.0.1:{port or self.port}{workdir}"
                f"?key={key or self.key}&known_hosts_file={known_hosts}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    assert os.path.exists(SSHD), "OpenSSH's sshd is missing: apt-get install openssh-server (.ci/run does)"
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
        f"LogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE)
    try:
        wait_port(port)
        yield SSHServer(port, root / "client_key", root / "other_key", (root / "host_key.pub").read_text(), root)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class DroppingProxy:
    """Forwards 127.0.0.1:port to a target and cuts the first connection after ``limit`` upstream bytes."""

    def __init__(self, target_port: int, limit: int):
        self.target, self.limit, self.dropped = target_port, limit, False
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.running = True
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                client, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [client, upstream]
            sent = [0]
            threading.Thread(target=self._pipe, args=(client, upstream, sent, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, sent, False), daemon=True).start()

    def _pipe(self, src, dst, sent, upstream):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if upstream:
                    sent[0] += len(data)
                    if sent[0] >= self.limit and not self.dropped:
                        self.dropped = True
                        for s in (src, dst):
                            s.shutdown(socket.SHUT_RDWR)
                        return
        except OSError:
            pass

    def close(self):
        self.running = False
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory):
    """A private adb server (its own port), killed at the end."""
    assert shutil.which("adb"), "the adb client is missing: apt-get install adb (.ci/run does)"
    port = str(free_port())
    old = os.environ.get("ANDROID_ADB_SERVER_PORT")
    os.environ["ANDROID_ADB_SERVER_PORT"] = port
    subprocess.run(["adb", "start-server"], capture_output=True, timeout=30, check=True)
    try:
        yield port
    finally:
        subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30)
        if old is None:
            os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
        else:
            os.environ["ANDROID_ADB_SERVER_PORT"] = old


@pytest.fixture
def adb_peer(adb_server, tmp_path):
    """Start an ADB peer: ``adb_peer(**faults)`` -> (peer, uri of its work directory)."""
    started = []

    def start(**faults):
        sandbox = tmp_path / f"android{len(started)}"
        sandbox.mkdir()
        peer = ADBPeer(sandbox, **faults).start()
        started.append(peer)
        return peer, f"adb://127.0.0.1:{peer.port}{sandbox / 'edgetl'}"

    yield start
    for peer in started:
        subprocess.run(["adb", "disconnect", f"127.0.0.1:{peer.port}"], capture_output=True, timeout=30)
        peer.stop()
