"""The device runner's interface, both directions: the options it is started with, and the lines it prints.

    options = RunnerOptions(epochs=3, batch_size=8, device_data="/home/pi/captures", val_split=0.1)
    options.args()                      # ['--epochs', '3', '--batch-size', '8', ..., "'/home/pi/my captures'"] quoted
    options.argv()                      # the same, unquoted (for subprocess, no shell)
    options.line()                      # ' --epochs 3 --batch-size 8 ...': what deploy appends to the runner command
    use_args(predict=["/home/pi/new"], evaluate=None, top_k=3, weights="latest")   # --predict / --evaluate
    event = parse_line("step 3/50 loss 0.6931")   # Step(step=3, steps=50, loss='0.6931'); None for other lines
    last_json(result.stdout)            # the runner's last JSON line (--verify, --baseline), or None

The runners in ``edgetl/runtime/`` are separate programs (they import nothing of edgetl) with their own argparse
(``runner_common.parse_args``); this module is the laptop's one description of that command line and of the
progress lines they print, so that deploy, the benchmark and the memory gate never spell a flag or split a line
themselves. ``line()`` gives the same string for the same settings as deploys always did: it names a deploy's run
directory on the device (the hash of the bundle and these arguments), where an interrupted run resumes.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerOptions:
    """How a runner trains; None leaves the runner's default (or the export's: ``lr``, ``schedule``)."""

    epochs: int | None = None  # passes over the training images, or
    steps: int | None = None  # optimizer steps
    batch_size: int = 8
    seed: int = 0  # shuffling, the validation split and augmentation
    augment: str = "none"  # none or flip
    data: str | None = None  # a shard in the bundle (relative to it)
    device_data: str | None = None  # an ImageFolder on the device
    val_split: float | None = None  # of a flat --device-data folder
    eval_data: str | None = None  # an ImageFolder on the device, evaluated before and after
    schedule: str | None = None  # cosine or constant
    lr: float | None = None
    prefix_batch: int | str | None = None  # the frozen prefix's micro-batch; None or "auto": the runner's own choice
    cache_features: bool = False
    cache_dtype: str = "float32"
    threads: int | None = None  # the runtime's CPU threads (default: every core)

    def argv(self) -> list[str]:
        """The runner's arguments, unquoted, in the order deploys have always given them."""
        args = ["--epochs", str(self.epochs)] if self.epochs is not None else ["--steps", str(self.steps)]
        args += ["--batch-size", str(self.batch_size), "--seed", str(self.seed), "--augment", self.augment]
        args += ["--data", self.data] if self.data else []
        args += ["--device-data", self.device_data] if self.device_data else []
        args += ["--val-split", str(self.val_split)] if self.device_data and self.val_split else []
        args += ["--eval-data", self.eval_data] if self.eval_data else []
        args += ["--schedule", self.schedule] if self.schedule else []
        args += ["--lr", str(self.lr)] if self.lr is not None else []
        args += self.prefix_argv()
        args += ["--cache-features", "--cache-dtype", self.cache_dtype] if self.cache_features else []
        args += ["--threads", str(self.threads)] if self.threads else []
        return args

    def prefix_argv(self) -> list[str]:
        """``--prefix-batch N`` when one is set: what the runner's ``--baseline`` needs too (it loads the prefix)."""
        return ["--prefix-batch", str(self.prefix_batch)] if self.prefix_batch not in (None, "", "auto") else []

    def args(self) -> list[str]:
        """:meth:`argv`, each quoted for a shell."""
        return [shlex.quote(a) for a in self.argv()]

    def line(self) -> str:
        """The arguments as deploy appends them to the runner's command (a leading space)."""
        return _line(self.args())

    def prefix_line(self) -> str:
        """:meth:`prefix_argv` as :meth:`line` gives it: what deploy's memory gate adds to ``--baseline``."""
        return _line([shlex.quote(a) for a in self.prefix_argv()])


def _line(args: list[str]) -> str:
    return "".join(f" {a}" for a in args)


def runner_command(bundle_dir: str, python: str, runner: str) -> str:
    """The shell command that starts ``runner`` in its bundle on a device, reading the bundle's artifacts."""
    return f"cd {shlex.quote(bundle_dir)} && {shlex.quote(python)} {runner} --artifacts ."


def use_args(predict: list[str] | None, evaluate: str | None, top_k: int, weights: str) -> str:
    """The arguments of a run that uses what was learned (``--predict`` images, or ``--evaluate`` a folder)."""
    if predict:
        return _line(["--predict", *map(shlex.quote, predict), "--top-k", str(top_k), "--weights", shlex.quote(weights)])
    return _line(["--evaluate", shlex.quote(evaluate), "--weights", shlex.quote(weights)])


# -- what the runner prints -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """``step S/N loss L``: the loss as printed (a string, shown as it is)."""
    step: int
    steps: int
    loss: str


@dataclass(frozen=True)
class Images:
    """``images D/N``: images classified or evaluated so far (``--predict``, ``--evaluate``)."""
    done: int
    total: int


@dataclass(frozen=True)
class Epoch:
    """``epoch E/N loss L [val_acc A val_loss V val_n K] skipped S``; ``record`` as :class:`DeployEvents.epoch` takes it."""
    record: dict


@dataclass(frozen=True)
class Eval:
    """``eval before|after top1 A images N``: accuracy on the device's evaluation images."""
    when: str
    top1: float
    images: int


@dataclass(frozen=True)
class Resume:
    """``resume epoch E step S``: an interrupted run continues."""
    epoch: int
    steps: int


@dataclass(frozen=True)
class Note:
    """``note: ...``: said to the person as it is."""
    text: str


def parse_epoch(line: str) -> dict | None:
    """A runner's ``epoch E/N loss L [val_acc A val_loss V val_n K] skipped S`` line as a record."""
    parts = line.split()
    if len(parts) < 4 or parts[0] != "epoch" or "/" not in parts[1]:
        return None
    done, _, planned = parts[1].partition("/")
    fields = dict(zip(parts[2::2], parts[3::2]))
    try:
        record = {"epoch": int(done), "epochs": int(planned) if planned.isdigit() else None,
                  "train_loss": float(fields["loss"]), "skipped_unreadable": int(fields.get("skipped", 0))}
        if "val_acc" in fields:
            record.update(val_acc=float(fields["val_acc"]), val_loss=float(fields["val_loss"]),
                          val_images=int(fields["val_n"]))
    except (KeyError, ValueError):
        return None
    return record


def parse_line(line: str) -> Step | Images | Epoch | Eval | Resume | Note | None:
    """One line of a runner's output as an event; None for anything else (logs, JSON results)."""
    parts = line.split()
    if len(parts) == 4 and parts[0] == "step" and parts[2] == "loss":
        done, _, total = parts[1].partition("/")
        return Step(int(done), int(total), parts[3])
    if len(parts) == 2 and parts[0] == "images" and "/" in parts[1]:
        done, _, total = parts[1].partition("/")
        return Images(int(done), int(total))
    if parts[:1] == ["epoch"] and (record := parse_epoch(line)):
        return Epoch(record)
    if parts[:1] == ["eval"] and len(parts) == 6:
        return Eval(parts[1], float(parts[3]), int(parts[5]))
    if parts[:1] == ["resume"] and len(parts) == 5:
        return Resume(int(parts[2]), int(parts[4]))
    if parts[:1] == ["note:"]:
        return Note(line)
    return None


def last_json(stdout: str) -> dict | None:
    """The last JSON object a runner printed on a line of its own (``--verify``, ``--baseline``), or None."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
