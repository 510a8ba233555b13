"""What every device offers, whatever the transport: probe, run, push/pull with checksums, errors for people.

    device = connect("ssh://pi@raspberrypi.local")      # or adb://SERIAL, adb://HOST:PORT, local://
    info = device.probe()                                # arch, OS, RAM, CPUs, Python, runtimes, free disk
    device.push_file("a.onnx", f"{device.workdir}/a.onnx")
    result = device.run("python3 -V", timeout=30, on_line=print)

A transport implements ``run``, ``push_file`` and ``pull_file`` (and ``close``); everything else here is
built on them with POSIX shell commands that Raspberry Pi OS and Android's toybox both have.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlparse

from ..errors import EdgeTLError
from ..formats import dists
from ..io import file_sha256  # noqa: F401  (re-exported for transports and bundles)


class DeviceError(EdgeTLError):
    """Something about the device, named for a person, with the fix."""


class Unreachable(DeviceError):
    pass


class AuthFailed(DeviceError):
    pass


class HostKeyChanged(DeviceError):
    pass


class Disconnected(DeviceError):
    pass


class DiskFull(DeviceError):
    pass


class RuntimeMissing(DeviceError):
    pass


class RunnerFailed(DeviceError):
    pass


class DeviceTimeout(DeviceError):
    pass


class MemoryRefused(DeviceError):
    pass


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 15) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


@dataclass
class DeviceInfo:
    uri: str
    arch: str = ""
    os: str = ""
    kernel: str = ""
    model: str = ""
    cpus: int = 0
    mem_total_bytes: int = 0
    mem_available_bytes: int = 0
    free_bytes: int = 0
    workdir: str = ""
    python: str | None = None
    python_bin: str | None = None
    runtimes: dict[str, str] = field(default_factory=dict)  # runtime -> version, only those present
    python_source: str = ""  # uri (?python=), setup (the environment setup recorded), path (the login PATH's)
    env: str | None = None  # the virtual environment python_bin belongs to, if any
    system: str = ""  # platform.system() of that Python: Linux, Darwin
    libc: str | None = None  # e.g. "glibc 2.36"; "" on Android's bionic (Termux) and musl; None: not told
    android: bool = False
    termux: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# Prints key=value lines. Python is asked for runtimes by metadata, never by import: importing
# onnxruntime.training pulls in torch when present, and a probe must be quick and side-effect free.
# The interpreter is the URI's ?python=, else the one `edgetl devices setup` recorded, else the login PATH's.
PROBE = r"""
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=$PRETTY_NAME"; fi
if command -v getprop >/dev/null 2>&1; then
  echo "android=1"; echo "os=Android $(getprop ro.build.version.release)"; echo "model=$(getprop ro.product.model)"
elif [ -r /proc/device-tree/model ]; then echo "model=$(tr -d '\0' < /proc/device-tree/model)"; fi
case "${TERMUX_VERSION:+termux}$PREFIX" in termux*|*com.termux*) echo "termux=1";; esac
awk '/^MemTotal:/{print "mem_total_kb="$2} /^MemAvailable:/{print "mem_available_kb="$2}' __MEMINFO__
echo "cpus=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
mkdir -p __WORKDIR__ && echo "free_kb=$(df -Pk __WORKDIR__ | awk 'NR==2{print $4}')"
py=; src=
__PYSELECT__
if [ -n "$py" ]; then
  echo "python_bin=$py"; echo "python_source=$src"
  "$py" - <<'PY'
import sys
print("python=" + sys.version.split()[0])
print("prefix=" + sys.prefix)
if getattr(sys, "base_prefix", sys.prefix) != sys.prefix:
    print("venv=1")
try:
    import platform
    print("system=" + platform.system())
    print("libc=" + " ".join(platform.libc_ver()).strip())
except Exception:
    pass
try:
    from importlib import metadata
except ImportError:
    metadata = None
for dist in __DISTS__:
    try:
        print("runtime." + dist + "=" + metadata.version(dist))
    except Exception:
        pass
PY
fi
true
""".replace("__DISTS__", repr((*dists(), "numpy", "pillow")))
#: where `edgetl devices setup` keeps environments and its record, as a shell word on the device
ENV_ROOT = '"${XDG_CACHE_HOME:-$HOME/.cache}/edgetl"'
#: the record's "python" line is read by sed here, so setup writes it first, on a line of its own
PYSELECT_RECORDED = r"""
rec=__ENV_ROOT__/env.json
if [ -f "$rec" ]; then
  py=$(sed -n 's/^  "python": "\(.*\)",*$/\1/p' "$rec" | head -n 1)
  if [ -n "$py" ] && [ -x "$py" ]; then src=setup; else echo "env_broken=$rec"; py=; fi
fi
if [ -z "$py" ]; then
  for c in python3 python; do
    if command -v $c >/dev/null 2>&1; then py=$(command -v $c); src=path; break; fi
  done
