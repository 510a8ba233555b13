"""Android devices over ADB, through the ``adb`` client: ``adb://SERIAL`` or ``adb://HOST:PORT[/workdir]``.

    device = ADBDevice("adb://emulator-5554")                   # work directory /data/local/tmp/edgetl
    device = ADBDevice("adb://192.168.1.20:5555")                # `adb connect` first

The client (Debian/Ubuntu: ``apt install adb``; macOS: ``brew install android-platform-tools``) talks to its
server, which talks to the device; ``ANDROID_ADB_SERVER_PORT`` chooses the server as it does for adb.
ADB's plain shell protocol returns no exit status, so commands end by printing one, which is read back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from .base import Device, DeviceError, Disconnected, DiskFull, RunResult, Unreachable
from .stream import run_streaming

DEFAULT_WORKDIR = "/data/local/tmp/edgetl"
RC_MARK = "__EDGETL_RC__="


class ADBDevice(Device):
    scheme = "adb"

    def __init__(self, uri: str):
        u = urlparse(uri)
        self.serial = u.netloc
        if not self.serial:
            raise DeviceError("an adb URI names the device: adb://SERIAL (see `adb devices`) or adb://HOST:PORT")
        self.adb = shutil.which("adb")
        if self.adb is None:
            raise DeviceError("the adb client is not installed: `apt install adb` (Debian/Ubuntu) or "
                              "`brew install android-platform-tools` (macOS)")
        if ":" in self.serial:
            out = self._adb("connect", self.serial, timeout=30)
            if "connected to" not in out.stdout:
                raise Unreachable(f"cannot reach {self.serial} over adb ({(out.stdout + out.stderr).strip()}): enable "
                                  f"wireless debugging on the phone and check the address and port")
        state = self._adb("-s", self.serial, "get-state", timeout=30)
        if state.returncode != 0 or state.stdout.strip() != "device":
            raise Unreachable(f"adb device {self.serial} is not available ({(state.stderr or state.stdout).strip()}): "
                              f"check `adb devices`, the USB cable, and that USB debugging is allowed on the phone")
        super().__init__(uri, u.path if u.path not in ("", "/") else DEFAULT_WORKDIR)

    def _adb(self, *args, timeout=600) -> RunResult:
        proc = subprocess.run([self.adb, *args], capture_output=True, text=True, timeout=timeout)
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def run(self, command, timeout=600, on_line=None):
        wrapped = f"(\n{command}\n)\necho {RC_MARK}$?"  # a subshell, so an `exit` in the command still reports
        proc = subprocess.Popen([self.adb, "-s", self.serial, "shell", wrapped], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

        def forward(line):
            if not line.startswith(RC_MARK) and on_line:
                on_line(line)

        result = run_streaming(proc, timeout, forward, f"adb://{self.serial}")
        lines = result.stdout.splitlines()
        marks = [line for line in lines if line.startswith(RC_MARK)]
        if result.returncode != 0 or not marks:
            raise Disconnected(f"lost adb device {self.serial} while running a command "
                               f"({result.stderr.strip() or 'no exit status came back'}); reconnect it and try again")
        stdout = "\n".join(line for line in lines if not line.startswith(RC_MARK)) + "\n"
        # ADB's plain shell has no separate stderr: both streams arrive as stdout
        return RunResult(int(marks[-1][len(RC_MARK):]), stdout, stdout)

    def _transfer(self, what: str, *args) -> None:
        result = self._adb("-s", self.serial, *args)
        if result.returncode == 0:
            return
        message = (result.stderr + result.stdout).strip()
        if "No space left" in message:
            raise DiskFull(f"{self.serial} ran out of disk space ({message}); free space on the phone, or deploy to "
                           f"another directory")
        if "not found" in message or "offline" in message:
            raise Unreachable(f"adb device {self.serial} is gone ({message}); reconnect it and deploy again")
        raise Disconnected(f"{what} over adb failed ({message}); reconnect the device and run the same deploy "
                           f"again: it resumes")

    def push_file(self, local, remote, on_bytes=None):
        self._transfer(f"sending {Path(local).name}", "push", str(local), remote)
        if on_bytes:
            on_bytes(Path(local).stat().st_size)

    def pull_file(self, remote, local):
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self._transfer(f"fetching {remote}", "pull", remote, str(local))

