"""Long unattended runs, shortened to what each claim needs (slow stage): a device runner's memory stays flat over
thousands of steps with frequent checkpoints; a runner killed at any moment (mid-step, mid-checkpoint) resumes to
exactly the weights of an uninterrupted run; a fleet survives many rounds of devices dying and coming back, and
leaves no process behind.

The runners run as on a device (the script beside its artifacts, a fresh process, torch, TensorFlow and edgetl
blocked), V3-Small mobiletl:5 at 32 x 32, batch 8. Each test prints its figures (``pytest -s`` shows them)."""

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.data import pack_uint8_shard

from .exportutil import blocked_env, make_run

pytestmark = pytest.mark.slow  # every test here: CI's second stage
pytest.importorskip("tensorflow")
MiB = 2**20


@pytest.fixture(scope="module")
def soak_export(tmp_path_factory):
    """A TFLite export of V3-Small mobiletl:5 at 32 px, batch 8, and a shard of 64 patterns (8 steps an epoch)."""
    from edgetl.exporters import export

    root = tmp_path_factory.mktemp("soak")
    run = make_run(root / "run", "mobilenet_v3_small", "mobiletl:5", resolution=32)
    export(run, "tflite", root / "art", validate=False, batch_size=8)
    pack_uint8_shard("patterns", 32, root / "shard", count=64)
    return root / "art", root / "shard"


def runner(art: Path, *args) -> list[str]:
    return [sys.executable, str(art / "tflite_runner.py"), "--artifacts", str(art), "--threads", "1", *map(str, args)]


