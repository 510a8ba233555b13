"""Devices and deploy over real protocols on loopback: OpenSSH's sshd, and the real adb client against the
ADB peer. Full deploys of a real ONNX export, and every fault a user can meet, with what they see.

The exports (``artifacts``, ``tflite_artifacts``) are session fixtures in devicefixtures.py; the devices name
this run's interpreter with ``?python=``, so the tests pass in any virtual environment."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.devices import connect
from edgetl.devices.base import (
    AuthFailed,
    DeviceTimeout,
    Disconnected,
    DiskFull,
    HostKeyChanged,
    MemoryRefused,
    RunnerFailed,
    RuntimeMissing,
    Unreachable,
    file_sha256,
)
from edgetl.devices.bundle import make_bundle
from edgetl.devices.deploy import DeployEvents, DeployResult, deploy
from edgetl.exporters import Artifacts, ExportError

from .bounds import median_fits, numpy_process_rss
from .devicefixtures import DroppingProxy, free_port

pytest.importorskip("onnxruntime.training")


def _ssh_uri(sshd, tmp_path, **kw):
    return sshd.uri(tmp_path / "pi", tmp_path / "known_hosts", **kw)


def _check_report(out, steps, art):
    """The pulled results of a deploy of the export in ``art``: report, losses, and exactly the trained tensors."""
    report = json.loads((out / "report.json").read_text())
    assert len(report["losses"]) == steps and all(np.isfinite(report["losses"]))
    # the runner's process holds numpy and the runtime; half its steps at least the median fit in the deploy's time
    assert report["peak_rss_bytes"] >= numpy_process_rss()
    assert median_fits(report["median_step_seconds"], len(report["losses"]), report["wall_seconds"])
    # the prediction (the runner's baseline measured on the device, the step, the results) is never 10 % short
    memory = report["predicted_memory"]
    assert report["predicted_memory_bytes"] == memory["total_bytes"] >= 0.9 * report["peak_rss_bytes"], memory
    assert 0 < memory["baseline_bytes"] < report["peak_rss_bytes"] and memory["gate_bytes"] > memory["total_bytes"]
    manifest = json.loads((art / "manifest.json").read_text())
    # parameters the policy trains, and the running statistics of the norms it trains fully
    stats = [f"{n['name']}.{k}" for n in manifest.get("running_stats", []) for k in ("running_mean", "running_var")]
    stats += [v["name"] for v in manifest.get("variables", []) if v["kind"] == "stat"]
    assert stats and sorted(np.load(out / "params.npz").files) == sorted(manifest["trainable"] + stats)
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG"
    return report


# -- local ---------------------------------------------------------------------------------------------

def test_local_probe_push_pull_run(tmp_path):
    with connect(f"local://{tmp_path / 'dev'}") as dev:
        info = dev.probe()
        assert info.arch and info.cpus >= 1 and info.python
        assert info.mem_total_bytes == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # this machine's
        src = tmp_path / "a.bin"
        src.write_bytes(os.urandom(10_000))
        dev.push_file(src, f"{dev.workdir}/a.bin")
        assert dev.sha256([f"{dev.workdir}/a.bin"])[f"{dev.workdir}/a.bin"] == file_sha256(src)
        lines = []
        assert dev.run("echo one; echo two; exit 3", on_line=lines.append).returncode == 3 and lines == ["one", "two"]
        with pytest.raises(DeviceTimeout, match="timeout"):
            dev.run("sleep 5", timeout=0.5)


def test_runner_never_imports_torch_even_when_installed(artifacts, tmp_path):
    art, _ = artifacts
    proc = subprocess.run([sys.executable, str(art / "ort_runner.py"), "--artifacts", str(art), "--steps", "1",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["torch_imported"] is False


# -- SSH -----------------------------------------------------------------------------------------------

def test_ssh_probe(sshd, tmp_path):
    with connect(_ssh_uri(sshd, tmp_path)) as dev:
        info = dev.probe()
    assert info.arch == os.uname().machine and info.python and "onnxruntime-training-cpu" in info.runtimes
    assert "[127.0.0.1]" in (tmp_path / "known_hosts").read_text()  # accept-new recorded the host key


def test_ssh_full_deploy(sshd, artifacts, tmp_path):
    art, root = artifacts
    out = tmp_path / "result"
    result = deploy(art, _ssh_uri(sshd, tmp_path), steps=4, data=root / "data", out=out, batch_size=4, verify=True)
    report = _check_report(out, 4, art)
    assert result.verify and all(c["ok"] for c in result.verify)
    # the typed result is report.json, key for key, and reads back from it
    assert result.to_dict() == report and DeployResult.load(out) == result and result.out == out.resolve()
    assert result.predicted_memory_bytes == report["predicted_memory"]["total_bytes"]
    bundle = make_bundle(art, root / "data")
    remote = tmp_path / "pi" / "bundles" / bundle.id
    assert {str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file() and "runs" not in p.parts} == set(bundle.files)
    assert all(file_sha256(remote / rel) == digest for rel, digest in bundle.files.items())
    assert not list((tmp_path / "pi" / "bundles").glob("*.partial"))
    # the device-trained weights load back into the laptop's model
    result = CliRunner().invoke(main, ["import-weights", str(root / "run"), str(out / "params.npz"), "--out",
                                       str(tmp_path / "w.pt")])
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # about 9 s: the second stage
def test_ssh_dropped_push_resumes_byte_identical(sshd, artifacts, tmp_path):
    art, root = artifacts
    proxy = DroppingProxy(sshd.port, limit=int(0.6 * make_bundle(art).size))  # mid-bundle, after whole files
    try:
        with pytest.raises(Disconnected, match="run the same deploy again"):
            deploy(art, _ssh_uri(sshd, tmp_path, port=proxy.port), steps=1, out=tmp_path / "r1")
    finally:
        proxy.close()
    assert proxy.dropped
    bundles = tmp_path / "pi" / "bundles"
    assert list(bundles.glob("*.partial")) and not [p for p in bundles.iterdir() if not p.name.endswith(".partial")]
    bundle = make_bundle(art)
    partial = bundles / f"{bundle.id}.partial"
    arrived = {rel for rel in bundle.files if (partial / rel).is_file()}
    assert 0 < len(arrived) < len(bundle.files)  # some whole files made it; no half file has a final name
    assert all(file_sha256(partial / rel) == bundle.files[rel] for rel in arrived)
    logs = []

    class Messages(DeployEvents):
        message = staticmethod(logs.append)

    deploy(art, _ssh_uri(sshd, tmp_path), steps=1, out=tmp_path / "r2", events=Messages())
    assert any(f"{len(arrived)} of {len(bundle.files)} files are already on the device" in line for line in logs)
    final = bundles / bundle.id
    assert all(file_sha256(final / rel) == digest for rel, digest in bundle.files.items())


def test_ssh_wrong_key(sshd, tmp_path):
    with pytest.raises(AuthFailed, match="ssh-copy-id"):
        connect(_ssh_uri(sshd, tmp_path, key=sshd.other_key))


def test_ssh_unreachable(sshd, tmp_path):
    with pytest.raises(Unreachable, match="cannot reach .* check that the device is on"):
        connect(_ssh_uri(sshd, tmp_path, port=free_port()))


def test_ssh_host_key_changed(sshd, tmp_path):
    import subprocess as sp
    sp.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    kind, b64 = (tmp_path / "impostor.pub").read_text().split()[:2]
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {kind} {b64}\n")
    with pytest.raises(HostKeyChanged, match="ssh-keygen -f .* -R"):
        connect(_ssh_uri(sshd, tmp_path))


def test_ssh_runner_failure_shows_device_stderr(sshd, artifacts, tmp_path):
    art, _ = artifacts
    shard = tmp_path / "bad.npz"
    np.savez(shard, images=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))  # wrong image size
    with pytest.raises(RunnerFailed) as exc:
        deploy(art, _ssh_uri(sshd, tmp_path), steps=1, data=shard, out=tmp_path / "r")
    assert "runner failed" in str(exc.value) and "pack the shard at the model's resolution" in str(exc.value)


# -- ADB -----------------------------------------------------------------------------------------------

def test_adb_probe_push_run_pull(adb_peer, tmp_path):
    peer, uri = adb_peer()
    with connect(uri) as dev:
        info = dev.probe()
        assert info.arch == os.uname().machine and info.python
        # the space free on the peer's disk as statvfs tells here (df's KiB rounding, others writing meanwhile)
        assert abs(info.free_bytes - shutil.disk_usage(peer.sandbox).free) <= 64 * 2**20
        src = tmp_path / "blob.bin"
        src.write_bytes(os.urandom(300_000))
        dev.makedirs(dev.workdir)
        dev.push_file(src, f"{dev.workdir}/blob.bin")
        assert dev.sha256([f"{dev.workdir}/blob.bin"])[f"{dev.workdir}/blob.bin"] == file_sha256(src)
        dev.pull_file(f"{dev.workdir}/blob.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        lines = []
        assert dev.run("echo a; echo b; exit 7", on_line=lines.append).returncode == 7 and lines == ["a", "b"]


def test_adb_full_deploy(adb_peer, artifacts, tmp_path):
    art, root = artifacts
    _, uri = adb_peer()
    out = tmp_path / "result"
    deploy(Artifacts.load(art), uri, steps=3, data=root / "data", out=out, batch_size=4)  # an Artifacts or its directory
    _check_report(out, 3, art)


def test_adb_disk_full(adb_peer, artifacts, tmp_path):
    art, _ = artifacts
    _, uri = adb_peer(quota=1_000_000)
    with pytest.raises(DiskFull, match="disk space"):
        deploy(art, uri, steps=1, out=tmp_path / "r")


def test_adb_memory_gate(adb_peer, artifacts, tmp_path):
    art, _ = artifacts
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:         524288 kB\nMemAvailable:      65536 kB\n")
    _, uri = adb_peer(meminfo=meminfo)
    with pytest.raises(MemoryRefused, match="needs about .* but .* has 64 MiB available.*--force"):
        deploy(art, uri, steps=1, out=tmp_path / "r")
    deploy(art, uri, steps=1, out=tmp_path / "r", force=True)  # the user's call: it trains anyway
    assert (tmp_path / "r" / "report.json").is_file()


def test_adb_dropped_push(adb_peer, artifacts, tmp_path):
    art, _ = artifacts
    _, uri = adb_peer(drop_after=2_000_000)
    with pytest.raises((Disconnected, Unreachable), match="deploy again|reconnect"):
        deploy(art, uri, steps=1, out=tmp_path / "r")


def _bare_python_peer(adb_peer, tmp_path, answer: str) -> str:
    """An ADB peer whose Python answers the probe with ``answer`` only (its version, maybe numpy): no runtime."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(f"#!/bin/sh\ncat > /dev/null\n{answer}\n")
    (fake / "python3").chmod(0o755)
    return adb_peer(python=None, env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})[1]