fi
""".replace("__ENV_ROOT__", ENV_ROOT)
PYSELECT_GIVEN = r"""
py=__PY__; src=uri
case "$py" in */*) ;; *) py=$(command -v "$py" 2>/dev/null || echo "$py");; esac
if [ ! -e "$py" ]; then echo "python_error=missing"; py=
elif [ -d "$py" ] || [ ! -x "$py" ]; then echo "python_error=notexec"; py=
fi
"""


def shell_path(path: str) -> str:
    """``path`` as a shell word, with a leading ``~/`` meaning the device user's home."""
    return f'"$HOME"/{shlex.quote(path[2:])}' if path.startswith("~/") else shlex.quote(path)


MEMINFO = "/proc/meminfo"


class Device(ABC):
    """A device reached over some transport; ``workdir`` is where edgetl keeps bundles and runs."""

    scheme = ""

    def __init__(self, uri: str, workdir: str):
        self.uri, self.workdir = uri, workdir.rstrip("/") or "/"
        #: the interpreter the URI names (?python=PATH), for every transport; None: setup's, else the PATH's
        self.python = dict(parse_qsl(urlparse(uri).query)).get("python") or None

    # -- transport ---------------------------------------------------------------------------------
    @abstractmethod
    def run(self, command: str, timeout: float = 600, on_line: Callable[[str], None] | None = None) -> RunResult:
        """Run a shell command; ``on_line`` gets stdout lines as they come. Raises DeviceTimeout."""

    @abstractmethod
    def push_file(self, local: Path, remote: str, on_bytes: Callable[[int], None] | None = None) -> None:
        """Copy one file to the device (the caller handles temporary names)."""

    @abstractmethod
    def pull_file(self, remote: str, local: Path) -> None:
        """Copy one file from the device."""

    def close(self) -> None:  # noqa: B027 - optional for transports
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- shared, built on run() -------------------------------------------------------------------
    def check(self, command: str, timeout: float = 120, what: str = "a command") -> str:
        result = self.run(command, timeout=timeout)
        if result.returncode != 0:
            tail = result.tail(5)
            if "No space left" in tail:
                raise DiskFull(f"the device ran out of disk space in {self.workdir}; free some space there, or "
                               f"deploy to another directory")
            raise DeviceError(f"{what} failed on {self.uri} (exit {result.returncode}): {tail}")
        return result.stdout

    def probe(self) -> DeviceInfo:
        select = PYSELECT_GIVEN.replace("__PY__", shell_path(self.python)) if self.python else PYSELECT_RECORDED
        script = PROBE.replace("__WORKDIR__", shlex.quote(self.workdir)).replace("__MEMINFO__", MEMINFO)
        out = self.check(script.replace("__PYSELECT__", select), timeout=60, what="probing the device")
        values: dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep and key not in values:  # the first answer wins (os-release before getprop)
                values[key.strip()] = value.strip()
        runtimes = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("runtime.")}
        as_int = lambda key: int(values[key]) if values.get(key, "").isdigit() else 0  # noqa: E731
        if self.python:
            self._check_given_python(values)
        return DeviceInfo(self.uri, values.get("arch", ""), values.get("os", ""), values.get("kernel", ""),
                          values.get("model", ""), as_int("cpus"), as_int("mem_total_kb") * 1024,
                          as_int("mem_available_kb") * 1024, as_int("free_kb") * 1024, self.workdir,
                          values.get("python"), values.get("python_bin"), runtimes, values.get("python_source", ""),
                          values.get("prefix") if values.get("venv") else None, values.get("system", ""),
                          values.get("libc"), bool(values.get("android")), bool(values.get("termux")))

    def _check_given_python(self, values: dict) -> None:
        fix = ("name a Python 3 interpreter by its full path (e.g. ?python=/opt/venv/bin/python), or drop ?python= "
               "to use the environment `edgetl devices setup` makes")
        error = values.get("python_error")
        if error == "missing":
            raise DeviceError(f"?python={self.python}: no such file on {self.uri}; {fix}")
        if error == "notexec":
            raise DeviceError(f"?python={self.python} on {self.uri} is not an executable file; {fix}")
        version = values.get("python", "")
        if not version.startswith("3."):
            said = f"it reports Python {version}" if version else "it does not run as Python"
            raise DeviceError(f"?python={self.python} on {self.uri} is not Python 3 ({said}); {fix}")

    def sha256(self, paths: list[str]) -> dict[str, str]:
        """sha256 of the files that exist among ``paths`` (missing ones are left out)."""
        if not paths:
            return {}
        quoted = " ".join(shlex.quote(p) for p in paths)
        out = self.run(f"for f in {quoted}; do [ -f \"$f\" ] && sha256sum \"$f\"; done; true", timeout=300).stdout
        sums = {}
        for line in out.splitlines():
            digest, _, path = line.strip().partition("  ")
            if len(digest) == 64:
                sums[path.strip()] = digest
        return sums

    def makedirs(self, path: str) -> None:
        self.check(f"mkdir -p {shlex.quote(path)}", what=f"creating {path}")

    def rename(self, src: str, dst: str) -> None:
        self.check(f"mv -f {shlex.quote(src)} {shlex.quote(dst)}", what=f"renaming {src}")

    def remove(self, path: str) -> None:
        self.check(f"rm -rf {shlex.quote(path)}", what=f"removing {path}")

    def clean(self, keep_results: bool = False) -> list[str]:
        """Remove what edgetl put on the device: bundles (and their training runs unless ``keep_results``)."""
        listing = self.run(f"ls -1 {shlex.quote(self.workdir)}/bundles 2>/dev/null; true", timeout=60).stdout.split()
        removed = []
        for name in listing:
            path = f"{self.workdir}/bundles/{name}"
            if keep_results and not name.endswith(".partial"):
                self.check(f"cd {shlex.quote(path)} && ls -A | grep -vx runs | xargs rm -rf", what=f"cleaning {path}")
            else:
                self.remove(path)
            removed.append(path)
        return removed

    def resolve(self, path: str) -> str:
        """A path on the device as its user means it, made absolute: ``~/x`` and relative paths start in the home
        directory (where a login starts), so a runner working in its bundle reads the folder the user named."""
        if path.startswith("/"):
            return path
        home = self.check('echo "$HOME"', timeout=60, what="finding the home directory").strip().rstrip("/")
        rest = path[2:] if path.startswith("~/") else "" if path == "~" else path
        return f"{home}/{rest}" if rest else home or "/"

    def exists(self, path: str) -> bool:
        return self.run(f"[ -e {shlex.quote(path)} ]", timeout=60).returncode == 0

