"""Real services on loopback for device tests: OpenSSH's sshd, a TCP proxy that drops, the ADB peer, and a
Raspberry-Pi-OS-like device (a non-root user behind its own sshd, the distribution's externally managed
/usr/bin/python3 on a plain login PATH).

Devices bring their own Python environment: the loopback ones name this test run's interpreter with
``?python=`` (it has the runtimes, whatever the login PATH finds); the Pi-like one gets an environment from
``edgetl devices setup``. A service the machine lacks skips its tests with one line, and fails them in CI
(``CI=true``), where .ci/run installs it. Every process and thread started here is stopped by the fixture
that started it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .adbpeer import ADBPeer

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
DROPBEAR = shutil.which("dropbear") or "/usr/sbin/dropbear"
#: where Debian's dropbear finds its SFTP server (openssh-sftp-server's)
DROPBEAR_SFTP = "/usr/lib/sftp-server"


def require(ok, reason: str) -> None:
    """Skip with ``reason`` when not ``ok``; in CI (``CI=true``) fail instead: there the machine is broken."""
    if ok:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


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

    def uri(self, workdir: Path, known_hosts: Path, key: Path | None = None, port: int | None = None,
            python: str | None = sys.executable) -> str:
        """The device as seen by a deploy; ``python``: its interpreter (this run's, which has the runtimes)."""
        return (f"ssh://{self.user}@127.0.0.1:{port or self.port}{workdir}"
                f"?key={key or self.key}&known_hosts_file={known_hosts}" + (f"&python={python}" if python else ""))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    yield from _sshd(tmp_path_factory.mktemp("sshd"), sftp=True)


@pytest.fixture(scope="session")
def sshd_nosftp(tmp_path_factory):
    """An OpenSSH sshd configured without ``Subsystem sftp``: files travel over the command channel."""
    yield from _sshd(tmp_path_factory.mktemp("sshd-nosftp"), sftp=False)


def _sshd(root: Path, sftp: bool):
    require(os.path.exists(SSHD), "OpenSSH's sshd is missing: apt-get install openssh-server (.ci/run does)")
    for name in ("host_key", "client_key", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        + ("Subsystem sftp internal-sftp\n" if sftp else "") + "LogLevel ERROR\n")
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
    require(shutil.which("adb"), "the adb client is missing: apt-get install adb (.ci/run does)")
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
    """Start an ADB peer: ``adb_peer(python=..., **faults)`` -> (peer, uri of its work directory); ``python``
    (default: this run's interpreter) goes into the URI as ``?python=``, None leaves the choice to the probe."""
    started = []

    def start(python: str | None = sys.executable, **faults):
        sandbox = tmp_path / f"android{len(started)}"
        sandbox.mkdir()
        peer = ADBPeer(sandbox, **faults).start()
        started.append(peer)
        return peer, f"adb://127.0.0.1:{peer.port}{sandbox / 'edgetl'}" + (f"?python={python}" if python else "")

    yield start
    for peer in started:
        subprocess.run(["adb", "disconnect", f"127.0.0.1:{peer.port}"], capture_output=True, timeout=30)
        peer.stop()


# -- exports to deploy (made once per session) ----------------------------------------------------------

@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """(ONNX export, its root): the root also holds the run and an ImageFolder ``data`` of the model's classes."""
    pytest.importorskip("onnxruntime.training")
    from edgetl.exporters import export

    from .conftest import make_image_folder  # here: conftest imports this module
    from .exportutil import PATTERN_CLASSES, make_run

    root = tmp_path_factory.mktemp("deploy")
    classes = sorted(PATTERN_CLASSES)  # as an ImageFolder of them lists its classes
    run = make_run(root / "run", "mobilenet_v3_small", "mobiletl:2", resolution=64, class_names=classes)
    export(run, "onnx", root / "art", steps=2)
    make_image_folder(root / "data", classes=classes, per_class=4, size=32)
    return root / "art", root


@pytest.fixture(scope="session")
def tflite_artifacts(artifacts):
    """(TFLite export at batch 4, root) of the same run."""
    pytest.importorskip("tensorflow")
    from edgetl.exporters import export

    _, root = artifacts
    export(root / "run", "tflite", root / "tflite", steps=2, batch_size=4)
    return root / "tflite", root


# -- a Raspberry-Pi-OS-like device ---------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class PiDevice:
    """A non-root user on its own sshd: the login PATH sshd gives (/usr/local/bin:/usr/bin:/bin:/usr/games)
    finds only the distribution's externally managed /usr/bin/python3, as on Raspberry Pi OS Bookworm."""

    user: str
    home: Path
    root: Path  # keys, sshd configs, known_hosts
    port: int
    uid: int
    gid: int
    procs: list = field(default_factory=list)

    def uri(self, query: str = "", port: int | None = None) -> str:
        extra = f"&{query}" if query else ""
        return (f"ssh://{self.user}@127.0.0.1:{port or self.port}?key={self.root / 'client_key'}"
                f"&known_hosts_file={self.root / 'known_hosts'}{extra}")

    def write(self, rel: str, text: str, mode: int = 0o644) -> Path:
        """A file in the user's home, owned by the user."""
        path = self.home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        for p in [path, *path.relative_to(self.home).parents]:
            os.chown(self.home / p, self.uid, self.gid)
        return path

    def offline_pip(self) -> None:
        """The user's pip reaches no index: a closed port on loopback, no retries."""
        self.write(".config/pip/pip.conf", f"[global]\nindex-url = http://127.0.0.1:{free_port()}/simple\n"
                                           f"timeout = 2\nretries = 0\n")

    def reset(self) -> None:
        """Back to a fresh device: no environment, no bundles, the system's pip configuration."""
        for rel in (".cache/edgetl", "edgetl", ".config/pip", "bin"):
            shutil.rmtree(self.home / rel, ignore_errors=True)

    def start_sshd(self, mounts: list[str] = (), sftp: bool = True) -> int:
        """Another sshd for this user whose sessions see ``mounts`` (mount(8) argument strings) in a private
        mount namespace: a device that lacks a package, or has a small disk; ``sftp=False``: an sshd without
        ``Subsystem sftp``. Returns its port."""
        port = free_port()
        config = self.root / f"sshd_config.{port}"
        text = (self.root / "sshd_config").read_text().replace(f"Port {self.port}", f"Port {port}")
        config.write_text(text.replace("sshd.pid", f"sshd.{port}.pid")
                          .replace("" if sftp else "Subsystem sftp internal-sftp\n", ""))
        return self._serve(port, mounts, f"exec {SSHD} -D -e -f {config}")

    def start_dropbear(self, mounts: list[str] = (), sftp: bool = False) -> int:
        """Debian's dropbear for this user (root logins refused, keys only), as on OpenWrt and minimal images.
        Dropbear runs /usr/lib/sftp-server for SFTP; ``sftp=False`` hides it from its sessions (a build without
        it). Returns its port."""
        require(os.path.exists(DROPBEAR), "dropbear is missing: apt-get install dropbear-bin (.ci/run does)")
        key = self.root / "dropbear_host_key"
        if not key.exists():
            subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(key)], check=True, capture_output=True)
        port = free_port()
        hide = [] if sftp else [f"--bind /dev/null {os.path.realpath(DROPBEAR_SFTP)}"]
        return self._serve(port, [*hide, *mounts], f"exec {DROPBEAR} -F -E -s -w -r {key} -p 127.0.0.1:{port} "
                                                   f"-P {self.root / f'dropbear.{port}.pid'}")

    def _serve(self, port: int, mounts, command: str) -> int:
        script = "".join(f"mount {m} && " for m in mounts) + command
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                stderr=subprocess.PIPE)
        self.procs.append(proc)
        try:
            wait_port(port)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(f"{command.split()[1]} in a mount namespace did not start: "
                               f"{proc.communicate()[1].decode()[-500:]}") from None
        return port


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def pi_device():
    """A Raspberry-Pi-OS-like device on 127.0.0.1 (needs root to add its user; removed at the end)."""
    require(os.geteuid() == 0, "the Raspberry-Pi-like device needs root to add its user (useradd); CI runs as root")
    require(os.path.exists(SSHD), "OpenSSH's sshd is missing: apt-get install openssh-server (.ci/run does)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True)
    require(probe.returncode == 0, f"{SYSTEM_PYTHON} with its venv module is missing: apt-get install python3-venv")
    base = Path(tempfile.mkdtemp(prefix="edgetl-pi-"))
    base.chmod(0o755)  # the user's home lies below: it must be reachable for that user
    user = f"etlpi{os.getpid()}"
    home = base / "home" / user
    home.parent.mkdir()
    home.parent.chmod(0o755)
    root = base / "device"
    root.mkdir()
    sshd_proc = None
    # '*': no password, yet not a locked account ('!'), which sshd refuses without PAM
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--password", "*",
                    "--user-group", user], check=True, capture_output=True)
    try:
        import pwd

        entry = pwd.getpwnam(user)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        port = free_port()
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile .ssh/authorized_keys\nAllowUsers {user}\nUsePAM no\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
        os.makedirs("/run/sshd", exist_ok=True)
        pi = PiDevice(user, home, root, port, entry.pw_uid, entry.pw_gid)
        pi.write(".ssh/authorized_keys", (root / "client_key.pub").read_text(), 0o600)
        (home / ".ssh").chmod(0o700)
        sshd_proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE)
        wait_port(port)
        yield pi
        for proc in pi.procs:
            _stop(proc)
    finally:
        if sshd_proc:
            _stop(sshd_proc)
        _remove_user(user)
        shutil.rmtree(base, ignore_errors=True)


