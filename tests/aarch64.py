"""An aarch64 Python for tests: Debian's arm64 ``python3`` with ai-edge-litert and numpy, run by qemu-user-static.

    from .aarch64 import Aarch64Unavailable, aarch64_python
    python = aarch64_python()          # a wrapper script: use it as a device's Python
    subprocess.run([python, "tflite_runner.py", "--verify"])

What a Raspberry Pi runs, on this machine: a minimal root filesystem of Debian's arm64 packages (``python3``
and the libraries it needs, fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``: no
maintainer scripts, no chroot, nothing installed on the host) plus ai-edge-litert and numpy from their
aarch64 wheels on PyPI, installed where Debian's own Python modules live (``/usr/lib/python3/dist-packages``),
so the wrapper needs no ``PYTHONPATH`` of its own and a caller's ``PYTHONPATH`` passes through. The
wrapper runs ``qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.X``; binfmt_misc is not needed.

apt runs with a private state directory and ``APT::Architectures=arm64``, reading the host's sources
and keys: the host's dpkg database is never touched (no ``dpkg --add-architecture``), and root is not
required. The result is cached under ``$EDGETL_TEST_CACHE/aarch64`` (else ``~/.cache/edgetl-tests/aarch64``)
in a directory named for the pinned wheel versions, the host's Debian release and this file's layout; it is
built under a temporary name, checked, and renamed into place, so a half-built root filesystem is never used.
The versions it resolved are in ``versions.json`` beside the wrapper.

Under emulation: qemu-user (7.2, Debian 12) shows aarch64 programs the host's ``/proc/cpuinfo``, and
ai-edge-litert's CPU detection (the cpuinfo library under XNNPACK and ruy) finds no aarch64 processor in it
and crashes (SIGSEGV) as soon as an interpreter is made. qemu opens ``ROOTFS/<path>`` in place of
``<path>`` when it exists, so the root filesystem carries a ``proc/cpuinfo`` stand-in written as a
Cortex-A72's (a Raspberry Pi 4's); the processor count it lists need not match the host's (cpuinfo takes
the count from ``/sys``). Threads are real host threads: pass the runner a small ``--threads``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AI_EDGE_LITERT = "2.3.0"
NUMPY = "2.2.6"  # pinned so a cached root filesystem is what its directory name says
ROOTS = ("python3", "libstdc++6")  # the interpreter; ai-edge-litert's C++ runtime links libstdc++
# Dependencies a Python that only imports modules never uses: package tools and their perl, MIME tables,
# readline's configuration. Leaving them out keeps the download to about 12 MiB (33 packages on bookworm).
SKIP = re.compile(r"^(dpkg|tar|install-info|perl.*|libperl.*|mailcap|mime-support|media-types|readline-common|"
                  r"debconf|sensible-utils)$")
LAYOUT = 1  # bump when the layout below changes: a new cache directory is built
WRAPPER = "python3"

# A Cortex-A72 quad core (Raspberry Pi 4) as its kernel writes /proc/cpuinfo: the stand-in without which
# ai-edge-litert crashes under qemu (see the module docstring)
CPUINFO = "".join(f"""processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

""" for i in range(4))


class Aarch64Unavailable(RuntimeError):
    """qemu-user-static, apt, Debian's arm64 packages or the aarch64 wheels cannot be had here."""


def default_cache_dir() -> Path:
    root = os.environ.get("EDGETL_TEST_CACHE")
    return Path(root) / "aarch64" if root else Path.home() / ".cache" / "edgetl-tests" / "aarch64"


def qemu() -> str:
    path = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not path:
        raise Aarch64Unavailable("qemu-aarch64-static is not installed (Debian: apt-get install qemu-user-static)")
    return path


