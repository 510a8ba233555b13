"""The composable Python API: the README's example as written, the trainer on a user's own Dataset and DataLoader,
nothing written unless asked, callbacks, and the example script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgetl

ROOT = Path(__file__).resolve().parents[1]


class _Data(TensorDataset):
    classes = ["a", "b", "c", "d", "e"]


def _datasets(n_train=32, n_val=16, size=64):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_train + n_val, 3, size, size, generator=g), torch.arange(n_train + n_val) % 5
    return _Data(x[:n_train], y[:n_train]), _Data(x[n_train:], y[n_train:])


@pytest.fixture
def imagenet_file():
    """torchvision's MobileNetV3-Large weights file where the hub cache expects it (offline: random values)."""
    import torchvision

    from edgetl.models import imagenet_weights_path

    path = imagenet_weights_path("mobilenet_v3_large")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), path)
    return path


@pytest.mark.slow
def test_the_issue_example_runs_as_written(imagenet_file, tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tensorflow")
    monkeypatch.chdir(tmp_path)
    my_dataset, my_val = _datasets()
    # -- the example, as written -------------------------------------------------------------------------------
    import edgetl
    model = edgetl.create_model("mobilenet_v3_large", num_classes=5, weights="imagenet")
    policy = edgetl.MobileTL(k=5, hardswish_threshold=0.0)          # or edgetl.parse_policy("mobiletl:5")
    edgetl.apply_policy(model, policy)
    trainer = edgetl.Trainer(model, train_data=my_dataset, val_data=my_val,           # any torch Dataset/DataLoader
                             optimizer=edgetl.OptimizerSpec("adamw", lr=1e-3), epochs=5,
                             callbacks=[edgetl.ProgressBar()])                            # UI is a callback
    result = trainer.fit()                      # writes nothing unless given out_dir=...
    run = edgetl.Run.save(model, policy, result, "runs/flowers")    # the run directory: one module owns it
    artifacts = edgetl.export(model, "tflite", out="artifacts/tflite", batch_size=8)  # or export(run, …)
    print(artifacts.validation)                 # typed result: checks, free-running drift, files
    # ------------------------------------------------------------------------------------------------------------
    assert len(result.history) == 5 and run.path == Path("runs/flowers")
    assert artifacts.validation.ok and artifacts.validation.free_running["steps"] == 3
    assert (tmp_path / "artifacts/tflite/model.tflite").is_file()
    assert edgetl.Run.load("runs/flowers").policy == policy


def test_trainer_composes_with_datasets_and_loaders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = _datasets()
    model = edgetl.apply_policy(edgetl.create_model("mobilenet_v3_small", 5), "mobiletl:2")
    seen = []

    class Record(edgetl.Callback):
        def on_step_end(self, trainer, step, loss):
            seen.append(("step", step))

        def on_epoch_end(self, trainer, record):
            seen.append(("epoch", record["epoch"]))

    result = edgetl.Trainer(model, DataLoader(train, batch_size=8, shuffle=True), val, epochs=2, batch_size=8,
                            optimizer="sgd", callbacks=[Record(), lambda t, r: seen.append(("fn", r["epoch"]))]).fit()
    assert seen == [("step", 1), ("step", 2), ("step", 3), ("step", 4), ("epoch", 1), ("fn", 1),
                    ("step", 1), ("step", 2), ("step", 3), ("step", 4), ("epoch", 2), ("fn", 2)]
    assert result.out is None and list(tmp_path.iterdir()) == []  # nothing written
    assert result.class_names == _Data.classes and result.resolution == 64
    assert result.optimizer == edgetl.OptimizerSpec("sgd", lr=0.05, momentum=0.9)
    # the trainer's numbers are the model's: evaluate agrees with an independent pass
    with torch.no_grad():
        logits = model.eval()(val.tensors[0])
    acc = float((logits.argmax(1) == val.tensors[1]).float().mean())
    assert result.history[-1]["val_acc"] == pytest.approx(acc)


def test_trainer_with_out_dir_writes_a_run_that_loads(tmp_path):
    train, val = _datasets()
    model = edgetl.apply_policy(edgetl.create_model("mobilenet_v3_small", 5), edgetl.MobileTL(2, 0.5))
    result = edgetl.Trainer(model, train, val, epochs=1, batch_size=8, out_dir=tmp_path / "run").fit()
    assert result.out == tmp_path / "run"
    run = edgetl.Run.load(tmp_path / "run")
    assert run.policy == edgetl.MobileTL(2, 0.5) and run.class_names == _Data.classes and run.resolution == 64
    assert run.history == result.history and run.optimizer == edgetl.OptimizerSpec("adamw")
    for name, value in model.state_dict().items():
        assert torch.equal(value, run.model.state_dict()[name]), name
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_old_run_directories_still_load(tmp_path):
    """A run written before the run format had a schema version (threshold and optimizer in its config)."""
    model = edgetl.apply_policy(edgetl.create_model("mobilenet_v3_small", 3), edgetl.MobileTL(2, 0.25))
    config = {"model": "mobilenet_v3_small", "policy": "mobiletl:2", "data": "patterns", "resolution": 64,
              "optimizer": "sgd", "lr": 0.02, "weight_decay": 1e-4, "hardswish_threshold": 0.25, "seed": 0}
    meta = {"version": "0.1.0", "model": "mobilenet_v3_small", "policy": "mobiletl:2", "num_classes": 3,
            "class_names": ["x", "y", "z"], "resolution": 64, "config": config}
    (tmp_path / "old").mkdir()
    torch.save({"edgetl": meta, "state_dict": model.state_dict(), "history": []}, tmp_path / "old" / "checkpoint.pt")
    run = edgetl.Run.load(tmp_path / "old")
    assert run.policy == edgetl.MobileTL(2, hardswish_threshold=0.25)
    assert run.optimizer == edgetl.OptimizerSpec("sgd", lr=0.02, weight_decay=1e-4, momentum=0.9)
    assert run.class_names == ["x", "y", "z"] and run.data == "patterns"


def test_optimizer_spec_is_the_one_description():
    spec = edgetl.OptimizerSpec("sgd")
    assert (spec.lr, spec.momentum, spec.state_slots) == (0.05, 0.9, 1)
    assert edgetl.OptimizerSpec.parse("sgd-nomomentum").state_slots == 0
    assert edgetl.OptimizerSpec.parse("adamw").state_slots == 2
    assert edgetl.OptimizerSpec.from_dict(spec.as_dict()) == spec
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = spec.build(params)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    with pytest.raises(edgetl.ConfigError, match="unknown optimizer 'lamb'"):
        edgetl.OptimizerSpec("lamb")


def test_import_edgetl_loads_no_tensorflow_or_onnxruntime():
    code = ("import sys, edgetl; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'onnxruntime', 'onnx', 'ai_edge_litert', 'paramiko')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_import_edgetl_loads_no_console_ui_until_used():
    code = ("import sys, edgetl; print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'click'}), "
            "'edgetl.ui' in sys.modules, edgetl.__version__); bar = edgetl.ProgressBar(enabled=False); "
            "print(type(bar).__module__, edgetl.ui.ProgressBar is type(bar), 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    from edgetl.version import __version__

    assert out.split("\n")[:2] == [f"[] False {__version__}", "edgetl.ui True True"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        edgetl.nothing  # noqa: B018


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("tflite", marks=pytest.mark.slow)])
def test_example_script(tmp_path, fmt):
    from .exportfixtures import require_backend

    require_backend(fmt)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "finetune_your_dataset.py"), "--epochs", "1",
                           "--resolution", "64", "--k", "2", "--format", fmt, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation accuracy" in proc.stdout and "✓ gradients" in proc.stdout
    manifest = json.loads((tmp_path / "run" / fmt / "manifest.json").read_text())
    assert manifest["validation"]["ok"] and manifest["class_names"] == edgetl.data.Patterns.classes
    assert np.isfinite(manifest["memory"]["per_sample_bytes"])
