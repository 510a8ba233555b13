"""`edgetl devices setup` and the interpreter a deploy uses, on a Raspberry-Pi-OS-like device: a non-root user
behind its own sshd whose login PATH finds only the distribution's externally managed /usr/bin/python3.

Fast by default: setup installs from wheels downloaded once per session (the device's own index unreachable).
The real pip install from the index, rebuilds and the ONNX runtime are ``slow`` (CI's second stage)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.devices import connect
from edgetl.devices.deploy import deploy
from edgetl.devices.runtime_packages import COMMON, FLEET, RUNTIMES, platform_tags, setup_command, unsupported
from edgetl.devices.setup import setup_device

from .devicefixtures import SYSTEM_PYTHON, DroppingProxy, require

ROOT = Path(__file__).parent.parent


def probe(uri):
    with connect(uri) as dev:
        return dev.probe()


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def fails_with(args, *needles):
    """The CLI exits 2 with one `error:` line holding every needle, and no traceback."""
    code, out = cli(*args)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def nothing_active(pi):
    """No record, and no environment left behind on the device."""
    cache = pi.home / ".cache" / "edgetl"
    assert not (cache / "env.json").exists()
    assert not list((cache / "envs").glob("*")) if (cache / "envs").exists() else True
    info = probe(pi.uri())
    assert info.python_bin == SYSTEM_PYTHON and info.python_source == "path"


# -- the pins: one table, which pyproject and the runners agree with ------------------------------------

def test_pins_agree_with_pyproject_and_runners():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert RUNTIMES["ai-edge-litert"].requirement in extras["tflite"]
    assert any(r.split(";")[0].strip() == RUNTIMES["onnxruntime-training"].requirement for r in extras["onnx"])
    assert set(COMMON) <= set(project["dependencies"])
    assert extras["fleet"] == [FLEET]
    runners = ROOT / "edgetl" / "runtime"
    for name, runner in (("ai-edge-litert", "tflite_runner.py"), ("onnxruntime-training", "ort_runner.py")):
        text = (runners / runner).read_text()
        assert RUNTIMES[name].requirement in text and "edgetl devices setup" in text


def test_supported_platforms_are_named():
    tflite, onnx = RUNTIMES["ai-edge-litert"], RUNTIMES["onnxruntime-training"]
    assert unsupported(tflite, "Linux", "aarch64", "3.11.2", "glibc 2.36") is None
    assert unsupported(onnx, "Linux", "x86_64", "3.12.1", "glibc 2.36") is None
    why = unsupported(tflite, "Linux", "armv7l", "3.11.2", "glibc 2.36")
    assert "armv7l" in why and "64-bit Raspberry Pi OS" in why and "aarch64" in why
    assert "Python 3.9-3.12" in unsupported(onnx, "Linux", "x86_64", "3.13.0", "glibc 2.39")
    assert "no Linux aarch64 wheel" in unsupported(onnx, "Linux", "aarch64", "3.11.2", "glibc 2.36")
    assert "Termux" in unsupported(tflite, "Linux", "aarch64", "3.12.0", "")  # bionic: no manylinux wheel
    assert "glibc 2.27" in unsupported(tflite, "Linux", "x86_64", "3.10.0", "glibc 2.24")
    tags = platform_tags("Linux", "aarch64", "2.36")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_27_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert setup_command("ssh://pi@h:22?python=/x&key=/k") == "edgetl devices setup 'ssh://pi@h:22?key=/k'"


# -- ?python= on every transport --------------------------------------------------------------------------

def test_local_python_param_and_deploy(artifacts, tmp_path):
    art, _ = artifacts
    uri = f"local://{tmp_path / 'dev'}?python={sys.executable}"
    info = probe(uri)
    assert info.python_bin == sys.executable and info.python_source == "uri"
    assert info.env == (sys.prefix if sys.prefix != sys.base_prefix else None)
    report = deploy(art, uri, steps=1, out=tmp_path / "out")
    assert report.device["python_bin"] == sys.executable and len(report.losses) == 1
    fails_with(["devices", "probe", f"local://{tmp_path / 'dev'}?python={tmp_path / 'nope'}"],
               f"?python={tmp_path / 'nope'}: no such file", "full path")
    fails_with(["deploy", art, "--device", f"local://{tmp_path / 'dev'}?python=/bin/sh"], "is not Python 3")


def test_adb_python_param_android_and_termux(adb_peer, tmp_path):
    _, uri = adb_peer()  # ?python= this run's interpreter
    info = probe(uri)
    assert info.python_bin == sys.executable and info.python_source == "uri" and not info.android
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "getprop").write_text("#!/bin/sh\necho 14\n")
    (fake / "getprop").chmod(0o755)
    _, android = adb_peer(python=None, env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert probe(android).android
    fails_with(["devices", "setup", android], "Android has no Python wheels", "examples/android")
    # Termux: a Linux userland on Android, set up like Linux (here: its pip reaches no index)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "TERMUX_VERSION": "0.118.1",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "2", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    _, termux = adb_peer(python=None, env=env)
    info = probe(termux)
    assert info.android and info.termux and info.python_bin == SYSTEM_PYTHON
    code, out = cli("devices", "setup", termux)
    assert code == 2 and "Termux detected" in out and "cannot reach its package index" in out, out
    assert not (tmp_path / "cache" / "edgetl" / "env.json").exists()
    assert not list((tmp_path / "cache" / "edgetl" / "envs").iterdir())


# -- the Raspberry-Pi-like device --------------------------------------------------------------------------

@pytest.mark.slow  # the TFLite export it needs takes 20 s: the second stage
def test_pi_is_like_raspberry_pi_os(pi, tflite_artifacts):
    art, _ = tflite_artifacts
    with connect(pi.uri()) as dev:
        info = dev.probe()
        assert info.python_bin == SYSTEM_PYTHON and info.python_source == "path" and info.env is None
        assert dev.run("id -u").stdout.strip() != "0"
        pep668 = dev.run(f"{SYSTEM_PYTHON} -m pip install --user numpy", timeout=120)
        assert pep668.returncode != 0 and "externally-managed-environment" in pep668.stderr + pep668.stdout
    error = fails_with(["deploy", art, "--device", pi.uri(), "--steps", "1"], "lacks ai-edge-litert",
                       f"`edgetl devices setup '{pi.uri()}'`")
    assert "pip install" not in error  # it fails on a PEP 668 system; setup is the one command that works
    code, out = cli("devices", "probe", pi.uri())
    assert code == 0 and "login PATH" in out and "edgetl devices setup" in out, out


@pytest.mark.slow  # over 9 s: the second stage of .ci/run
def test_pi_setup_from_pushed_wheels_then_deploy(pi, device_wheels, tflite_artifacts, tmp_path):
    """The fast path: wheels pushed from here, the device's own index unreachable. The first attempt loses its
    connection mid-push; the same command resumes the push, builds, checks and records; deploy needs no flag."""
    art, root = tflite_artifacts
    pi.offline_pip()
    size = sum(p.stat().st_size for p in device_wheels.glob("*.whl"))
    proxy = DroppingProxy(pi.port, limit=size // 2)
    try:
        fails_with(["devices", "setup", pi.uri(port=proxy.port), "--wheels", device_wheels], "dropped while pushing",
                   "run the same setup again")
    finally:
        proxy.close()
    assert proxy.dropped and list((pi.home / "edgetl" / "bundles").glob("wheels-*.partial"))
    nothing_active(pi)
    # what a setup cut short while building leaves: an environment nobody recorded
    pi.write(".cache/edgetl/envs/20990101-000000-dead/bin/python", "#!/bin/sh\nexit 1\n", 0o755)

    t0 = time.monotonic()
    code, out = cli("devices", "setup", pi.uri(), "--wheels", device_wheels)
    assert code == 0, out
    elapsed = time.monotonic() - t0
    for said in ("resuming:", "removing 1 unfinished environment", "from the pushed wheels",
                 "checked: ai-edge-litert 2.3.0 trains", "ready:"):
        assert said in out, out
    assert not (pi.home / ".cache" / "edgetl" / "envs" / "20990101-000000-dead").exists()
    record = json.loads((pi.home / ".cache" / "edgetl" / "env.json").read_text())
    env_python = record["python"]
    assert env_python.startswith(str(pi.home)) and record["runtimes"] == {"ai-edge-litert": "2.3.0"}
    assert record["base_python"] == SYSTEM_PYTHON and record["source"] == "wheels"
    assert not list((pi.home / "edgetl" / "bundles").iterdir())  # the wheels are removed once installed
    code, out = cli("devices", "probe", pi.uri(), "--json")
    info = json.loads(out)
    assert info["python_bin"] == env_python and info["python_source"] == "setup" and info["env"] == record["env"]
    assert info["runtimes"]["ai-edge-litert"] == "2.3.0" and "pillow" in info["runtimes"]
    # deploy finds the environment with no flag
    code, out = cli("deploy", art, "--device", pi.uri(), "--steps", "3", "--data", root / "data", "--out",
                    tmp_path / "out")
    assert code == 0, out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["device"]["python_bin"] == env_python and len(report["losses"]) == 3
    # idempotent: seconds, nothing rebuilt
    t0 = time.monotonic()
    code, out = cli("devices", "setup", pi.uri())
    assert code == 0 and "already set up" in out and time.monotonic() - t0 < min(10, elapsed), out
    assert json.loads((pi.home / ".cache" / "edgetl" / "env.json").read_text()) == record
    # an interpreter of the user's: ?python= wins over the record
    deploy(art, pi.uri(f"python={env_python}"), steps=1, out=tmp_path / "out2")
    fails_with(["deploy", art, "--device", pi.uri(f"python={SYSTEM_PYTHON}")], "lacks ai-edge-litert",
               "deploy without ?python=")
    fails_with(["devices", "probe", pi.uri("python=/usr/bin/python9")], "no such file")
    fails_with(["devices", "probe", pi.uri("python=/etc/passwd")], "not an executable file")


def test_pi_index_unreachable_suggests_wheels(pi):
    pi.offline_pip()
    fails_with(["devices", "setup", pi.uri()], "cannot reach its package index", "--wheels")
    nothing_active(pi)


def test_pi_without_venv_module(pi):
    """Debian without python3-venv: ensurepip is gone (hidden in the device's sessions by an empty mount)."""
    require(subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0,
            "mount namespaces (unshare --mount) are not available here")
    empty = pi.root / "empty"
    empty.mkdir(exist_ok=True)
    stdlib = subprocess.run([SYSTEM_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    port = pi.start_sshd([f"--bind {empty} {stdlib}/ensurepip"])
    fails_with(["devices", "setup", pi.uri(port=port)], "sudo apt install python3-venv")
    nothing_active(pi)


def test_pi_32bit_has_no_wheel(pi):
    """A 32-bit userland (armv7l Raspberry Pi OS; here the i686 personality): no runtime has a wheel."""
    pi.write("bin/python32", f"#!/bin/sh\nexec setarch i686 {SYSTEM_PYTHON} \"$@\"\n", 0o755)
    error = fails_with(["devices", "setup", pi.uri(), "--python", pi.home / "bin" / "python32"],
                       "no training runtime has wheels", "Linux i686", "aarch64")
    assert "x86_64" in error
    fails_with(["devices", "setup", pi.uri(), "--python", pi.home / "bin" / "python32", "--runtime", "onnx"],
               "onnxruntime-training-cpu==1.19.2 has no wheel for Linux i686")
    nothing_active(pi)


def test_pi_disk_full_leaves_nothing_active(pi, device_wheels):
    require(subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0,
            "mount namespaces (unshare --mount) are not available here")
    pi.offline_pip()
    cache = pi.home / ".cache"
    cache.mkdir(exist_ok=True)
    os.chown(cache, pi.uid, pi.gid)
    # room for the virtual environment, not for numpy and the runtime
    port = pi.start_sshd([f"-t tmpfs -o size=40m,uid={pi.uid},gid={pi.gid},mode=0755 tmpfs {cache}"])
    fails_with(["devices", "setup", pi.uri(port=port), "--wheels", device_wheels], "ran out of disk space",
               "free some space")
    with connect(pi.uri(port=port)) as dev:  # what the device saw in its small file system
        assert dev.run(f"ls {cache}/edgetl/envs; ls {cache}/edgetl/env.json", timeout=30).stdout.strip() == ""
    nothing_active(pi)


# -- slow: the device's own pip, from the index ----------------------------------------------------------------

@pytest.mark.slow
def test_pi_setup_from_index_rebuild_and_onnx(pi, tflite_artifacts, artifacts, tmp_path):
    """What a Pi with internet access does: no flags at all. Then --force, and adding the ONNX runtime."""
    art, root = tflite_artifacts
    events = []
    record = setup_device(pi.uri(), on_event=events.append)
    assert record["source"] == "index" and any(line.strip().startswith("Successfully installed") for line in events)
    deploy(art, pi.uri(), steps=2, data=root / "data", out=tmp_path / "tflite")
    rebuilt = setup_device(pi.uri(), force=True)
    assert rebuilt["env"] != record["env"] and not Path(record["env"]).exists()
    # a recorded environment that lost its runtime is rebuilt by a plain setup, not trusted
    for package in Path(rebuilt["env"]).glob("lib/python3*/site-packages/ai_edge_litert"):
        subprocess.run(["rm", "-rf", str(package)], check=True)
    events = []
    repaired = setup_device(pi.uri(), on_event=events.append)
    assert repaired["env"] != rebuilt["env"] and any("building a new one" in line for line in events)
    both = setup_device(pi.uri(), runtime="onnx")
    assert set(both["runtimes"]) == {"ai-edge-litert", "onnxruntime-training"}
    onnx_art, _ = artifacts
    deploy(onnx_art, pi.uri(), steps=2, out=tmp_path / "onnx")
    deploy(art, pi.uri(), steps=1, out=tmp_path / "tflite2")  # the TFLite runtime was kept


@pytest.mark.slow
def test_wheels_for_a_raspberry_pi(tmp_path):
    code, out = cli("devices", "wheels", "--platform", "aarch64", "--python", "3.11", "--out", tmp_path / "w")
    assert code == 0, out
    names = [p.name for p in (tmp_path / "w").glob("*.whl")]
    assert any(n.startswith("ai_edge_litert-2.3.0-cp311") and "aarch64" in n for n in names)
    assert any(n.startswith("numpy-") and "aarch64" in n for n in names)
    assert all("x86_64" not in n for n in names)
    fails_with(["devices", "wheels", "--platform", "aarch64", "--runtime", "onnx", "--out", tmp_path / "o"],
               "no Linux aarch64 wheel")


@pytest.mark.slow
def test_pi_setup_for_a_fleet_then_it_trains_in_one(pi, tflite_artifacts, tmp_path):
    """--fleet: Flower's wheels (downloaded here for the device's Python) pushed with the runtime's; the device's
    index unreachable. Then the Pi-like device, with nothing but that environment, is a SuperNode in a fleet."""
    from edgetl.devices.setup import download_wheels
    from edgetl.fleet import make_shards, run_fleet

    art, _ = tflite_artifacts
    facts = subprocess.run([SYSTEM_PYTHON, "-c", "import platform, sys; print(platform.machine(), "
                            "sys.version.split()[0], platform.libc_ver()[1])"], capture_output=True, text=True)
    machine, version, glibc = facts.stdout.split()
    wheels = tmp_path / "wheels"
    try:
        download_wheels(wheels, "Linux", machine, version, glibc, ["ai-edge-litert"], fleet=True)
    except Exception as exc:
        require(False, f"cannot download Flower's wheels for the device here (pip's index unreachable?): {exc}")
    pi.offline_pip()
    code, out = cli("devices", "setup", pi.uri(), "--wheels", wheels, "--fleet")
    assert code == 0 and "checked: flwr 1.42.0 imports" in out and "Flower 1.42.0" in out, out
    record = json.loads((pi.home / ".cache" / "edgetl" / "env.json").read_text())
    assert record["fleet"] == "1.42.0" and FLEET in record["requirements"]
    code, out = cli("devices", "setup", pi.uri(), "--fleet")
    assert code == 0 and "already set up" in out, out
    manifest = json.loads((Path(art) / "manifest.json").read_text())
    make_shards("patterns", 2, tmp_path / "shards", resolution=manifest["input"]["shape"][-1], count=32)
    result = run_fleet(art, [pi.uri(), f"local://{tmp_path / 'laptop'}?python={sys.executable}"], tmp_path / "fleet",
                       data=str(tmp_path / "shards"), rounds=1, local_steps=2, eval_size=50, eval_data="patterns")
    assert len(result.rounds) == 1 and len(result.rounds[0]["answered"]) == 2 and not result.refused
