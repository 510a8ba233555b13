"""The whole loop, as a user runs it, on the Raspberry-Pi-OS-like device (a non-root user behind its own sshd,
the distribution's externally managed Python): train on the laptop, export, `devices setup`, deploy on the
device's own images with a held-out folder judged before and after, classify new images there, make an app's
model from the device's weights, and evaluate that model on the laptop. Every command is the CLI, run from a
working directory with relative paths.

With ``EDGETL_TRANSCRIPT=FILE`` the commands and their output are written to FILE (``docs/loop.md`` is one).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_device_data import CLASSES, cifar, take  # noqa: F401 - cifar is a fixture

CLI = [sys.executable, "-m", "edgetl.cli"]
TRAIN, CAPTURES, TEST, NEW = 120, 500, 60, 4  # images per class: laptop, device, held out on both sides, new


class Session:
    """Runs ``edgetl`` commands in a working directory and keeps a transcript of them."""

    def __init__(self, cwd: Path, uri: str):
        self.cwd, self.uri, self.lines = cwd, uri, []

    def __call__(self, *args: str, timeout: float = 1200) -> str:
        t0 = time.monotonic()
        proc = subprocess.run([*CLI, *args], cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, env={**os.environ, "COLUMNS": "120"})
        shown = " ".join("$PI" if a == self.uri else shlex.quote(a) for a in args)
        output = proc.stdout.replace(self.uri, "$PI").replace(self.uri.split("?")[0], "$PI")
        output = "\n".join(line for line in output.splitlines() if not re.match(r"^W\d{4} .*cuda", line)
                           and "XNNPACK delegate" not in line)
        self.lines += [f"$ edgetl {shown}", output.rstrip(), f"# ({time.monotonic() - t0:.0f} s)", ""]
        assert proc.returncode == 0, output[-3000:]
        return proc.stdout

    def write(self, path: str, intro: str) -> None:
        body = "\n".join(self.lines)
        Path(path).write_text(f"{intro}\n```\n{body}\n```\n")


def monochrome(folder: Path) -> Path:
    """The photographs as the device's camera takes them: grayscale (its images differ from the laptop's)."""
    from PIL import Image

    for path in folder.rglob("*.jpg"):
        Image.open(path).convert("L").save(path, quality=95)
    return folder


def give(pi, src: Path, rel: str) -> str:
    """Copy a folder into the device user's home, owned by that user; returns its path there as ``~/rel``."""
    dest = pi.home / rel
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        os.chown(p, pi.uid, pi.gid)
    return f"~/{rel}"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_whole_loop_on_a_pi_like_device(pi, device_wheels, cifar, tmp_path):  # noqa: F811
    classes = CLASSES[:5]
    work = tmp_path / "work"
    take(cifar, work / "data", {"train": TRAIN}, classes=classes)
    take(cifar, tmp_path / "val", {"test": 20}, classes=classes)  # the laptop's validation split
    shutil.move(tmp_path / "val" / "test", work / "data" / "val")
    monochrome(take(cifar, tmp_path / "device", {"train": CAPTURES, "test": TEST}, classes=classes, offset=TRAIN))
    monochrome(take(cifar, tmp_path / "new", {"test": NEW}, classes=classes, offset=TRAIN + TEST))
    shutil.copytree(tmp_path / "device" / "test", work / "test")  # the same held-out images on the laptop
    shutil.copytree(device_wheels, work / "wheels")
    captures = give(pi, tmp_path / "device" / "train", "captures")
    held_out = give(pi, tmp_path / "device" / "test", "test")
    new = give(pi, tmp_path / "new" / "test", "new")
    pi.offline_pip()  # the device's index is unreachable: setup installs the wheels pushed from here
    uri = pi.uri()
    edgetl = Session(work, uri)

    edgetl("train", "--model", "mobilenet_v3_small", "--policy", "full", "--data", "data", "--resolution", "32",
           "--epochs", "3", "--weights", "none", "--out", "runs/laptop", "--no-progress")
    edgetl("train", "--weights", "runs/laptop", "--policy", "mobiletl:5", "--data", "data", "--resolution", "32",
           "--epochs", "1", "--out", "runs/mobiletl", "--no-progress")
    edgetl("evaluate", "runs/mobiletl", "--data", "test")
    edgetl("export", "runs/mobiletl", "--format", "tflite", "--batch-size", "8", "--out", "artifacts/tflite")
    edgetl("devices", "setup", uri, "--wheels", "wheels")
    edgetl("deploy", "artifacts/tflite", "--device", uri, "--device-data", captures, "--eval-data", held_out,
           "--epochs", "4", "--augment", "flip", "--out", "deploy/pi")
    edgetl("deploy", "artifacts/tflite", "--device", uri, "--predict", new, "--out", "deploy/pi-new")
    edgetl("export", "deploy/pi", "--format", "tflite", "--inference", "--out", "app/tflite")
    edgetl("evaluate", "app/tflite", "--data", "test", "--json", "app-eval.json")

    report = json.loads((work / "deploy" / "pi" / "report.json").read_text())
    on_device = report["eval"]["after"]
    on_laptop = json.loads((work / "app-eval.json").read_text())
    assert on_device["images"] == on_laptop["images"] == TEST * len(classes)
    assert abs(on_device["top1"] - on_laptop["top1"]) <= 0.005
    assert report["device"]["python_bin"].startswith(str(pi.home)) and report["images_left_device"] is False
    predictions = json.loads((work / "deploy" / "pi-new" / "predictions.json").read_text())
    assert len(predictions["predictions"]) == NEW * len(classes)
    assert predictions["weights"].endswith("params.npz")  # what the device learned, not the export's
    assert not list((work / "deploy").rglob("*.jpg"))  # no image came back
    if os.environ.get("EDGETL_TRANSCRIPT"):
        edgetl.write(os.environ["EDGETL_TRANSCRIPT"], INTRO.format(
            before=report["eval"]["before"]["top1"], after=on_device["top1"], laptop=on_laptop["top1"],
            n=on_laptop["images"]))


INTRO = """# The whole loop on a Raspberry-Pi-like device

A transcript of `tests/test_loop.py` (`EDGETL_TRANSCRIPT=docs/loop.md pytest -m slow tests/test_loop.py`) on this
machine. The device is a non-root user behind its own OpenSSH server on 127.0.0.1 whose login PATH finds only
Debian's externally managed `/usr/bin/python3`, as on Raspberry Pi OS Bookworm; its pip reaches no index, so
`devices setup` installs the wheels pushed from here. `$PI` stands for its URI
(`ssh://USER@127.0.0.1:PORT?key=...&known_hosts_file=...`). The data are real CIFAR-10 photographs (five
classes, 32 x 32). The laptop trains on 120 per class in colour (every layer, then MobileTL's top five blocks from
those weights: the policy the device trains with). The device's camera is monochrome: it holds 500 other
photographs per class in grayscale (`~/captures`), 60 per class held out (`~/test`; the laptop's `test/` has the
same files) and 4 new ones per class (`~/new`). MobileNetV3-Small starts from random weights (no ImageNet download
here), so the accuracies are modest; what the loop shows is the device adapting to its own images, and the
accuracy judged, and agreeing, on both sides.

On the device, the held-out accuracy went from {before:.1%} before to {after:.1%} after training there; the
inference export made from the device's weights, evaluated on the laptop on the same {n} images, measures
{laptop:.1%}.
"""