def test_adb_runtime_missing(adb_peer, artifacts, tmp_path):
    art, _ = artifacts
    uri = _bare_python_peer(adb_peer, tmp_path, "echo python=3.9.2")
    with pytest.raises(RuntimeMissing, match="lacks onnxruntime-training .*`edgetl devices setup adb://.* --runtime onnx`"):
        deploy(art, uri, steps=1, out=tmp_path / "r")


@pytest.mark.slow  # 5 to 9 s: the second stage of .ci/run
def test_ssh_config_alias_and_clean(sshd, artifacts, tmp_path):
    art, _ = artifacts
    config = tmp_path / "ssh_config"
    config.write_text(f"Host mypi\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                      f"  IdentityFile {sshd.key}\n")
    uri = f"ssh://mypi{tmp_path / 'pi'}?ssh_config={config}&known_hosts_file={tmp_path / 'kh'}&python={sys.executable}"
    deploy(art, uri, steps=1, out=tmp_path / "r")
    assert list((tmp_path / "pi" / "bundles").iterdir())
    result = CliRunner().invoke(main, ["devices", "clean", uri])
    assert result.exit_code == 0 and "removed 1 bundle" in result.output
    assert not list((tmp_path / "pi" / "bundles").iterdir())


# -- CLI -----------------------------------------------------------------------------------------------

def test_cli_probe_and_deploy(sshd, artifacts, tmp_path):
    art, _ = artifacts
    uri = _ssh_uri(sshd, tmp_path)
    result = CliRunner().invoke(main, ["devices", "probe", uri, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["python"]
    result = CliRunner().invoke(main, ["deploy", str(art), "--device", uri, "--steps", "2", "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["deploy", str(art), "--device", "ssh://nobody@127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot reach" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["devices", "probe", "bluetooth://x"])
    assert result.exit_code == 2 and "unknown device" in result.output


# -- TFLite: the Raspberry Pi route ----------------------------------------------------------------

@pytest.mark.slow  # the TFLite export it needs takes 20 s: the second stage
def test_ssh_deploy_tflite_and_weights_back(sshd, tflite_artifacts, tmp_path):
    art, root = tflite_artifacts
    out = tmp_path / "result"
    with pytest.raises(ExportError, match="trains at batch 4, fixed at export.*--batch-size 8"):
        deploy(art, _ssh_uri(sshd, tmp_path), steps=1, out=out, batch_size=8)
    result = deploy(art, _ssh_uri(sshd, tmp_path), steps=4, data=root / "data", out=out, verify=True)
    assert result.format == "tflite" and result.batch_size == 4
    assert result.verify and all(c["ok"] for c in result.verify)
    _check_report(out, 4, art)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runtime"] == "ai-edge-litert" and not metrics["torch_imported"] and not metrics["tensorflow_imported"]
    assert (out / "checkpoint.npz").is_file()
    result = CliRunner().invoke(main, ["import-weights", str(root / "run"), str(out / "params.npz"), "--out",
                                       str(tmp_path / "w.pt")])
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # the TFLite export it needs takes 20 s: the second stage
def test_adb_tflite_runtime_missing(adb_peer, tflite_artifacts, tmp_path):
    art, _ = tflite_artifacts
    uri = _bare_python_peer(adb_peer, tmp_path, "echo python=3.11.2; echo runtime.numpy=1.26.4")
    with pytest.raises(RuntimeMissing, match="lacks ai-edge-litert .*`edgetl devices setup adb://[^`]*`"):
        deploy(art, uri, steps=1, out=tmp_path / "r")
