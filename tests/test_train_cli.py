"""`edgetl train` end to end through click's CliRunner: outputs, resume, and the errors a user can hit."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

import edgetl
import edgetl.trainer
from edgetl.checkpoint import CHECKPOINT
from edgetl.cli import main
from edgetl.data import load_datasets
from edgetl.job import TrainConfig, trainer_from_config

from .conftest import make_image_folder

TINY = ["--model", "mobilenet_v3_small", "--policy", "mobiletl:2", "--resolution", "32", "--batch-size", "4",
        "--epochs", "2", "--weights", "none", "--no-progress", "--workers", "0"]


def _run(*args):
    result = CliRunner().invoke(main, ["train", *args])
    return result


def test_train_writes_checkpoint_metrics_and_command(image_folder, tmp_path):
    out = tmp_path / "run"
    result = _run(*TINY, "--data", str(image_folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    # accuracies count whole images of each split; cross-entropy is at least ln 2 on each image it gets wrong
    train, val, _ = load_datasets(image_folder, 32)
    steps = len(train) // 4  # whole batches of 4
    for e in metrics["epochs"]:
        assert (e["val_acc"] * len(val)) == pytest.approx(round(e["val_acc"] * len(val)))
        assert (e["train_acc"] * steps * 4) == pytest.approx(round(e["train_acc"] * steps * 4))
        assert e["train_loss"] >= (1 - e["train_acc"]) * math.log(2) and e["val_loss"] >= (1 - e["val_acc"]) * math.log(2)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["policy"] == "mobiletl:2"
    assert run["class_names"] == ["checkerboard", "stripes_horizontal", "stripes_vertical"]
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["edgetl"]["num_classes"] == 3 and len(ckpt["history"]) == 2
    # the checkpoint is a torchvision state_dict and evaluates to the accuracy the run reported
    import torchvision
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    model.load_state_dict(ckpt["state_dict"])
    trainer = trainer_from_config(TrainConfig(**{**ckpt["edgetl"]["config"], "out": str(tmp_path / "eval")}))
    trainer.model.load_state_dict(ckpt["state_dict"])
    assert trainer.evaluate()[1] == pytest.approx(metrics["epochs"][-1]["val_acc"])
    assert not list(out.glob(".*.tmp")), "temporary files must be renamed into place"


@pytest.mark.slow  # over 9 s: the second stage of .ci/run
def test_interrupted_run_resumes_to_identical_weights(image_folder, tmp_path, monkeypatch):
    args = [*TINY, "--epochs", "3", "--data", str(image_folder)]
    straight = _run(*args, "--out", str(tmp_path / "straight"))
    assert straight.exit_code == 0, straight.output

    original = edgetl.trainer.Trainer._write_metrics
    calls = []

    def crash_after_first_epoch(self):
        original(self)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C / the laptop slept

    monkeypatch.setattr(edgetl.trainer.Trainer, "_write_metrics", crash_after_first_epoch)
    crashed = _run(*args, "--out", str(tmp_path / "resumed"))
    assert crashed.exit_code != 0
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "running"
    monkeypatch.setattr(edgetl.trainer.Trainer, "_write_metrics", original)

    resumed = _run("--out", str(tmp_path / "resumed"), "--resume", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert a["history"][-1]["val_acc"] == b["history"][-1]["val_acc"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert run["status"] == "finished"
    first = run["command"].split()
    assert first[:2] == ["edgetl", "train"]
    for option in (["--epochs", "3"], ["--policy", "mobiletl:2"], ["--data", str(image_folder)]):
        i = first.index(option[0])
        assert first[i : i + 2] == option
    assert run["commands"][1] == f"edgetl train --out {tmp_path / 'resumed'} --resume --no-progress"


def test_default_weights_offline_says_one_line_and_continues(image_folder, tmp_path):
    args = [a for a in TINY if a not in ("--weights", "none")]
    result = _run(*args, "--epochs", "1", "--data", str(image_folder), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "continuing from random initialisation" in line]
    assert len(notes) == 1 and "ImageNet weights" in notes[0]


def _expect_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_data_errors(tmp_path):
    _expect_error(_run(*TINY, "--data", str(tmp_path / "nowhere")), "does not exist", "--data DIR")
    empty_root = tmp_path / "noclasses"
    empty_root.mkdir()
    _expect_error(_run(*TINY, "--data", str(empty_root)), "has no class folders")
    data = make_image_folder(tmp_path / "d1")
    (data / "empty_class").mkdir()
    _expect_error(_run(*TINY, "--data", str(data)), "empty_class holds no images")
    data = make_image_folder(tmp_path / "d2")
    (data / "checkerboard" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    _expect_error(_run(*TINY, "--data", str(data)), "broken.jpg", "delete or replace")


def test_weight_errors(image_folder, tmp_path):
    import torchvision
    v2 = tmp_path / "v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), v2)
    _expect_error(_run(*TINY, "--data", str(image_folder), "--weights", str(v2)), "do not fit mobilenet_v3_small")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00" * 100)
    _expect_error(_run(*TINY, "--data", str(image_folder), "--weights", str(corrupt)), "corrupt")
    _expect_error(_run(*TINY, "--data", str(image_folder), "--weights", "imagenet"), "place it at")


def test_chained_transfer_keeps_the_backbone_with_a_new_head(image_folder, tmp_path):
    """A run trained on 3 classes starts a 2-class run: its backbone is kept, the head is new, one note says so."""
    first = tmp_path / "run3"
    assert _run(*TINY, "--epochs", "1", "--data", str(image_folder), "--out", str(first)).exit_code == 0
    two = make_image_folder(tmp_path / "two", classes=("dots", "rings"))
    for weights in (first, first / CHECKPOINT):  # a run directory or its checkpoint
        out = tmp_path / f"chained-{weights.name}"
        result = _run(*TINY, "--epochs", "1", "--data", str(two), "--weights", str(weights), "--out", str(out))
        assert result.exit_code == 0, result.output
        notes = [line for line in result.output.splitlines() if "keeping its backbone, starting a new head" in line]
        assert len(notes) == 1 and "trained for other classes (3: checkerboard, stripes_horizontal, " \
            "stripes_vertical) than these (2: dots, rings)" in notes[0], result.output
    # the frozen layers are the first run's, bit for bit; the head has the new size
    a = torch.load(first / CHECKPOINT, weights_only=True)["state_dict"]
    b = torch.load(out / CHECKPOINT, weights_only=True)["state_dict"]
    assert torch.equal(a["features.0.0.weight"], b["features.0.0.weight"])
    assert a["classifier.3.weight"].shape[0] == 3 and b["classifier.3.weight"].shape[0] == 2
    # three other classes: the same count, yet a new head, said with the way to keep the old one
    three = make_image_folder(tmp_path / "three", classes=("dots", "rings", "stripes_vertical"))
    result = _run(*TINY, "--epochs", "1", "--data", str(three), "--weights", str(first), "--out", str(tmp_path / "c3"))
    notes = [line for line in result.output.splitlines() if "new head" in line]
    assert result.exit_code == 0 and len(notes) == 1 and "the same number: --keep-head keeps the old head" in notes[0]
    result = _run(*TINY, "--epochs", "1", "--data", str(three), "--weights", str(first), "--keep-head", "--out",
                  str(tmp_path / "k3"))
    assert result.exit_code == 0 and "new head" not in result.output and "--keep-head: keeping the head" in result.output
    assert "--keep-head" in json.loads((tmp_path / "k3" / "run.json").read_text())["command"]
    _expect_error(_run(*TINY, "--data", str(two), "--weights", str(first), "--keep-head"), "--keep-head",
                  "3 classes", "data has 2")


def test_option_errors(image_folder, tmp_path):
    _expect_error(_run(*TINY, "--data", str(image_folder), "--policy", "mobiletl:40"), "only 11 inverted-residual")
    _expect_error(_run(*TINY, "--data", str(image_folder), "--policy", "sparse"), "unknown policy 'sparse'")
    _expect_error(_run(*TINY, "--data", str(image_folder), "--resolution", "8"),
                  "--resolution must be a whole number from 32", "MobileNets downsample 32x")
    _expect_error(_run("--out", str(tmp_path / "none"), "--resume"), "nothing to resume", "without --resume")
    out = tmp_path / "once"
    assert _run(*TINY, "--epochs", "1", "--data", str(image_folder), "--out", str(out)).exit_code == 0
    _expect_error(_run(*TINY, "--data", str(image_folder), "--out", str(out)), "already holds a run", "pass --resume",
                  "choose another --out")  # the library's `resume=True` and `out`, in the command's flags
    result = _run("--out", str(out), "--resume", "--lr", "0.5")
    assert result.exit_code == 2 and "drop --lr" in result.output


def test_builtin_patterns_are_deterministic_and_balanced():
    from edgetl.data import Patterns
    a, b = Patterns(10, seed=3), Patterns(10, seed=3)
    assert all(a[i][0].tobytes() == b[i][0].tobytes() and a[i][1] == b[i][1] for i in range(10))
    assert Patterns(10, seed=4)[0][0].tobytes() != a[0][0].tobytes()
    assert sorted(a[i][1] for i in range(10)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_python_api_train(image_folder, tmp_path):
    result = edgetl.train(model="mobilenet_v3_small", policy="ft:1", data=str(image_folder), weights="none",
                          epochs=1, batch_size=4, resolution=32, out=str(tmp_path / "api"))
    assert result.metrics["epochs"][0]["epoch"] == 1
    assert (tmp_path / "api" / CHECKPOINT).is_file()
    assert (tmp_path / "last").resolve() == (tmp_path / "api").resolve()


def test_library_parameters_read_as_the_commands_flags():
    """The library names its parameters (`name`, `name=value`); the CLI shows the flags the command has."""
    import click

    from edgetl.cli.base import in_flags

    ctx = click.Context(main.commands["train"])
    message = "pass `augment='none'`, lower `batch_size`, or `resume=True`; `edgetl train` and `no_such_option` stay"
    assert in_flags(message, ctx) == ("pass --augment none, lower --batch-size, or --resume; `edgetl train` and "
                                      "`no_such_option` stay")
    assert in_flags(message, None) == message
