"""Files received from anyone: opening them runs no code. Checkpoints, run directories and weights files are read
with ``weights_only=True`` (tensors and plain values only) and one that would call anything while loading is refused
in one line naming it; ``.npz`` files are read without pickle on the laptop and on the device.

Each crafted file would create a marker file when unpickled; the tests prove the marker never appears."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgetl.checkpoint import CHECKPOINT, UnsafeFile
from edgetl.cli import main
from edgetl.run import Run, read_checkpoint

from .exportutil import make_run


class Payload:
    """Unpickling this calls exec, which writes ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("untrusted") / "run", "mobilenet_v3_small", "mobiletl:2", resolution=32)


def one_error(args, *needles):
    result = CliRunner().invoke(main, [str(a) for a in args])
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_checkpoints_edgetl_writes_load_with_weights_only(run_dir):
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and ckpt["edgetl"]["model"] == "mobilenet_v3_small"
    assert Run.load(run_dir).model_name == "mobilenet_v3_small"


def test_a_hostile_run_directory_is_refused_and_runs_nothing(run_dir, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil-run"
    evil.mkdir()
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    ckpt["history"] = [{"epoch": 1, "note": Payload(marker)}]
    torch.save(ckpt, evil / CHECKPOINT)
    (evil / "run.json").write_text((run_dir / "run.json").read_text())
    # the payload is real: an unsafe load runs it
    torch.load(evil / CHECKPOINT, map_location="cpu", weights_only=False)
    assert marker.read_text() == "ran"
    marker.unlink()

    with pytest.raises(UnsafeFile, match=f"{evil / CHECKPOINT} holds more than tensors .*names exec"):
        read_checkpoint(evil)
    with pytest.raises(UnsafeFile):
        Run.load(evil)
    from edgetl.fleet.report import _state

    with pytest.raises(UnsafeFile):
        _state(str(evil))
    params = tmp_path / "params.npz"
    np.savez(params, **{"classifier.3.bias": np.zeros(5, np.float32)})
    for args in (["export", evil, "--format", "onnx", "--out", tmp_path / "art"],
                 ["import-weights", evil, params, "--out", tmp_path / "w.pt"],
                 ["train", "--weights", evil, "--epochs", "1", "--out", tmp_path / "t"]):
        one_error(args, str(evil / CHECKPOINT), "holds more than tensors and plain values")
    assert not marker.exists()
    assert not (tmp_path / "art").exists() and not (tmp_path / "w.pt").exists()


def test_a_hostile_weights_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    weights = tmp_path / "mobilenet_v3_small.pth"
    state = {k: v for k, v in torch.nn.Linear(2, 2).state_dict().items()}
    state["extra"] = Payload(marker)
    torch.save(state, weights)
    one_error(["train", "--weights", weights, "--epochs", "1", "--out", tmp_path / "t"], str(weights),
              "names exec, which loading would call")
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused_here_and_on_the_device(run_dir, tmp_path):
    marker = tmp_path / "marker"
    hostile = tmp_path / "params.npz"
    np.savez(hostile, **{"classifier.3.bias": np.array([Payload(marker)], dtype=object)})
    one_error(["import-weights", run_dir, hostile, "--out", tmp_path / "w.pt"], str(hostile))
    pytest.importorskip("onnxruntime.training")
    from edgetl.exporters import export

    art = tmp_path / "art"
    export(run_dir, "onnx", art, validate=False, steps=1)
    shard = tmp_path / "shard.npz"
    np.savez(shard, images=np.array([Payload(marker)], dtype=object), labels=np.zeros(1, np.int64))
    proc = subprocess.run([sys.executable, str(art / "ort_runner.py"), "--artifacts", str(art), "--data", str(shard),
                           "--steps", "1", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "pickled objects" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not marker.exists() and not os.path.exists(tmp_path / "o" / "metrics.json")
    assert json.loads((art / "manifest.json").read_text())["format"] == "onnx"
