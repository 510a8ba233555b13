"""Devices whose SSH server offers no SFTP: an OpenSSH sshd without ``Subsystem sftp``, and Debian's dropbear with
its sftp-server hidden (as on OpenWrt and minimal images). Files then travel over the command channel, with the
same ``.part`` names, sha256 checks and resume as over SFTP; a device where neither way works is named in one line.

The default stage pushes a bundle over the OpenSSH server (cut and resumed) and copies files through dropbear; the
slow stage sets up, deploys and cleans the Raspberry-Pi-like device through each server, with a dropped connection
and a resume in both setup and deploy."""

import json
import logging
import os

import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.devices import connect
from edgetl.devices.base import DeviceError, Disconnected, file_sha256
from edgetl.devices.bundle import make_bundle, push_bundle

from .devicefixtures import DroppingProxy


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _partial_is_whole_files(bundles, bundle) -> set[str]:
    """What a cut push left: a ``.partial`` bundle whose files with final names are whole (their sha256)."""
    partial = bundles / f"{bundle.id}.partial"
    assert partial.is_dir() and not [p for p in bundles.iterdir() if not p.name.endswith(".partial")]
    arrived = {rel for rel in bundle.files if (partial / rel).is_file()}
    assert all(file_sha256(partial / rel) == bundle.files[rel] for rel in arrived)
    return arrived


def test_openssh_without_sftp_push_resumes_after_a_drop_pulls_and_cleans(sshd_nosftp, artifacts, tmp_path, caplog):
    """A bundle pushed over the command channel: cut mid-way (whole files keep their names, sha256 intact), pushed
    again (only what is missing travels, verified on the device), a file pulled back byte for byte, and clean."""
    art, _ = artifacts
    uri = sshd_nosftp.uri(tmp_path / "pi", tmp_path / "known_hosts")
    bundle = make_bundle(art)
    proxy = DroppingProxy(sshd_nosftp.port, limit=int(0.6 * bundle.size))  # mid-bundle, after whole files
    try:
        with connect(sshd_nosftp.uri(tmp_path / "pi", tmp_path / "known_hosts", port=proxy.port)) as dev:
            with pytest.raises(Disconnected, match="run the same deploy again"):
                push_bundle(dev, bundle)
    finally:
        proxy.close()
    assert proxy.dropped
    bundles = tmp_path / "pi" / "bundles"
    arrived = _partial_is_whole_files(bundles, bundle)
    assert 0 < len(arrived) < len(bundle.files)
    said, sent = [], []
    with caplog.at_level(logging.INFO, logger="edgetl"), connect(uri) as dev:
        remote = push_bundle(dev, bundle, on_bytes=sent.append, log=said.append)
        dev.pull_file(f"{remote}/manifest.json", tmp_path / "back" / "manifest.json")
    assert any("offers no SFTP" in r.message and "command channel" in r.message for r in caplog.records)
    assert said == [f"resuming: {len(arrived)} of {len(bundle.files)} files are already on the device"]
    assert sum(sent) == sum((bundle.root / rel).stat().st_size for rel in bundle.files if rel not in arrived)
    assert all(file_sha256(bundles / bundle.id / rel) == digest for rel, digest in bundle.files.items())
    assert (tmp_path / "back" / "manifest.json").read_bytes() == (art / "manifest.json").read_bytes()
    assert not list((tmp_path / "back").glob("*.part"))
    code, out = cli("devices", "clean", uri)
    assert code == 0 and "removed 1 bundle" in out, out
    assert not list(bundles.iterdir())


