"""The runtime packages a device installs (not the runners, which are `edgetl/runtime/`): what setup installs, where
it has wheels, and deploy's refusal when a device lacks one.

    RUNTIMES["ai-edge-litert"].requirement        # 'ai-edge-litert==2.3.0'
    by_option("onnx")                              # the runtime named by --runtime onnx
    unsupported(RUNTIMES["onnxruntime-training"], "Linux", "aarch64", "3.11", "glibc 2.36")   # why not, or None
    check_runtime(info, "ai-edge-litert")          # raises RuntimeMissing naming `edgetl devices setup URI`

A runtime is keyed by the name an export's manifest gives (``runtime``). Each format's package describes its
runtime (pins, platforms: :class:`edgetl.formats.Runtime`); this module reads them from the registry
(:mod:`edgetl.formats`). A test holds pyproject.toml to the pins.
"""

from __future__ import annotations

import shlex
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from ..formats import Runtime, runtimes
from .base import DeviceInfo, RuntimeMissing

#: the device runtimes, by the name an export's manifest gives: each format's (:mod:`edgetl.formats`)
RUNTIMES = runtimes()
#: installed beside every runtime: numpy for the runners, Pillow for decoding images on the device
COMMON = ("numpy>=1.24", "pillow>=10")
#: preference of `--runtime auto`: the first one the device has wheels for (the registry's order)
AUTO_ORDER = tuple(RUNTIMES)
#: the oldest glibc the pinned Linux wheels (manylinux_2_27) run on
MIN_GLIBC = (2, 27)


def by_option(option: str) -> Runtime:
    for runtime in RUNTIMES.values():
        if option in (runtime.option, runtime.name):
            return runtime
    raise KeyError(option)


#: what `edgetl devices setup --fleet` adds: Flower, whose SuperNode and ClientApp run the device's side of a fleet
FLEET = "flwr==1.42.0"


def requirements(names, fleet: bool = False) -> list[str]:
    return [RUNTIMES[n].requirement for n in names] + list(COMMON) + ([FLEET] if fleet else [])


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def unsupported(runtime: Runtime, system: str, machine: str, python: str, libc: str | None = None) -> str | None:
    """Why ``runtime`` has no wheel for this platform and Python (a sentence naming the supported ones), or None.

    ``libc`` is ``platform.libc_ver()`` joined ("glibc 2.36"; "" for bionic or musl; None when unknown)."""
    machine = {"arm64": "aarch64"}.get(machine, machine) if system == "Linux" else machine
    if (system, machine) not in runtime.platforms:
        extra = " (32-bit: install the 64-bit Raspberry Pi OS)" if machine.startswith("armv") else ""
        return (f"{runtime.requirement} has no wheel for {system} {machine}{extra}; it has wheels for "
                f"{runtime.where}")
    if system == "Linux" and libc is not None:
        kind, _, version = libc.partition(" ")
        if kind != "glibc":
            return (f"{runtime.requirement} has wheels for glibc Linux only, and this device's C library is "
                    f"{kind or 'not glibc'} (Termux, Alpine); it has wheels for {runtime.where}")
        if _version_tuple(version) < MIN_GLIBC:
            return (f"{runtime.requirement} needs glibc {'.'.join(map(str, MIN_GLIBC))} or newer and this device "
                    f"has {version}: update the OS (Raspberry Pi OS Bookworm has 2.36)")
    lo, hi = runtime.python
    if not lo <= _version_tuple(python) <= hi:
        return (f"{runtime.requirement} has wheels for {runtime.python_range()} and this device's Python is {python}: "
                f"run setup with --python naming a supported interpreter")
    return None


def platform_tags(system: str, machine: str, glibc: str = "") -> list[str]:
    """pip ``--platform`` tags a device accepts (pip does not widen a manylinux_2_X tag to older ones itself)."""
    if system == "Linux":
        machine = {"arm64": "aarch64"}.get(machine, machine)
        newest = _version_tuple(glibc) if glibc else (2, 36)  # Raspberry Pi OS / Debian Bookworm
        tags = [f"manylinux_2_{minor}_{machine}" for minor in range(newest[1], 16, -1)]
        return tags + [f"manylinux2014_{machine}", f"linux_{machine}"]
    if system == "Darwin":
        arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
        return [f"macosx_{major}_0_{arch}" for major in range(15, 10, -1)] + \
               [f"macosx_{major}_0_universal2" for major in range(15, 10, -1)]
    if system == "Windows":
        return ["win_amd64"]
    return []


def without_python(uri: str) -> str:
    """``uri`` less its ``?python=`` (deploys then use the environment setup records)."""
    u = urlparse(uri)
    query = urlencode([(k, v) for k, v in parse_qsl(u.query) if k != "python"], safe="/~:")
    return urlunparse(u._replace(query=query))


def setup_command(uri: str, runtime: str | None = None) -> str:
    """The one command that gives the device at ``uri`` a working environment for ``runtime``."""
    uri = without_python(uri)
    option = f" --runtime {RUNTIMES[runtime].option}" if runtime and runtime != AUTO_ORDER[0] else ""
    return f"edgetl devices setup {shlex.quote(uri)}{option}"


def check_runtime(info: DeviceInfo, runtime: str) -> None:
    """Raise :class:`RuntimeMissing` naming the one command that fixes it when ``info``'s Python lacks ``runtime``."""
    spec = RUNTIMES[runtime]
    if info.python and any(d in info.runtimes for d in spec.dists) and "numpy" in info.runtimes:
        return
    if info.android and not info.termux:
        raise RuntimeMissing(f"{info.uri} is an Android device: Android has no Python wheels of "
                             f"{' or '.join(RUNTIMES)}; build the app in examples/android, which trains the same "
                             f"exports with ONNX Runtime's Android training API")
    if not info.python:
        raise RuntimeMissing(f"{info.uri} has no Python for the runner: install Python 3 there (`sudo apt install "
                             f"python3 python3-venv`), then `{setup_command(info.uri, runtime)}`")
    why = unsupported(spec, info.system or "Linux", info.arch, info.python, info.libc)
    if why:
        raise RuntimeMissing(f"{info.uri} lacks {runtime} for the runner, and {why}{spec.instead}")
    fix = f"run `{setup_command(info.uri, runtime)}`"
    if info.python_source == "uri":
        fix += " and deploy without ?python= (or install the runtime into that interpreter's own environment)"
    raise RuntimeMissing(f"{info.uri} lacks {runtime} for the runner in {info.python_bin}: {fix}; setup makes a "
                         f"virtual environment on the device with {spec.requirement}, leaving the system Python alone")
