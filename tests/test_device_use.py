"""The loop closed on the device: the run's learning-rate schedule, the runner's --predict, --evaluate and
--eval-data, and deploy's, checked against PyTorch and the trainer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import Subset

from edgetl.cli import main
from edgetl.data import Patterns, eval_transform
from edgetl.devices.deploy import deploy
from edgetl.errors import DataError
from edgetl.evaluate import evaluate, predict
from edgetl.exporters import export
from edgetl.models import create_model
from edgetl.run import Run, device_params
from edgetl.runtime.runner_fit import learning_rate
from edgetl.surgery import apply_policy
from edgetl.trainer import Callback, Trainer

from .conftest import make_image_folder
from .exportutil import PATTERN_CLASSES, decisive_run, run_runner

pytestmark = pytest.mark.slow  # TFLite exports trained and deployed: CI's second stage

BATCH = 4


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    """(a TFLite export at batch 4 of a decisive V3-Small run at 64 px, its run, a folder of the run's classes)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    root = tmp_path_factory.mktemp("use")
    run = decisive_run(root / "run")
    export(run, "tflite", root / "art", batch_size=BATCH, steps=2)
    data = make_image_folder(root / "data", classes=PATTERN_CLASSES, per_class=3, size=40)
    Image.open(data / "rings" / "000.png").convert("P").save(data / "rings" / "palette.png")
    return root / "art", run, data


def torch_with(run_dir, params_path):
    """The run's model with a device's trained weights loaded: the PyTorch side of every comparison."""
    run = Run.load(run_dir)
    state = run.model.state_dict()
    state.update(device_params(params_path, state, run_dir))
    run.model.load_state_dict(state)
    return run


def torch_probabilities(run, paths):
    tf = eval_transform(run.resolution)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return torch.softmax(run.model.eval()(x).double(), 1).numpy()


def test_the_runner_follows_the_trainers_cosine_schedule_step_by_step(tflite, tmp_path):
    """The trainer's CosineAnnealingLR, read step by step from a real Trainer, is the learning rate the runner
    gives each step (its metrics record them): same base, same planned steps (3 epochs of 3 batches)."""
    art, _, _ = tflite
    torch.manual_seed(0)
    model = apply_policy(create_model("mobilenet_v3_small", 5), "last")
    data = Subset(Patterns(12, transform=eval_transform(32)), range(12))
    used = []

    class Record(Callback):
        def on_fit_start(self, trainer):
            used.append(trainer.scheduler.get_last_lr()[0])  # the first step's

        def on_step_end(self, trainer, step, loss):
            used.append(trainer.scheduler.get_last_lr()[0])  # the next step's

    Trainer(model, data, optimizer="sgd", epochs=3, batch_size=BATCH, callbacks=[Record()]).fit()
    used = used[:9]
    assert used == pytest.approx([learning_rate(0.05, i, 9, "cosine") for i in range(9)], rel=1e-12, abs=1e-15)
    shard = tmp_path / "shard.npz"
    x = np.stack([eval_transform(64)(Patterns(12)[i][0]).numpy() for i in range(12)])
    np.savez(shard, images=x, labels=np.arange(12) % 5)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["schedule"]["name"] == "cosine"
    base = manifest["optimizer"]["lr"]
    run_runner(art, "tflite_runner.py", tmp_path, "--data", shard, "--epochs", 3, "--out", tmp_path / "cos")
    cosine = json.loads((tmp_path / "cos" / "metrics.json").read_text())
    assert cosine["schedule"] == "cosine" and len(cosine["lrs"]) == 9
    assert cosine["lrs"] == pytest.approx([u / 0.05 * base for u in used], rel=1e-12)
    run_runner(art, "tflite_runner.py", tmp_path, "--data", shard, "--epochs", 3, "--schedule", "constant", "--out",
               tmp_path / "const")
    constant = json.loads((tmp_path / "const" / "metrics.json").read_text())
    assert constant["lrs"] == [base] * 9
    with np.load(tmp_path / "cos" / "params.npz") as a, np.load(tmp_path / "const" / "params.npz") as b:
        assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # the rate each step got is the one it used


def test_runner_predictions_and_evaluation_match_pytorch_on_the_same_weights(tflite, tmp_path):
    art, run_dir, data = tflite
    run_runner(art, "tflite_runner.py", tmp_path, "--device-data", data, "--epochs", 1, "--out", tmp_path / "t")
    params = tmp_path / "t" / "params.npz"
    run_runner(art, "tflite_runner.py", tmp_path, "--predict", data, "--weights", params, "--top-k", 2, "--out",
               tmp_path / "p")
    got = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert got["schema"] == "edgetl.predict/1" and got["weights"] == str(params) and not got["unreadable"]
    paths = [r["image"] for r in got["predictions"]]
    assert sorted(paths) == sorted(str(p) for p in data.rglob("*.png"))
    run = torch_with(run_dir, params)
    probabilities = torch_probabilities(run, paths)
    for row, p in zip(got["predictions"], probabilities):
        order = np.argsort(-p)[:2]
        assert [t["class"] for t in row["top"]] == [run.class_names[i] for i in order]
        assert [t["probability"] for t in row["top"]] == pytest.approx(p[order].tolist(), abs=1e-4)
    run_runner(art, "tflite_runner.py", tmp_path, "--evaluate", data, "--weights", params, "--out", tmp_path / "e")
    device = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    labels = np.array([PATTERN_CLASSES.index(p.split("/")[-2]) for p in paths])
    assert device["images"] == len(paths) and device["top1"] == pytest.approx(np.mean(probabilities.argmax(1) == labels))


def test_deploy_judges_and_uses_what_the_device_learned(tflite, tmp_path):
    """Train on the device with a held-out folder judged before and after; then --evaluate and --predict there with
    the latest weights, the export's own, and a result's pushed back; the laptop's evaluate of the result agrees."""
    art, run_dir, data = tflite
    uri = f"local://{tmp_path / 'device'}"
    trained = deploy(art, uri, device_data=str(data), eval_data=str(data), epochs=2, out=tmp_path / "r")
    held_out = trained.eval
    assert held_out["before"]["images"] == held_out["after"]["images"] == 16
    assert trained.schedule == "cosine" and trained.source_run == str(run_dir.resolve())
    laptop = evaluate(tmp_path / "r", data)
    assert laptop.source["kind"] == "deploy" and laptop.confusion == held_out["after"]["confusion"]
    assert abs(laptop.top1 - held_out["after"]["top1"]) <= 0.005
    before = evaluate(run_dir, data)
    assert before.confusion == held_out["before"]["confusion"]
    assert (tmp_path / "r" / "confusion.png").is_file()
    on_device = deploy(art, uri, evaluate=str(data), out=tmp_path / "e")
    assert on_device.mode == "evaluate" and on_device.weights.endswith("params.npz")
    assert on_device.evaluation["confusion"] == held_out["after"]["confusion"]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["confusion.png", "evaluation.json", "manifest.json",
                                                                  "report.json"]
    latest = deploy(art, uri, predict=str(data / "dots"), top_k=3, out=tmp_path / "p")
    here = predict(tmp_path / "r", [data / "dots"], top_k=3)
    rows = latest.predictions["predictions"]
    assert [r["image"] for r in rows] == [r.image for r in here.rows]
    for row, mine in zip(rows, here.rows):
        assert [t["class"] for t in row["top"]] == [c for c, _ in mine.top]
        assert [t["probability"] for t in row["top"]] == pytest.approx([p for _, p in mine.top], abs=1e-4)
    own = deploy(art, uri, predict=str(data / "dots"), weights="export", out=tmp_path / "o")
    assert own.weights == "the export's own weights"
    assert own.predictions["predictions"] != rows
    shutil.rmtree(tmp_path / "device" / "bundles")  # a fresh device: the weights travel from the result
    pushed = deploy(art, uri, predict=str(data / "dots"), weights=str(tmp_path / "r"), top_k=3, out=tmp_path / "w")
    assert pushed.predictions["predictions"] == rows
    # report.json is the result as to_dict() gives it, key for key
    assert json.loads((tmp_path / "w" / "report.json").read_text()) == pushed.to_dict()
    with pytest.raises(DataError, match="trains nothing: drop --epochs"):
        deploy(art, uri, predict=str(data), epochs=1, out=tmp_path / "x")
    r = CliRunner().invoke(main, ["deploy", str(art), "--device", uri, "--evaluate", str(data), "--predict", str(data)])
    assert r.exit_code == 2 and "not both" in r.output