def test_dropbear_copies_over_the_command_channel_and_names_a_device_where_nothing_copies(pi, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(700_000))
    port = pi.start_dropbear()
    with connect(pi.uri(port=port)) as dev:
        assert "dropbear" in dev.client.get_transport().remote_version.lower()
        dev.makedirs(dev.workdir)
        dev.push_file(blob, f"{dev.workdir}/blob.bin")
        assert dev._sftp_ok is False  # it was offered none: the fallback was chosen, not configured
        assert dev.sha256([f"{dev.workdir}/blob.bin"])[f"{dev.workdir}/blob.bin"] == file_sha256(blob)
        dev.pull_file(f"{dev.workdir}/blob.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
        with pytest.raises(DeviceError, match="reading .*/missing.bin on .* failed: .*No such file"):
            dev.pull_file(f"{dev.workdir}/missing.bin", tmp_path / "missing.bin")
        assert not (tmp_path / "missing.bin").exists() and not (tmp_path / "missing.bin.part").exists()
    # no SFTP and a `cat` that cannot copy (here it is false(1)): one error with both causes and their fixes
    broken = pi.start_dropbear([f"--bind /bin/false {os.path.realpath('/usr/bin/cat')}"])
    with connect(pi.uri(port=broken)) as dev:
        with pytest.raises(DeviceError) as exc:
            dev.push_file(blob, f"{dev.workdir}/blob.bin")
    message = str(exc.value)
    for said in ("offers no SFTP", "command channel failed too", "`cat > FILE` exited 1", "Subsystem sftp",
                 "sftp-server"):
        assert said in message, message


@pytest.mark.slow  # setup installs the runtime from wheels twice (about a minute each time here)
@pytest.mark.parametrize("server", ["openssh", "dropbear"])
def test_setup_deploy_and_clean_without_sftp(server, pi, device_wheels, tflite_artifacts, tmp_path):
    """The Raspberry-Pi-like device behind a server without SFTP: setup from pushed wheels, cut mid-push and run
    again (it resumes); a deploy cut mid-bundle and run again (it resumes and trains); clean removes the bundles."""
    art, root = tflite_artifacts
    pi.offline_pip()
    port = pi.start_sshd(sftp=False) if server == "openssh" else pi.start_dropbear()
    size = sum(p.stat().st_size for p in device_wheels.glob("*.whl"))
    proxy = DroppingProxy(port, limit=size // 2)
    try:
        code, out = cli("devices", "setup", pi.uri(port=proxy.port), "--wheels", device_wheels)
    finally:
        proxy.close()
    assert proxy.dropped and code == 2 and "dropped while pushing" in out and "Traceback" not in out, out
    assert list((pi.home / "edgetl" / "bundles").glob("wheels-*.partial"))
    code, out = cli("devices", "setup", pi.uri(port=port), "--wheels", device_wheels)
    assert code == 0, out
    for said in ("resuming:", "checked: ai-edge-litert 2.3.0 trains", "ready:"):
        assert said in out, out
    record = json.loads((pi.home / ".cache" / "edgetl" / "env.json").read_text())
    assert record["runtimes"] == {"ai-edge-litert": "2.3.0"}

    bundle = make_bundle(art, root / "data")
    proxy = DroppingProxy(port, limit=int(0.6 * bundle.size))
    try:
        code, out = cli("deploy", art, "--device", pi.uri(port=proxy.port), "--steps", "2", "--data", root / "data",
                        "--out", tmp_path / "r1")
    finally:
        proxy.close()
    assert proxy.dropped and code == 2 and "run the same deploy again" in out, out
    arrived = _partial_is_whole_files(pi.home / "edgetl" / "bundles", bundle)
    code, out = cli("deploy", art, "--device", pi.uri(port=port), "--steps", "2", "--data", root / "data", "--out",
                    tmp_path / "r2")
    assert code == 0, out
    assert f"resuming: {len(arrived)} of {len(bundle.files)} files" in out, out
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["device"]["python_bin"] == record["python"] and len(report["losses"]) == 2
    final = pi.home / "edgetl" / "bundles" / bundle.id
    assert all(file_sha256(final / rel) == digest for rel, digest in bundle.files.items())
    assert file_sha256(tmp_path / "r2" / "params.npz") == file_sha256(final / report["run"] / "params.npz")
    code, out = cli("devices", "clean", pi.uri(port=port))
    assert code == 0 and "removed 1 bundle" in out, out
    assert not list((pi.home / "edgetl" / "bundles").iterdir())