def status(pid: int, key: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_runner_memory_stays_flat_over_2000_steps_with_checkpoints(soak_export, tmp_path):
    """2,000 steps (250 epochs), a checkpoint every second: resident memory sampled every few milliseconds; its
    highest in steps 1,801-2,000 exceeds its highest in steps 101-300 (after the first epochs, checkpoints
    included in both) by at most 2 MiB."""
    art, shard = soak_export
    out = tmp_path / "out"
    proc = subprocess.Popen(runner(art, "--data", shard, "--steps", 2000, "--checkpoint-every", 1, "--out", out),
                            env=blocked_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    step, samples = [0], []

    def sample():
        while proc.poll() is None:
            try:
                samples.append((step[0], status(proc.pid, "VmRSS")))
            except (OSError, KeyError):
                break
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    checkpoints = 0
    for line in proc.stdout:
        if line.startswith("step "):
            step[0] = int(line.split()[1].split("/")[0])
        elif line.startswith("epoch "):
            checkpoints += 1
    proc.wait(timeout=600)
    sampler.join(timeout=10)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2000 and len(metrics["epochs"]) == 250
    early = max(rss for s, rss in samples if 100 < s <= 300)
    late = max(rss for s, rss in samples if 1800 < s <= 2000)
    at_100 = next(rss for s, rss in samples if s >= 100)
    at_2000 = next((rss for s, rss in samples if s >= 2000), late)  # as the last step ends, before the results
    seconds = sum(metrics["step_seconds"])
    print(f"\nsoak: {metrics['steps']} steps in {seconds:.1f} s of training; RSS at step 100 {at_100 / MiB:.1f} MiB, at "
          f"step 2000 {at_2000 / MiB:.1f} MiB; highest in steps 101-300 {early / MiB:.2f} MiB, in 1801-2000 "
          f"{late / MiB:.2f} MiB (+{(late - early) / MiB:.2f}); peak {metrics['peak_rss_bytes'] / MiB:.1f} MiB; "
          f"{len(samples)} samples")
    assert len([s for s, _ in samples if 100 < s <= 300]) > 20 and len([s for s, _ in samples if s > 1800]) > 20
    assert late - early <= 2 * MiB


def _kill_when(proc, rng: random.Random, in_checkpoint: bool) -> None:
    """SIGKILL ``proc``: a few milliseconds after an epoch ends (its checkpoint is being written), or at a random
    moment of its run."""
    if in_checkpoint:
        target = rng.randint(1, 3)  # the 1st to 3rd epoch end of this run
        for line in proc.stdout:
            if line.startswith("epoch ") and (target := target - 1) == 0:
                time.sleep(rng.uniform(0, 0.004))
                break
    else:
        time.sleep(rng.uniform(0.2, 1.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _writing_when_killed(out: Path) -> bool:
    """Whether the kill fell inside a checkpoint write: a checkpoint folder newer than the one progress.json names."""
    folders = [p.name for p in (out / "checkpoints").glob("epoch-*")]
    try:
        named = json.loads((out / "progress.json").read_text())["checkpoint"].split("/")[1]  # checkpoints/epoch-N/...
    except (OSError, ValueError, KeyError):
        named = ""
    return any(name > named for name in folders)


def test_ten_kills_at_random_moments_each_resume_to_identical_weights(soak_export, tmp_path):
    """The same run (40 epochs, a checkpoint at every epoch end) is killed 10 times, half of them a few milliseconds
    after an epoch ends (inside its checkpoint write), half at random; every run of the same command resumes, and
    the last one ends with exactly the uninterrupted run's weights, losses and checkpoint."""
    art, shard = soak_export
    epochs = 40
    args = ["--data", shard, "--epochs", epochs, "--checkpoint-every", 0, "--seed", 1]
    env = blocked_env(tmp_path)
    whole = subprocess.run(runner(art, *args, "--out", tmp_path / "whole"), env=env, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out, rng = tmp_path / "cut", random.Random(24)
    resumed, inside, finished_early = [], 0, 0
    for kill in range(10):
        proc = subprocess.Popen(runner(art, *args, "--out", out), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        _kill_when(proc, rng, in_checkpoint=kill % 2 == 0)
        finished_early += proc.returncode == 0
        inside += _writing_when_killed(out)
        progress = json.loads((out / "progress.json").read_text()) if (out / "progress.json").exists() else {}
        resumed.append(progress.get("epoch", 0))
    last = subprocess.run(runner(art, *args, "--out", out), env=env, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-2000:]
    print(f"\nkills: 10, {inside} inside a checkpoint write; checkpoints in force after each: {resumed}; the last run "
          f"resumed with: {[line for line in last.stdout.splitlines() if line.startswith('resume')]}")
    assert finished_early == 0 and inside >= 3 and max(resumed) < epochs
    a, b = np.load(out / "params.npz"), np.load(tmp_path / "whole" / "params.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    c, d = np.load(out / "checkpoint.npz"), np.load(tmp_path / "whole" / "checkpoint.npz")
    assert all(np.array_equal(c[k], d[k]) for k in c.files)  # optimizer state too
    mine, theirs = (json.loads((p / "metrics.json").read_text()) for p in (out, tmp_path / "whole"))
    assert mine["losses"] == theirs["losses"] and mine["resumed_from_epoch"] == resumed[-1] > 0


def _ours(root: Path) -> list[str]:
    """Processes working in or naming ``root`` (this test's fleet and devices): their command lines."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = str((proc / "cwd").resolve())
        except OSError:
            continue
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.timeout(2400)  # 30 rounds: each starts a ClientApp process per device (about 10 s a round here)
def test_a_fleet_of_3_survives_30_rounds_with_a_device_killed_every_5(soak_export, tmp_path):
    """Three local devices, 30 rounds of 1 step; after rounds 5, 10, 15, 20 and 25 one device's SuperNode is killed
    (with its ClientApp), in turn. Every round is recorded and counts, each killed device is restarted and
    answers again, and at the end no process of the fleet (SuperLink, ServerApp, SuperNodes, ClientApps) is left."""
    from edgetl.fleet import Fleet, FleetEvents, make_shards

    art, _ = soak_export
    shards = make_shards("patterns", 3, tmp_path / "shards", resolution=32, count=48)
    assert len(shards) == 3
    killed: list[tuple[int, str]] = []

    class KillEveryFifth(FleetEvents):
        def round(self, record):
            if record.get("event") == "round" and record["round"] % 5 == 0 and record["round"] < 30:
                index = (record["round"] // 5 - 1) % 3
                fleet.nodes[index].kill()
                killed.append((record["round"], fleet.node_config(index)["label"]))

    devices = [f"local://{tmp_path / f'device{i}'}?python={sys.executable}" for i in range(3)]
    fleet = Fleet(art, devices, tmp_path / "fleet", data=str(tmp_path / "shards"), rounds=30, local_steps=1,
                  min_devices=2, eval_size=16, insecure=True, round_timeout=120, join_timeout=60, restart_backoff=1,
                  watch_s=1, events=KillEveryFifth())
    t0 = time.monotonic()
    result = fleet.run()
    seconds = time.monotonic() - t0
    rounds = result.rounds
    assert [r["round"] for r in rounds] == list(range(1, 31)) and not [r for r in rounds if r.get("skipped")]
    report = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    assert [r["round"] for r in report["rounds"]] == list(range(1, 31))
    assert len(killed) == 5 and len([r for r in fleet.restart_log if r.get("ok")]) >= 5
    for at, label in killed:  # back within two rounds of its kill
        assert any(label in r["answered_devices"] for r in rounds[at:at + 2]), (at, label, rounds[at:at + 2])
    assert len(rounds[-1]["answered"]) == 3
    print(f"\nfleet: 30 rounds in {seconds:.0f} s ({seconds / 30:.1f} s a round), kills after rounds "
          f"{[at for at, _ in killed]}, restarts {len(fleet.restart_log)}, rounds with a device lost "
          f"{[r['round'] for r in rounds if r.get('lost')]}, rejoined at {[r['round'] for r in rounds if r.get('rejoined')]}")
    deadline = time.monotonic() + 20  # processes signalled at the end exit within moments
    while _ours(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ours(tmp_path) == []
