"""Devices over SSH (Raspberry Pi, any Linux board): ``ssh://[user@]host[:port][/workdir][?options]``.

    device = SSHDevice("ssh://pi@raspberrypi.local")            # work directory ~/edgetl
    device = SSHDevice("ssh://mypi/tmp/edgetl?known_hosts=strict")

``host`` may be an alias from ``~/.ssh/config`` (HostName, User, Port and IdentityFile are honoured).
Authentication uses the agent and the usual key files, or ``?key=PATH``. Host keys are checked against
``~/.ssh/known_hosts`` (or ``?known_hosts_file=PATH``): ``known_hosts=accept-new`` (the default, as
OpenSSH's StrictHostKeyChecking=accept-new) records a new host's key; ``strict`` refuses unknown hosts;
a *changed* key is always refused.

Files travel over SFTP when the device's sshd offers it, else over the command channel (``cat``): dropbear (OpenWrt,
many minimal images) and an OpenSSH without ``Subsystem sftp`` have none. The first transfer of a connection finds
out, once, and says so on the ``edgetl`` logger; callers see no difference (bundles keep their ``.part`` names,
sha256 checks and resume). A device where neither works is named in one error with both causes.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .base import AuthFailed, Device, DeviceError, DeviceTimeout, Disconnected, DiskFull, HostKeyChanged, RunResult, Unreachable

CONNECT_TIMEOUT_S = 10
CHUNK = 1 << 15
log = logging.getLogger("edgetl")


class SSHDevice(Device):
    scheme = "ssh"

    def __init__(self, uri: str):
        import paramiko

        self._paramiko = paramiko
        u = urlparse(uri)
        opts = {k: v[-1] for k, v in parse_qs(u.query).items()}
        config = paramiko.SSHConfig()
        config_path = Path(opts.get("ssh_config", "~/.ssh/config")).expanduser()
        if config_path.is_file():
            config = paramiko.SSHConfig.from_path(str(config_path))
        host_cfg = config.lookup(u.hostname or "")
        self.host = host_cfg.get("hostname", u.hostname)
        self.port = u.port or int(host_cfg.get("port", 22))
        self.user = unquote(u.username) if u.username else host_cfg.get("user", os.environ.get("USER", "root"))
        keys = [opts["key"]] if "key" in opts else host_cfg.get("identityfile", [])
        known_hosts = Path(opts.get("known_hosts_file", "~/.ssh/known_hosts")).expanduser()
        policy = opts.get("known_hosts", "accept-new")
        self.label = f"{self.user}@{self.host}:{self.port}"
        client = paramiko.SSHClient()
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
        if policy == "strict":
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.set_missing_host_key_policy(_AcceptNew(known_hosts))
        try:
            client.connect(self.host, self.port, self.user, key_filename=[str(Path(k).expanduser()) for k in keys] or None,
                           timeout=CONNECT_TIMEOUT_S, banner_timeout=CONNECT_TIMEOUT_S, auth_timeout=CONNECT_TIMEOUT_S,
                           look_for_keys="key" not in opts, allow_agent="key" not in opts)
        except paramiko.BadHostKeyException:
            raise HostKeyChanged(
                f"the host key of {self.host} changed since it was recorded in {known_hosts}: either the device was "
                f"reinstalled, or someone is in between. If you expect it, remove the old key with "
                f"`ssh-keygen -f {known_hosts} -R '[{self.host}]:{self.port}'` and deploy again") from None
        except paramiko.AuthenticationException:
            raise AuthFailed(
                f"authentication failed for {self.label}: the device does not accept your keys. Install your public "
                f"key there (`ssh-copy-id -p {self.port} {self.user}@{self.host}`), or name the key with ?key=PATH "
                f"or IdentityFile in ~/.ssh/config") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyChanged(f"{self.host} is not in {known_hosts} and known_hosts=strict refuses unknown "
                                     f"hosts; connect once with `ssh -p {self.port} {self.user}@{self.host}` to "
                                     f"record its key") from None
            raise Unreachable(f"no SSH session with {self.label}: {exc}; is sshd running on the device?") from None
        except (OSError, socket.timeout) as exc:
            raise Unreachable(f"cannot reach {self.label} ({exc.strerror or exc}): check that the device is on, "
                              f"on the network, and that the address and port are right") from None
        self.client = client
        self._sftp_ok: bool | None = None  # None: not tried yet; False: the device offers no SFTP (copy with cat)
        super().__init__(uri, u.path if u.path not in ("", "/") else self._home() + "/edgetl")

    def _home(self) -> str:
        return self.run("echo $HOME", timeout=30).stdout.strip() or "/tmp"

    def _session(self, command: str, tries: int = 4):
        """A channel running ``command``. Dropbear refuses or closes a session opened while the last one's command
        is still being reaped (after a refused SFTP subsystem too): with the connection up, it is tried again."""
        for attempt in range(tries):
            transport = self.client.get_transport()
            try:
                chan = transport.open_session(timeout=CONNECT_TIMEOUT_S)
                chan.exec_command(command)
                return chan
            except self._paramiko.SSHException:
                if attempt == tries - 1 or not transport.is_active():
                    raise
                time.sleep(0.1 * 2**attempt)

    def run(self, command, timeout=600, on_line=None):
        try:
            chan = self._session(command)
            out, err, buf = [], [], b""
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    data = chan.recv(65536)
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        text = line.decode(errors="replace")
                        out.append(text + "\n")
                        if on_line:
                            on_line(text)
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536).decode(errors="replace"))
                if chan.exit_status_ready() and not chan.recv_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise DeviceTimeout(f"a command on {self.label} ran past its {timeout:.0f}s timeout and was "
                                        f"stopped; raise --timeout, or run fewer --steps")
                if chan.closed and not chan.recv_ready():
                    break
                time.sleep(0.01)
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(65536).decode(errors="replace"))
            if buf:
                out.append(buf.decode(errors="replace"))
                if on_line:
                    on_line(buf.decode(errors="replace"))
            status = chan.recv_exit_status()
            chan.close()  # ended whole before the next opens (see _session)
            return RunResult(status, "".join(out), "".join(err))
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise Disconnected(f"the connection to {self.label} dropped ({exc}); run the same command again "
                               f"(deploys resume where they stopped)") from None

    def _sftp(self):
        """An SFTP session, or None when the device offers no SFTP (found out once per connection)."""
        if self._sftp_ok is False:
            return None
        try:
            sftp = self.client.open_sftp()
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise Disconnected(f"the connection to {self.label} dropped ({exc}); run the same command again") \
                    from None
            # the session is up, only the subsystem was refused (OpenSSH without `Subsystem sftp`) or its server
            # could not start (dropbear without sftp-server): copy over the command channel from now on
            self._sftp_ok = False
            log.info(f"{self.label} offers no SFTP ({exc}): copying files over the command channel (cat)")
            return None
        self._sftp_ok = True
        return sftp

    def push_file(self, local, remote, on_bytes=None):
        sftp = self._sftp()
        if sftp is None:
            return self._push_exec(Path(local), remote, on_bytes)
        sent = [0]

        def progress(done, _total):
            if on_bytes:
                on_bytes(done - sent[0])
            sent[0] = done

        try:
            sftp.put(str(local), remote, callback=progress, confirm=True)
        except OSError as exc:
            if "No space" in str(exc) or getattr(exc, "errno", None) == 28:
                raise self._disk_full(remote) from None
            if isinstance(exc, (EOFError, socket.error)) or "closed" in str(exc).lower() or "Socket" in str(exc):
                raise self._dropped(Path(local).name) from None
            raise Disconnected(f"sending {Path(local).name} to {self.label} failed ({str(exc) or type(exc).__name__}); "
                               f"run the same deploy again: it resumes") from None
        except (self._paramiko.SSHException, EOFError) as exc:
            raise self._dropped(Path(local).name, exc) from None
        finally:
            try:
                sftp.close()
            except Exception:
                pass

    def pull_file(self, remote, local):
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        sftp = self._sftp()
        if sftp is None:
            return self._pull_exec(remote, Path(local))
        try:
            sftp.get(remote, str(local))
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise Disconnected(f"fetching {remote} from {self.label} failed ({exc}); run the same command again") \
                from None
        finally:
            sftp.close()

    # -- without SFTP: the command channel -------------------------------------------------------------
    def _push_exec(self, local: Path, remote: str, on_bytes) -> None:
        """``cat > remote`` fed with the file; the device then reports the bytes it holds, which must match."""
        size = local.stat().st_size
        try:
            chan = self._session(f"cat > {shlex.quote(remote)} && wc -c < {shlex.quote(remote)}")
            try:
                with open(local, "rb") as f:
                    while chunk := f.read(CHUNK):
                        chan.sendall(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                chan.shutdown_write()
            except (self._paramiko.SSHException, EOFError, OSError):
                if not self.client.get_transport().is_active():
                    raise
                # the command ended before it took the whole file (a full disk, a `cat` that does not copy): its
                # exit status and words say why
            status, out, err = self._finish(chan)
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise self._dropped(local.name, exc) from None
        if status == 0 and out.strip() == str(size):
            return
        if "No space" in err or "Disk quota" in err:
            raise self._disk_full(remote)
        if status == -1:  # the channel closed without an exit status: the connection went
            raise self._dropped(local.name)
        raise self._cat_failed(f"writing {remote}", "cat > FILE", status, err)

    def _pull_exec(self, remote: str, local: Path) -> None:
        part = local.with_name(local.name + ".part")
        try:
            chan = self._session(f"cat {shlex.quote(remote)}")
            with open(part, "wb") as f:
                while data := chan.recv(CHUNK):
                    f.write(data)
            status, _, err = self._finish(chan)
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            part.unlink(missing_ok=True)
            raise Disconnected(f"fetching {remote} from {self.label} failed ({exc}); run the same command again") \
                from None
        if status != 0:
            part.unlink(missing_ok=True)
            if status == -1:
                raise Disconnected(f"the connection to {self.label} dropped while fetching {remote}; run the same "
                                   f"command again") from None
            raise self._cat_failed(f"reading {remote}", "cat FILE", status, err)
        os.replace(part, local)

    @staticmethod
    def _finish(chan, timeout: float = 600) -> tuple[int, str, str]:
        """(exit status, or -1 when the channel closed without one; stdout; stderr) of a command whose input ended."""
        chan.settimeout(timeout)
        out = b"".join(iter(lambda: chan.recv(CHUNK), b""))
        if not chan.status_event.wait(timeout):
            raise DeviceTimeout(f"a file transfer with the device ran past {timeout:.0f}s; run the same command again")
        err = b"".join(iter(lambda: chan.recv_stderr(CHUNK), b""))
        return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")

    def _cat_failed(self, what: str, command: str, status: int, err: str) -> DeviceError:
        """A file the shell could not open is named as such; ``cat`` that cannot run (or says nothing of why it
        failed) means this device has no way to copy files: both causes are named, with the fixes."""
        err = err.strip()
        if err and status not in (126, 127):
            return DeviceError(f"{what} on {self.label} failed: {err.splitlines()[-1]}")
        return DeviceError(f"cannot copy files to or from {self.label}: its sshd offers no SFTP, and copying over the "
                           f"command channel failed too (`{command}` exited {status}: {err or 'no output'}). Enable "
                           f"SFTP on the device (OpenSSH: `Subsystem sftp internal-sftp` in sshd_config; dropbear: "
                           f"install an sftp-server, e.g. openssh-sftp-server), or give its login shell a working `cat`")

    def _disk_full(self, remote: str) -> DiskFull:
        return DiskFull(f"{self.label} ran out of disk space writing {remote}; free some space in {self.workdir}, or "
                        f"deploy to another directory")

    def _dropped(self, name: str, exc: BaseException | None = None) -> Disconnected:
        why = f" ({str(exc) or type(exc).__name__})" if exc is not None else ""
        return Disconnected(f"the connection to {self.label} dropped while sending {name}{why}; run the same deploy "
                            f"again: it resumes, sending only what did not arrive")

    def close(self):
        self.client.close()


class _AcceptNew:
    """Record an unknown host's key in known_hosts (OpenSSH's accept-new); a changed key is refused elsewhere."""

    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        with open(self.path, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