def _remove_user(user: str) -> None:
    """userdel, once the user's last processes are gone: sessions this run opened end with their connection,
    and any left (a session of a dropped connection) were started by these tests: they are ended by PID."""
    for attempt in range(40):
        if subprocess.run(["userdel", user], capture_output=True).returncode == 0:
            return
        if attempt == 10:
            pids = subprocess.run(["ps", "-u", user, "-o", "pid="], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 15)
                except OSError:
                    pass
        time.sleep(0.25)
    raise RuntimeError(f"could not remove the test user {user}: `userdel {user}` once its processes ended")


@pytest.fixture
def pi(pi_device):
    """The Pi-like device, fresh for each test; namespaced sshds a test started are stopped after it."""
    pi_device.reset()
    yield pi_device
    while pi_device.procs:
        _stop(pi_device.procs.pop())
    pi_device.reset()


@pytest.fixture(scope="session")
def device_wheels(tmp_path_factory):
    """The TFLite runtime's wheels for the Pi-like device (this machine's /usr/bin/python3), downloaded once by
    `edgetl devices setup`'s own download, so setup --wheels can run with the device's index unreachable."""
    from edgetl.devices.base import DeviceError
    from edgetl.devices.setup import download_wheels

    facts = subprocess.run([SYSTEM_PYTHON, "-c", "import platform, sys; print(platform.machine(), "
                            "sys.version.split()[0], platform.libc_ver()[1])"], capture_output=True, text=True)
    require(facts.returncode == 0, f"{SYSTEM_PYTHON} is missing")
    machine, version, glibc = facts.stdout.split()
    out = tmp_path_factory.mktemp("wheels")
    try:
        download_wheels(out, "Linux", machine, version, glibc, ["ai-edge-litert"])
    except DeviceError as exc:
        require(False, f"cannot download the device's wheels here (pip's index unreachable?): {exc}")
    return out
