"""``edgetl devices setup``: a virtual environment on the device with the pinned runtime, checked, then recorded.

    record = setup_device("ssh://pi@raspberrypi.local")                 # ai-edge-litert (auto), numpy, Pillow
    record = setup_device(uri, runtime="onnx", wheels="./wheels")        # no index on the device: wheels from here
    download_wheels("./wheels", "Linux", "aarch64", "3.11")              # on the laptop, for such a device

On the device, under ``${XDG_CACHE_HOME:-~/.cache}/edgetl``:

    envs/<name>/   virtual environments, each built in place at its own name (a venv does not survive a rename)
    env.json       the record: which environment deploys use, its runtimes and the check's result

The record is written (atomically: a ``.part`` file renamed) only after the new environment passed the check
(each runtime imports and trains a micro model), so an environment broken by a full disk or a dropped
connection is never the active one; the next run removes unrecorded environments and builds again. The
system Python only runs ``-m venv``: nothing is installed into it (PEP 668). A probe reads the record, so
``devices probe`` and ``deploy`` use the environment with no flag. Progress goes to ``on_event(line)`` and
``on_progress(done_bytes, total_bytes)``; errors are :class:`~edgetl.devices.base.DeviceError` subclasses.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .base import ENV_ROOT, PYSELECT_GIVEN, Device, DeviceError, Disconnected, DiskFull, shell_path
from .bundle import BUNDLE_JSON, Bundle, push_bundle
from .runtime_packages import AUTO_ORDER, RUNTIMES, by_option, platform_tags, requirements, unsupported
from .selftest import CHECK, check_args, check_files
from .transports import connect

RECORD = "env.json"
SCHEMA = "edgetl.device-env/1"
#: what pip says when it cannot reach an index (requests/urllib3 wording across pip releases)
OFFLINE = ("NewConnectionError", "Connection refused", "Max retries exceeded", "Temporary failure in name resolution",
           "Network is unreachable", "No route to host", "ConnectTimeout", "Read timed out", "ProxyError",
           "Could not fetch URL", "Failed to establish a new connection", "Name or service not known")
NO_VENV = ("ensurepip is not", "No module named venv", "No module named ensurepip")

# Facts about an interpreter, as one JSON line; Python 2 or a non-Python file fails it, which is the check
INTERP = r"""
import json, os, platform, sys, sysconfig
from importlib import metadata
from importlib.util import find_spec
dists = {}
for d in __DISTS__:
    try:
        dists[d] = metadata.version(d)
    except Exception:
        pass
