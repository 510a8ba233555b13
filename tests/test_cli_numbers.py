"""Every numeric option of every command, given 0, -1, an absurd value (and NaN where it takes a float): one
``error:`` line naming it and exit 2, never a traceback, a crash or a half-written file.

The walk finds the options from the CLI itself, so a new command or option is covered the day it is added (a
command missing from ``SENTINELS`` fails the test, with what to add). Each command gets arguments that make it
stop early on something else (a missing data folder, run or export), so a value the option accepts ends in
that error instead, and nothing heavy runs: a refused value must be refused before it."""

import math

import click
import pytest
from click.testing import CliRunner

from edgetl.cli import main

#: command -> (arguments that stop it early after its options are checked, what that error says)
SENTINELS = {
    "train": (["--data", "{tmp}/no-data"], "does not exist"),
    "profile": (["--policy", "nonsense"], "unknown policy"),
    "export": (["{tmp}/no-run", "--out", "{tmp}/art"], "no checkpoint.pt"),
    "benchmark": (["--runtime", "pytorch", "--policy", "nonsense"], "unknown policy"),
    "deploy": (["{tmp}/no-art", "--device", "local://{tmp}/dev"], "holds no manifest.json"),
    "fleet shard": (["{tmp}/no-data", "--devices", "2", "--resolution", "32", "--out", "{tmp}/shards"], "does not exist"),
    "fleet run": (["{tmp}", "--out", "{tmp}/fleet"], "holds no manifest.json"),
    "evaluate": (["{tmp}/no-run", "--data", "{tmp}/no-data"], "does not exist"),
    "predict": (["{tmp}/no-run", "{tmp}/no-image.jpg"], "does not exist"),
}
#: values some options accept (the rest refuse 0, -1 and absurd values alike)
ACCEPTS = {"--seed": {"0"}, "--workers": {"0"}, "--restarts": {"0"}, "--cache-budget-mb": {"0"}, "--mu": {"0"},
           "--hardswish-threshold": {"0", "-1"}}
#: options that take a number in a string (N|auto)
NUMERIC_TEXT = {"--prefix-batch"}


def numeric_options(group: click.Group, prefix: str = ""):
    """(command path, its numeric option flag, the option, float?) for every command under ``group``."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from numeric_options(command, path + " ")
            continue
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            is_float = isinstance(param.type, click.types.FloatParamType)
            if is_float or isinstance(param.type, click.types.IntParamType) or param.opts[0] in NUMERIC_TEXT:
                yield path, param.opts[0], is_float


def values(is_float: bool) -> list[str]:
    return ["0", "-1", "1e30", "nan"] if is_float else ["0", "-1", str(10**12)]


def test_every_numeric_option_is_checked_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a command might write by default lands here
    found = list(numeric_options(main))
    commands = {path for path, _, _ in found}
    assert {"train", "profile", "export", "benchmark", "deploy", "fleet run", "fleet shard"} <= commands
    missing = commands - set(SENTINELS)
    assert not missing, f"add the arguments that stop {missing} early to SENTINELS"
    checked = 0
    for path, flag, is_float in found:
        base, stop = SENTINELS[path]
        base = [a.format(tmp=tmp_path) for a in base]
        for value in values(is_float):
            args = list(base)
            if flag in args:  # a required option of the sentinel: the value under test replaces it
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
            result = CliRunner().invoke(main, [*path.split(), *args])
            shown = f"edgetl {path} {' '.join(args)} -> exit {result.exit_code}:\n{result.output}"
            assert result.exit_code == 2 and "Traceback" not in result.output, shown
            assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), shown
            errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1, shown
            refused = value not in ACCEPTS.get(flag, set())
            expected = f"error: {flag} must be" if refused else stop
            assert expected in errors[0], shown
            if refused and value != "nan" and not math.isnan(float(value)):
                assert f"got {value}" in errors[0] or f"got {float(value):g}" in errors[0] \
                    or f"got {int(float(value))}" in errors[0] or f"got {float(value)}" in errors[0], shown
            checked += 1
    assert checked > 100
    assert not (tmp_path / "art").exists() and not (tmp_path / "shards").exists() and not (tmp_path / "fleet").exists()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_export_batch_zero_leaves_nothing(fmt, tmp_path):
    """The issue's own: `export --batch-size 0` answered in one line, and no lone file at --out."""
    from .exportutil import make_run

    run = make_run(tmp_path / "run", "mobilenet_v3_small", "mobiletl:2", resolution=32)
    result = CliRunner().invoke(main, ["export", str(run), "--format", fmt, "--batch-size", "0", "--out",
                                       str(tmp_path / "art")])
    assert result.exit_code == 2 and "error: --batch-size must be a whole number from 1" in result.output, result.output
    assert not (tmp_path / "art").exists()