def _debian_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    found = re.search(r"^VERSION_CODENAME=\"?([\w.-]+)", text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def cache_key() -> str:
    return f"{_debian_release()}-litert{AI_EDGE_LITERT}-numpy{NUMPY}-v{LAYOUT}"


def aarch64_python(cache_dir: Path | None = None, log=None) -> Path:
    """The wrapper script that runs the cached aarch64 Python (built first if it is not there yet).

    Raises ``Aarch64Unavailable`` with the reason when it cannot be built here. ``log(message)``, if given,
    hears what a cold build is doing."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache_dir / cache_key()
    wrapper = final / WRAPPER
    if wrapper.is_file():
        return wrapper
    emulator = qemu()
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise Aarch64Unavailable(f"{tool} is not here: the aarch64 root filesystem is made from Debian's packages")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f".{final.name}.*"):  # builds killed before their cleanup ran
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        _build(build, final, emulator, log or (lambda message: None))
        try:
            os.rename(build, final)
        except OSError:
            if not wrapper.is_file():  # not another build that finished first
                raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return wrapper


def _run(cmd, what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise Aarch64Unavailable(f"{what} failed ({' '.join(map(str, cmd[:3]))} ...):\n"
                                 f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc


def _build(build: Path, final: Path, emulator: str, log) -> None:
    """Everything in ``build``; paths written into files (the wrapper) are ``final``'s."""
    rootfs, apt = build / "rootfs", build / "apt"
    t0 = time.monotonic()
    debs = _download_debs(apt, log)
    rootfs.mkdir()
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, rootfs], f"unpacking {deb.name}")
    versions = {"debian": {d.name.split("_")[0]: d.name.split("_")[1].replace("%3a", ":") for d in debs}}
    pythons = sorted(rootfs.glob("usr/bin/python3.[0-9]*"), key=lambda p: len(p.name))
    if not pythons:
        raise Aarch64Unavailable("Debian's arm64 python3 package holds no /usr/bin/python3.X")
    python = pythons[0]
    version = python.name[len("python"):]  # "3.11"
    log(f"unpacked {len(debs)} Debian arm64 packages (Python {version}) in {time.monotonic() - t0:.0f} s")

    # Where Debian's python3-* packages put modules: on sys.path of Debian's Python without PYTHONPATH
    site = rootfs / "usr/lib/python3/dist-packages"
    # Every manylinux tag this glibc runs (older pips take --platform literally, newer ones expand it)
    glibc = int(re.match(r"2\.(\d+)", versions["debian"]["libc6"]).group(1))
    platforms = [f"--platform=manylinux_2_{minor}_aarch64" for minor in range(17, glibc + 1)]
    platforms.append("--platform=manylinux2014_aarch64")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
          "--target", site, "--only-binary=:all:", *platforms, "--python-version", version,
          "--implementation", "cp", "--abi", f"cp{version.replace('.', '')}",
          f"ai-edge-litert=={AI_EDGE_LITERT}", f"numpy=={NUMPY}"],
         "installing the aarch64 wheels from PyPI", timeout=900)
    versions["wheels"] = {m.group(1): m.group(2) for d in site.glob("*.dist-info")
                          if (m := re.match(r"(.+)-([^-]+)\.dist-info$", d.name))}
    log(f"installed aarch64 wheels {versions['wheels']} at {time.monotonic() - t0:.0f} s")

    (rootfs / "proc").mkdir(exist_ok=True)
    (rootfs / "proc/cpuinfo").write_text(CPUINFO)
    shutil.rmtree(apt)

    # The check runs the root filesystem where it is now; the wrapper names where it will be
    probe = ("import platform, sys, numpy, ai_edge_litert.interpreter as i; "
             "print(platform.machine(), sys.version.split()[0], numpy.__version__)")
    out = _run([emulator, "-L", rootfs, python, "-c", probe], "running the aarch64 Python under qemu",
               timeout=300).stdout.split()
    if not out or out[0] != "aarch64":
        raise Aarch64Unavailable(f"the emulated Python reports {out!r}, not aarch64")
    versions["python"] = out[1]
    (build / "versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    final_rootfs = final / "rootfs"
    wrapper = build / WRAPPER
    wrapper.write_text("#!/bin/sh\n"
                       "# Debian's arm64 Python under qemu-user (tests/aarch64.py made this)\n"
                       f"exec {shlex.quote(emulator)} -L {shlex.quote(str(final_rootfs))} "
                       f'{shlex.quote(f"{final_rootfs}/usr/bin/{python.name}")} "$@"\n')
    wrapper.chmod(0o755)
    log(f"aarch64 Python {out[1]} checked under qemu at {time.monotonic() - t0:.0f} s")


def _apt_options(apt: Path) -> list[str]:
    """apt on a private state directory for arm64 alone, with the host's sources and keys."""
    for sub in ("state/lists/partial", "cache/archives/partial", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    options = {"Dir::State": apt / "state", "Dir::State::status": apt / "status", "Dir::Cache": apt / "cache",
               "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": apt / "preferences.d",
               "APT::Architecture": "arm64", "APT::Architectures::": "arm64", "Debug::NoLocking": "1",
               "APT::Sandbox::User": "root",  # the private directories are not _apt's to write
               "Acquire::Languages": "none"}
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def _download_debs(apt: Path, log) -> list[Path]:
    options = _apt_options(apt)
    _run(["apt-get", *options, "-qq", "update"], "apt-get update (arm64 package lists)", timeout=600)
    packages = _closure(_run(["apt-cache", *options, "depends", "--recurse", "--no-recommends", "--no-suggests",
                              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *ROOTS],
                             "apt-cache depends").stdout)
    debs = apt / "debs"
    debs.mkdir()
    _run(["apt-get", *options, "-qq", "download", *packages], "apt-get download (Debian arm64 packages)",
         cwd=debs, timeout=600)
    found = sorted(debs.glob("*.deb"))
    log(f"downloaded {len(found)} packages, {sum(d.stat().st_size for d in found) / 2**20:.1f} MiB")
    return found


def _closure(depends: str) -> list[str]:
    """The packages ``ROOTS`` need, from ``apt-cache depends --recurse`` output: each dependency's first
    alternative (a virtual one's first provider), less ``SKIP``."""
    graph: dict[str, list[list[str]]] = {}
    groups, pending, current = None, [], None
    lines = depends.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(" "):
            current = line.strip()
            groups = graph.setdefault(current, [])
            continue
        match = re.match(r"^ ([ |])(Pre)?Depends: (.+)$", line)
        if not match or groups is None:
            continue
        name = match.group(3).strip()
        if name.startswith("<"):  # virtual: the providers follow, indented further
            providers = []
            for follow in lines[i + 1:]:
                if not follow.startswith("    "):
                    break
                providers.append(follow.strip())
            name = providers[0] if providers else None
        if name:
            pending.append(name.split(":")[0])
        if match.group(1) == " ":  # the last alternative of its group
            groups.append(pending)
            pending = []
    chosen, todo = [], list(ROOTS)
    while todo:
        package = todo.pop(0)
        if package in chosen:
            continue
        chosen.append(package)
        for alternatives in graph.get(package, []):
            wanted = [a for a in alternatives if not SKIP.match(a)]
            if wanted and not any(a in chosen for a in wanted):
                todo.append(wanted[0])
    return chosen