stdlib = sysconfig.get_path("stdlib")
modules = [m for m in __MODULES__ if find_spec(m) is not None]
print(json.dumps({"version": sys.version.split()[0], "system": platform.system(), "machine": platform.machine(),
                  "libc": " ".join(platform.libc_ver()).strip(), "executable": sys.executable,
                  "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix), "dists": dists, "modules": modules,
                  "managed": os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED"))}))
"""
_DISTS = (*dict.fromkeys(d for r in RUNTIMES.values() for d in (r.dist, *r.dists)), "numpy", "pillow", "flwr")
INTERP = INTERP.replace("__DISTS__", repr(_DISTS)).replace(
    "__MODULES__", repr((*(r.module for r in RUNTIMES.values()), "numpy")))


class SetupError(DeviceError):
    """Setup could not finish; nothing it built is active."""


class VenvMissing(SetupError):
    pass


class IndexUnreachable(SetupError):
    pass


class NoWheel(SetupError):
    pass


class CheckFailed(SetupError):
    pass


def setup_device(device: str | Device, runtime: str = "auto", python: str | None = None,
                 wheels: str | Path | None = None, force: bool = False,
                 on_event: Callable[[str], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None, timeout: float = 1800,
                 fleet: bool = False) -> dict:
    """Give ``device`` a checked environment for ``runtime`` (auto, tflite, onnx); returns the record.

    ``python``: the device's interpreter to build from (default: the URI's ``?python=``, else ``python3`` on the
    login PATH). ``wheels``: a local directory of wheels to install from with ``--no-index`` (filled for the
    device first when it holds none). ``fleet``: Flower too (``edgetl fleet`` runs a SuperNode there); an
    environment set up for a fleet stays one. The record has ``already: True`` when nothing needed doing.
    """
    if isinstance(device, str):
        with connect(device) as dev:
            return _Setup(dev, on_event, on_progress, timeout).run(runtime, python, wheels, force, fleet)
    return _Setup(device, on_event, on_progress, timeout).run(runtime, python, wheels, force, fleet)


class _Setup:
    def __init__(self, device: Device, on_event, on_progress, timeout: float):
        self.device, self.uri, self.timeout = device, device.uri, timeout
        self.fleet = False
        self.say = on_event or (lambda line: None)
        self.on_progress = on_progress

    # -- the steps ---------------------------------------------------------------------------------------
    def run(self, runtime: str, python: str | None, wheels, force: bool, fleet: bool = False) -> dict:
        info = self.device.probe()  # also refuses a ?python= that is missing or not Python 3
        if info.android and not info.termux:
            raise SetupError(f"{self.uri} is an Android device: Android has no Python wheels of "
                             f"{' or '.join(RUNTIMES)}, so there is nothing to set up; build the app in "
                             f"examples/android, which trains the same exports with ONNX Runtime's Android API")
        if info.termux:
            self.say("Termux detected: setting it up like a Linux device")
        root = self.device.check(f"echo {ENV_ROOT}", what="finding the home directory").strip()
        if not root.startswith("/") or any(c in root for c in '"\\\n'):
            raise SetupError(f"cannot keep an environment in {root!r} on {self.uri}: set HOME (or XDG_CACHE_HOME) "
                             f"to a plain absolute path there")
        record = self._read_record(root)
        if self.device.python and not python:
            self.say(f"building from ?python={self.device.python}; deploys with ?python= in the URI use that "
                     f"interpreter, so drop it there to use this environment")
        given = python or self.device.python
        named = (f"--python {python}" if python else f"?python={given}") if given else None
        base = self._interp(shell_path(given) if given else "$(command -v python3 || command -v python)", named)
        healthy = record is not None and self._healthy(record)
        names = self._runtimes(runtime, base, record if healthy else None)
        self.fleet = fleet or bool(healthy and record.get("fleet"))
        if healthy and not force and set(names) <= set(record["runtimes"]) and (not fleet or record.get("fleet")) and \
                (not python or base["executable"] == record.get("base_python")):
            self.say(f"{self.uri} is already set up: {record['python']} with "
                     f"{', '.join(f'{n} {v}' for n, v in record['runtimes'].items())} (--force rebuilds)")
            return {**record, "already": True}
        if record and not healthy:
            self.say(f"the recorded environment {record.get('env')} is gone, broken or older than edgetl's pins: "
                     f"building a new one")
        if healthy:  # setup adds runtimes, never drops one the device had
            names = [n for n in AUTO_ORDER if n in {*names, *record["runtimes"]} and not self._why(n, base)]

        remote_wheels, bundle_dir = None, None
        if wheels is not None:
            remote_wheels, bundle_dir = self._push_wheels(Path(wheels).resolve(), base, names, self.fleet)
        self._remove_unrecorded(root, record)
        env = f"{root}/envs/{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        self._make_venv(base, env)
        try:
            self._install(env, names, remote_wheels, wheels, base)
            check = self._check(env, names)
            new = self._record(root, env, base, names, check, "wheels" if wheels is not None else "index")
        except Disconnected:
            raise  # the next run removes the unrecorded environment
        except BaseException:
            self._quietly(f"rm -rf {shlex.quote(env)}")
            raise
        if record and record.get("env") and record["env"] != env:
            self._quietly(f"rm -rf {shlex.quote(record['env'])}")
        if bundle_dir:
            self._quietly(f"rm -rf {shlex.quote(bundle_dir)}")
        return new

    def _runtimes(self, runtime: str, base: dict, record: dict | None) -> list[str]:
        if runtime not in ("auto", None):
            try:
                spec = by_option(runtime)
            except KeyError:
                options = ", ".join(["auto", *(r.option for r in RUNTIMES.values())])
                raise SetupError(f"unknown runtime {runtime!r}: use one of {options}") from None
            why = self._why(spec.name, base)
            if why:
                raise NoWheel(f"cannot set up {spec.option} on {self.uri}: {why}")
            return [spec.name]
        if record and record.get("runtimes"):
            return list(record["runtimes"])
        for name in AUTO_ORDER:
            if not self._why(name, base):
                return [name]
        reasons = "; ".join(self._why(n, base) for n in AUTO_ORDER)
        raise NoWheel(f"no training runtime has wheels for {self.uri} ({_platform(base)}): {reasons}")

    def _why(self, name: str, base: dict) -> str | None:
        return unsupported(RUNTIMES[name], base["system"], base["machine"], base["version"], base["libc"])

    def _make_venv(self, base: dict, env: str) -> None:
        managed = ", externally managed (PEP 668): nothing is installed into it" if base.get("managed") else ""
        self.say(f"creating a virtual environment {env} from {base['executable']} (Python {base['version']}{managed})")
        result = self.device.run(f"mkdir -p {shlex.quote(env.rsplit('/', 1)[0])} && "
                                 f"{shlex.quote(base['executable'])} -m venv {shlex.quote(env)}", timeout=600)
        if result.returncode == 0:
            return
        self._quietly(f"rm -rf {shlex.quote(env)}")
        text = result.stdout + result.stderr
        if any(s in text for s in NO_VENV):
            raise VenvMissing(f"{base['executable']} on {self.uri} cannot make virtual environments (its venv module "
                              f"or ensurepip is missing): `sudo apt install python3-venv` there, then run setup again")
        self._raise_disk(text, env)
        raise SetupError(f"creating a virtual environment on {self.uri} failed (exit {result.returncode}): "
                         f"{result.tail(5)}")

    def _install(self, env: str, names: list[str], remote_wheels: str | None, wheels, base: dict) -> None:
        reqs = requirements(names, self.fleet)
        source = f"--no-index --find-links {shlex.quote(remote_wheels)} " if remote_wheels else ""
        self.say(f"installing {', '.join(reqs)} with the device's pip"
                 f"{' from the pushed wheels' if remote_wheels else ''}")
        result = self.device.run(f"{shlex.quote(env)}/bin/python -m pip install --disable-pip-version-check --no-input "
                                 f"--progress-bar off --only-binary=:all: {source}"
                                 f"{' '.join(shlex.quote(r) for r in reqs)}",
                                 timeout=self.timeout, on_line=self._pip_line)
        if result.returncode == 0:
            return
        text = result.stdout + result.stderr
        self._raise_disk(text, env)
        missing = _no_match(text)
        if not remote_wheels and (any(s in text for s in OFFLINE) or (missing and not self._index_answers(env))):
            raise IndexUnreachable(f"pip on {self.uri} cannot reach its package index; download the wheels here "
                                   f"and push them: `edgetl devices setup {shlex.quote(self.uri)} --wheels ./wheels` "
                                   f"(fills ./wheels for the device first)")
        if missing:
            if remote_wheels:
                raise NoWheel(f"{wheels} holds no wheel of {missing} for {self.uri} ({_platform(base)}): "
                              f"`edgetl devices wheels --platform {base['machine']} --python "
                              f"{_minor(base['version'])} --out {wheels}` fills it, then run setup again")
            where = "; ".join(f"{RUNTIMES[n].requirement} has wheels for {RUNTIMES[n].where}" for n in names)
            raise NoWheel(f"pip found no wheel of {missing} for {self.uri} ({_platform(base)}); {where}")
        raise SetupError(f"pip failed on {self.uri} (exit {result.returncode}): {result.tail(8)}")

    def _pip_line(self, line: str) -> None:
        if line.strip():
            self.say("  " + line.rstrip())  # indented: the device's pip talking

    def _index_answers(self, env: str) -> bool:
        """Whether the device's pip reaches its index at all: with retries off, pip reports an unreachable index
        only as "no matching distribution", so ask it about numpy, which every index has."""
        result = self.device.run(f"{shlex.quote(env)}/bin/python -m pip index versions numpy "
                                 f"--disable-pip-version-check", timeout=300)
        return result.returncode == 0 and "Available versions" in result.stdout

    def _check(self, env: str, names: list[str]) -> dict:
        folder = f"{env}/edgetl-check"
        files = {"check.py": CHECK, **check_files(names)}
        for d in sorted({folder, *(f"{folder}/{Path(f).parent}" for f in files if "/" in f)}):
            self.device.makedirs(d)
        for rel, local in files.items():
            self.device.push_file(local, f"{folder}/{rel}")
        self.say(f"checking: {', '.join(names)} train{'s' if len(names) == 1 else ''} a micro model on the device")
        args = " ".join(shlex.quote(a) for a in check_args(names))
        result = self.device.run(f"{shlex.quote(env)}/bin/python {shlex.quote(folder)}/check.py "
                                 f"{shlex.quote(folder)} {args}", timeout=600)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        report = json.loads(lines[-1]) if lines else {}
        if result.returncode != 0 or not report.get("ok"):
            errors = "; ".join(f"{n}: {r['error']}" for n, r in report.get("runtimes", {}).items() if "error" in r)
            raise CheckFailed(f"the new environment on {self.uri} failed its check ({errors or result.tail(5)}); "
                              f"nothing was recorded: run setup again with --force")
        for name, r in report["runtimes"].items():
            self.say(f"checked: {name} {r['version']} trains (loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f})")
        if self.fleet:
            flwr = self.device.run(f"{shlex.quote(env)}/bin/python -c 'import flwr.clientapp, flwr.supernode.cli; "
                                   f"print(flwr.__version__)' && test -x {shlex.quote(env)}/bin/flower-supernode",
                                   timeout=300)
            if flwr.returncode != 0:
                raise CheckFailed(f"Flower does not import in the new environment on {self.uri} ({flwr.tail(3)}); "
                                  f"nothing was recorded: run setup again with --force")
            report["fleet"] = flwr.stdout.strip().splitlines()[-1]
            self.say(f"checked: flwr {report['fleet']} imports; flower-supernode is there")
        return report

    def _record(self, root: str, env: str, base: dict, names: list[str], check: dict, source: str) -> dict:
        facts = self._interp(shlex.quote(f"{env}/bin/python"), None)
        record = {"python": f"{env}/bin/python",  # first, on a line of its own: the probe's shell reads it
                  "schema": SCHEMA, "env": env, "base_python": base["executable"], "python_version": base["version"],
                  "platform": _platform(base),
                  "runtimes": {n: check["runtimes"][n]["version"] for n in names},
                  "packages": facts["dists"], "requirements": requirements(names, self.fleet), "source": source,
                  "fleet": check.get("fleet"),
                  "check": {n: {"losses": r["losses"]} for n, r in check["runtimes"].items()},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with tempfile.TemporaryDirectory(prefix="edgetl-record-") as tmp:
            local = Path(tmp) / RECORD
            local.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
            self.device.push_file(local, f"{root}/{RECORD}.part")
        self.device.rename(f"{root}/{RECORD}.part", f"{root}/{RECORD}")
        self.say(f"recorded {record['python']}: `edgetl devices probe` and `edgetl deploy` use it with no flag")
        return record

    # -- helpers -----------------------------------------------------------------------------------------
    def _interp(self, word: str, named: str | None) -> dict:
        """Facts of the interpreter the shell ``word`` names; ``named`` is how the user named it (for errors)."""
        result = self.device.run(PYSELECT_GIVEN.replace("__PY__", word) +
                                 f'[ -n "$py" ] && "$py" - <<\'PY\'\n{INTERP}\nPY\n', timeout=120)
        fix = "name a Python 3 interpreter on the device with --python PATH (e.g. /usr/bin/python3)"
        if "python_error=" in result.stdout:
            if not named:
                raise SetupError(f"{self.uri} has no Python 3 on its login PATH: install it there (`sudo apt install "
                                 f"python3 python3-venv`), or {fix}")
            what = "no such file" if "python_error=missing" in result.stdout else "not an executable file"
            raise SetupError(f"{named}: {what} on {self.uri}; {fix}")
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            raise SetupError(f"{named or 'python3'} on {self.uri} is not Python 3 ({result.tail(1) or 'no answer'}); "
                             f"{fix}") from None

    def _healthy(self, record: dict) -> bool:
        try:
            facts = self._interp(shlex.quote(record["python"]), record["python"])
        except (SetupError, KeyError):
            return False
        have, modules = facts["dists"], facts["modules"]  # installed as pinned, and still importable
        if record.get("fleet") and have.get("flwr") != record["fleet"]:
            return False
        return "numpy" in have and "numpy" in modules and all(
            RUNTIMES[n].module in modules and any(have.get(d) == RUNTIMES[n].version for d in RUNTIMES[n].dists)
            for n in record.get("runtimes", {}) if n in RUNTIMES)

    def _read_record(self, root: str) -> dict | None:
        result = self.device.run(f"cat {shlex.quote(root)}/{RECORD} 2>/dev/null", timeout=60)
        try:
            record = json.loads(result.stdout) if result.returncode == 0 else None
        except ValueError:
            return None
        return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None

    def _remove_unrecorded(self, root: str, record: dict | None) -> None:
        keep = record.get("env", "") if record else ""
        out = self.device.run(f"ls -1 {shlex.quote(root)}/envs 2>/dev/null; true", timeout=60).stdout.split()
        stale = [f"{root}/envs/{name}" for name in out if f"{root}/envs/{name}" != keep]
        if stale:
            self.say(f"removing {len(stale)} unfinished environment(s) of an interrupted setup")
            self.device.check("rm -rf " + " ".join(shlex.quote(p) for p in stale), what="removing old environments")

    def _push_wheels(self, wheels: Path, base: dict, names: list[str], fleet: bool = False) -> tuple[str, str]:
        if not wheels.is_dir() or not any(wheels.glob("*.whl")):
            self.say(f"{wheels} holds no wheels: downloading them here for {_platform(base)}")
            download_wheels(wheels, base["system"], base["machine"], base["version"], base["libc"].partition(" ")[2],
                            names, self.say, fleet)
        with tempfile.TemporaryDirectory(prefix="edgetl-wheels-") as tmp:
            bundle = wheel_bundle(wheels, Path(tmp))
            total, done = bundle.size, [0]

            def on_bytes(n: int) -> None:
                done[0] += n
                if self.on_progress:
                    self.on_progress(done[0], total)

            self.say(f"pushing {len(bundle.files) - 1} wheels ({total / 2**20:.1f} MiB) to {self.uri}")
            try:
                remote = push_bundle(self.device, bundle, on_bytes=on_bytes, log=self.say)
            except Disconnected:
                raise Disconnected(f"the connection to {self.uri} dropped while pushing the wheels; run the same "
                                   f"setup again: it resumes, sending only what did not arrive") from None
        if self.on_progress:
            self.on_progress(total, total)
        return remote, remote

    def _raise_disk(self, text: str, env: str) -> None:
        if "No space left" in text or "Errno 28" in text:
            self._quietly(f"rm -rf {shlex.quote(env)}")
            raise DiskFull(f"{self.uri} ran out of disk space while setting up {env}; the half-built environment "
                           f"was removed: free some space there (the TFLite runtime, numpy and Pillow take about "
                           f"200 MB), then run setup again")

    def _quietly(self, command: str) -> None:
        try:
            self.device.run(command, timeout=120)
        except DeviceError:
            pass


def wheel_bundle(wheels: Path, staging: Path) -> Bundle:
    """The wheels of ``wheels`` as a bundle (staged as links, so they travel by the resumable bundle push)."""
    import hashlib

    from .base import file_sha256

    files = {}
    for path in sorted(wheels.glob("*.whl")):
        (staging / path.name).symlink_to(path.resolve())
        files[path.name] = file_sha256(path)
    bundle_id = "wheels-" + hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()[:16]
    (staging / BUNDLE_JSON).write_text(json.dumps({"id": bundle_id, "files": files}, indent=2))
    files[BUNDLE_JSON] = file_sha256(staging / BUNDLE_JSON)
    return Bundle(staging, bundle_id, {}, files)


def download_wheels(out: str | Path, system: str, machine: str, python: str, glibc: str = "",
                    runtimes=AUTO_ORDER[:1], on_event: Callable[[str], None] | None = None,
                    fleet: bool = False) -> list[Path]:
    """Download (here) the wheels a device needs for ``runtimes``: ``pip download --platform ... --only-binary``."""
    say = on_event or (lambda line: None)
    names = [by_option(r).name if r not in RUNTIMES else r for r in runtimes]
    base = {"system": system, "machine": machine, "version": python, "libc": f"glibc {glibc or '2.36'}"}
    for name in names:
        why = unsupported(RUNTIMES[name], system, machine, python, base["libc"] if system == "Linux" else "")
        if why:
            raise NoWheel(f"no wheels to download for {_platform(base)}: {why}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", _minor(python), "--dest", str(out)]
    for tag in platform_tags(system, machine, glibc):
        command += ["--platform", tag]
    say(f"pip download {' '.join(requirements(names, fleet))} for {_platform(base)} into {out}")
    proc = subprocess.Popen([*command, *requirements(names, fleet)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip():
            say("  " + line.rstrip())
    if proc.wait() != 0:
        text = "".join(lines)
        if any(s in text for s in OFFLINE):
            raise IndexUnreachable("pip cannot reach its package index from this computer either: download the "
                                   "wheels on a machine with internet access (`edgetl devices wheels`), and copy them")
        missing = _no_match(text)
        raise NoWheel(f"pip found no wheel of {missing or 'a requirement'} for {_platform(base)}: "
                      f"{''.join(lines[-3:]).strip()}")
    return sorted(out.glob("*.whl"))


def _platform(facts: dict) -> str:
    libc = f", {facts['libc']}" if facts.get("system") == "Linux" and facts.get("libc") else ""
    return f"{facts['system']} {facts['machine']}, CPython {_minor(facts['version'])}{libc}"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _no_match(text: str) -> str | None:
    for line in text.splitlines():
        if "No matching distribution found for" in line:
            return line.split("found for", 1)[1].strip()
    return None


__all__ = ["CheckFailed", "IndexUnreachable", "NoWheel", "SetupError", "VenvMissing", "download_wheels",
           "setup_device", "wheel_bundle"]
