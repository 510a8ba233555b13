"""What every ``edgetl`` command shares: the ``main`` group, the console, one-line errors.

Each command module (``commands``, ``devices``, ``fleet``) adds its commands to :func:`main`;
``edgetl.cli`` imports them all.
"""

from __future__ import annotations

import functools
import re
import sys

import click
from rich.console import Console

from ..errors import ConfigError, EdgeTLError
from ..formats import FORMATS
from ..ui import show_notes

console = Console()
if not console.is_terminal:  # piped or captured output: do not squeeze tables into 80 columns
    console = Console(width=160)


class FormatChoice(click.Choice):
    """The registered formats (:mod:`edgetl.formats`) as choices, read when the command line is parsed or its help
    shown, so a format registered after import is listed too. ``first``: choices before them (``auto``,
    ``pytorch``); ``deployable``: only formats with a device runtime and runner, in the registry's order unless
    ``sort``."""

    def __init__(self, first: tuple[str, ...] = (), deployable: bool = False, sort: bool = True):
        self.first, self.deployable, self.sort = first, deployable, sort
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        names = [n for n, f in FORMATS.items() if not self.deployable or (f.runtime and f.runner)]
        return (*self.first, *(sorted(names) if self.sort else names))

    @choices.setter
    def choices(self, _value) -> None:  # click's __init__ sets it; the registry is the source
        pass


def friendly_errors(fn):
    """Turn :class:`EdgeTLError` into ``error: <message>`` and exit status 2, in the command line's words."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeTLError as exc:
            click.echo(f"error: {in_flags(str(exc), click.get_current_context(silent=True))}", err=True)
            sys.exit(2)

    return wrapper


_PARAMETER = re.compile(r"`(\w+)(?:=([^`]*))?`")
_QUOTES = "'\""


def in_flags(message: str, ctx: click.Context | None) -> str:
    """A library message in the command's words: the library names its parameters as `name` or `name=value`
    (backquoted), and where the command has an option of that name it becomes the flag: `batch_size` ->
    --batch-size, `resume=True` -> --resume, `augment='none'` -> --augment none."""
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)} if ctx else {}

    def flag(m: re.Match) -> str:
        option = options.get(m.group(1))
        if option is None:
            return m.group(0)
        value = m.group(2)
        if value is None or option.is_flag:
            return option.opts[0]
        return f"{option.opts[0]} {value.strip(_QUOTES)}"

    return _PARAMETER.sub(flag, message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgetl")
def main():
    """edgetl: on-device transfer learning for MobileNets (MobileTL)."""
    show_notes(Console(stderr=True))


def command_line(ctx: click.Context) -> list[str]:
    """The command as the user gave it, rebuilt from the options click parsed from the command line."""
    words = ["edgetl", ctx.info_name]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name).name != "COMMANDLINE":
            continue
        flag, value = param.opts[0], ctx.params[param.name]
        words += [flag] if getattr(param, "is_flag", False) else [flag, str(value)]
    return words


def parse_prefix_batch(value: str | None) -> int | str | None:
    """``--prefix-batch``: None, "auto" or a whole number (checked against the batch by the trainer)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--prefix-batch must be 'auto' or a whole number, got {value!r}") from None
