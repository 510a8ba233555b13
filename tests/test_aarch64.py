"""The TFLite device runner on real aarch64 binaries: Debian's arm64 Python with ai-edge-litert's and numpy's
aarch64 wheels, run by qemu-user-static (``tests/aarch64.py`` builds that once and caches it).

A Raspberry Pi's software on this machine: the exported V3-Small ``mobiletl:5`` model repeats its parity
check there (``--verify``) and trains a few steps, and the aarch64 run agrees with the same runner on the
host. Slow (emulation is about a hundred times slower than native): CI runs it in its second stage.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.exporters import export

from .aarch64 import Aarch64Unavailable, aarch64_python
from .exportutil import blocked_env, make_run

pytestmark = pytest.mark.slow
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
from edgetl.runtime import tflite_runner  # noqa: E402

STEPS, THREADS = 3, 2


@pytest.fixture(scope="module")
def device_python():
    """The aarch64 Python's wrapper; CI must have it, elsewhere a missing qemu or registry skips."""
    try:
        return aarch64_python(log=print)
    except Aarch64Unavailable as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the aarch64 Python cannot be built: {e}")
        pytest.skip(f"no aarch64 Python here: {e}")


def run_on_device(python: Path, art: Path, out: Path, workdir: Path) -> tuple[list[dict], dict]:
    """The device's part, as a user runs it: ``edgetl deploy ART --device 'local://DIR?python=PYTHON' --verify``, so
    the probe, the runtime check, the parity check and ``STEPS`` training steps all run on ``python``. Returns
    the on-device checks and the pulled ``metrics.json``."""
    from click.testing import CliRunner

    from edgetl.cli import main

    result = CliRunner().invoke(main, ["deploy", str(art), "--device", f"local://{workdir}?python={python}", "--verify",
                                       "--steps", str(STEPS), "--out", str(out), "--timeout", "1200"])
    assert result.exit_code == 0, result.output[-3000:]
    print(result.output)
    report = json.loads((out / "report.json").read_text())
    assert report["device"]["python_bin"] == str(python)  # the probe, check and runner all used the aarch64 Python
    return report["verify"], json.loads((out / "metrics.json").read_text())


def test_tflite_runner_trains_on_aarch64(device_python, tmp_path, monkeypatch):
    machine = subprocess.run([str(device_python), "-c", "import platform; print(platform.machine())"],
                             capture_output=True, text=True, check=False, timeout=120)
    assert machine.stdout.strip() == "aarch64", machine.stdout + machine.stderr

    run = make_run(tmp_path / "run", "mobilenet_v3_small", "mobiletl:5", resolution=64)
    art = tmp_path / "art"
    manifest = export(run, "tflite", art, steps=2, batch_size=4).manifest.as_dict()
    env = blocked_env(tmp_path)  # torch, TensorFlow and edgetl fail on import, as on a device
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])  # the local "device" runs with this environment

    checks, metrics = run_on_device(device_python, art, tmp_path / "device", tmp_path / "pi")
    assert [c["ok"] for c in checks] == [True, True, True]

    assert metrics["machine"] == "aarch64" and metrics["runtime"] == "ai-edge-litert"
    assert not metrics["torch_imported"] and not metrics["tensorflow_imported"]
    losses = metrics["losses"]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    params = np.load(tmp_path / "device" / "params.npz")
    kinds = {v["name"]: v["kind"] for v in manifest["variables"]}
    assert set(manifest["trainable"]) <= set(params.files)
    assert sorted(params.files) == sorted(n for n, k in kinds.items() if k in ("param", "stat"))
    assert all(np.all(np.isfinite(params[n])) for n in params.files)

    # the same runner on the host, same data and steps: aarch64 kernels agree with x86-64's
    host = tmp_path / "host"
    subprocess.run([sys.executable, str(art / "tflite_runner.py"), "--artifacts", str(art), "--steps", str(STEPS),
                    "--out", str(host), "--threads", str(THREADS)], env=env, check=True, capture_output=True, timeout=300)
    host_losses = json.loads((host / "metrics.json").read_text())["losses"]
    loss_diff = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(losses, host_losses))
    # Parameters are compared by their updates: AdamW divides by sqrt(v), so an element whose gradient is
    # near zero moves by about lr whichever way float rounding tips it; the update as a whole must agree
    start = tflite_runner.Session(str(art)).params()
    host_params = np.load(host / "params.npz")
    device_update, host_update = (np.concatenate([(p[n] - start[n]).ravel() for n in manifest["trainable"]])
                                  for p in (params, host_params))
    update_diff = float(np.linalg.norm(device_update - host_update) / np.linalg.norm(host_update))
    print(f"aarch64 under qemu: median step {metrics['median_step_seconds']:.2f} s ({THREADS} threads), peak RSS "
          f"{metrics['peak_rss_bytes'] / 2**20:.0f} MiB; losses {[round(x, 5) for x in losses]}; against the host: "
          f"losses {loss_diff:.2g} (relative max |diff|), parameter updates {update_diff:.2g} (relative norm)")
    assert loss_diff < 1e-4 and update_diff < 1e-2
