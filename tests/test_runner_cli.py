"""The runner's interface as the laptop sees it (``edgetl.devices.runner_cli``): the options it is started with, read
back by the runner's own argparse; the same argument string deploys always gave (it names the run directory on the
device, where an interrupted run resumes); and the runner's progress lines parsed into events."""

from __future__ import annotations

import shlex

import pytest

from edgetl.devices.runner_cli import (
    Epoch,
    Eval,
    Images,
    Note,
    Resume,
    RunnerOptions,
    Step,
    last_json,
    parse_line,
    runner_command,
    use_args,
)
from edgetl.runtime import runner_common

SETTINGS = [
    dict(steps=50, batch_size=8, seed=0, augment="none"),
    dict(epochs=3, batch_size=4, seed=7, augment="flip", data="shard", lr=0.01, schedule="cosine", prefix_batch=2),
    dict(epochs=2, batch_size=16, seed=1, augment="none", device_data="/home/pi/my captures", val_split=0.1,
         eval_data="/home/pi/test set", prefix_batch="auto", cache_features=True, cache_dtype="float16"),
    dict(steps=5, batch_size=8, seed=0, augment="none", data="shard.npz", val_split=0.2),  # no --device-data: ignored
]


def legacy_args(s: dict) -> str:
    """The runner's arguments as deploy built them by concatenation before RunnerOptions (kept here as the
    reference: the run directory on the device is a hash over this string)."""
    args = f" --epochs {s['epochs']}" if s.get("epochs") is not None else f" --steps {s['steps']}"
    args += f" --batch-size {s['batch_size']} --seed {s['seed']} --augment {s['augment']}"
    args += f" --data {s['data']}" if s.get("data") else ""
    args += f" --device-data {shlex.quote(s['device_data'])}" if s.get("device_data") else ""
    args += f" --val-split {s['val_split']}" if s.get("device_data") and s.get("val_split") else ""
    args += f" --eval-data {shlex.quote(s['eval_data'])}" if s.get("eval_data") else ""
    args += f" --schedule {s['schedule']}" if s.get("schedule") else ""
    args += f" --lr {s['lr']}" if s.get("lr") is not None else ""
    micro = s.get("prefix_batch")
    args += f" --prefix-batch {shlex.quote(str(micro))}" if micro not in (None, "auto") else ""
    args += f" --cache-features --cache-dtype {s.get('cache_dtype', 'float32')}" if s.get("cache_features") else ""
    return args


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_argument_string_is_the_one_deploys_always_gave(settings):
    options = RunnerOptions(**settings)
    assert options.line() == legacy_args(settings)
    assert options.line() == "".join(f" {a}" for a in options.args()) and shlex.split(options.line()) == options.argv()


def _parsed(argv: list[str], monkeypatch):
    """``argv`` as the runner's own argparse reads it (its ``main``, stopped before it runs anything)."""
    seen = {}
    monkeypatch.setattr(runner_common, "_run", lambda args, *rest: seen.setdefault("args", args) and 0)
    assert runner_common.main(argv, "test", None, None, None) == 0
    return seen["args"]


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_runner_reads_back_every_option(settings, monkeypatch):
    options = RunnerOptions(**settings, threads=3)
    args = _parsed(options.argv(), monkeypatch)
    assert (args.epochs, args.steps, args.batch_size, args.seed, args.augment) == \
        (options.epochs, options.steps, options.batch_size, options.seed, options.augment)
    assert (args.data, args.device_data, args.eval_data, args.schedule, args.lr, args.threads) == \
        (options.data, options.device_data, options.eval_data, options.schedule, options.lr, 3)
    assert args.val_split == (options.val_split if options.device_data else None)
    assert args.prefix_batch == str(options.prefix_batch if options.prefix_batch is not None else "auto")
    assert (args.cache_features, args.cache_dtype) == (options.cache_features, options.cache_dtype)
    # the memory gate's --baseline gets the prefix's micro-batch too (it loads the prefix)
    assert _parsed(["--baseline", *options.prefix_argv()], monkeypatch).prefix_batch == args.prefix_batch


def test_use_args_and_the_command_are_quoted_for_the_shell(monkeypatch):
    line = use_args(["/home/pi/new images", "/home/pi/b.jpg"], None, 5, "weights/ab cd.npz")
    args = _parsed(shlex.split(line), monkeypatch)
    assert (args.predict, args.top_k, args.weights) == (["/home/pi/new images", "/home/pi/b.jpg"], 5, "weights/ab cd.npz")
    args = _parsed(shlex.split(use_args(None, "/home/pi/test set", 3, "latest")), monkeypatch)
    assert (args.evaluate, args.weights, args.predict) == ("/home/pi/test set", "latest", None)
    assert shlex.split(runner_command("edgetl/b 1", "/opt/env/bin/python 3", "ort_runner.py")) == \
        ["cd", "edgetl/b 1", "&&", "/opt/env/bin/python 3", "ort_runner.py", "--artifacts", "."]


def test_runner_lines_become_events():
    # the lines as runner_common, runner_eval and runner_fit print them
    assert parse_line("step 3/50 loss 0.6931") == Step(3, 50, "0.6931")
    assert parse_line("images 12/40") == Images(12, 40)
    assert parse_line("epoch 2/5 loss 0.5000 val_acc 0.7500 val_loss 0.6000 val_n 12 skipped 1") == Epoch(
        {"epoch": 2, "epochs": 5, "train_loss": 0.5, "skipped_unreadable": 1, "val_acc": 0.75, "val_loss": 0.6,
         "val_images": 12})
    assert parse_line("epoch 4/- loss 0.2500 skipped 0") == Epoch(
        {"epoch": 4, "epochs": None, "train_loss": 0.25, "skipped_unreadable": 0})
    assert parse_line("eval after top1 0.8125 images 32") == Eval("after", 0.8125, 32)
    assert parse_line("resume epoch 2 step 40") == Resume(2, 40)
    assert parse_line("note: using the feature cache in c (1 MiB, float16)") == \
        Note("note: using the feature cache in c (1 MiB, float16)")
    for other in ("", "loading model", "epoch x/y", "step 1/2 loss", '{"verify": []}'):
        assert parse_line(other) is None


def test_last_json_is_the_last_json_line():
    out = 'note: x\n{"baseline_rss_bytes": 1}\nlog\n{"baseline_rss_bytes": 2}\n'
    assert last_json(out) == {"baseline_rss_bytes": 2}
    assert last_json("no json here\n") is None and last_json("{broken\n") is None
