"""Command-line options generated from a settings dataclass, so each setting is declared once (its field).

    @main.command()
    @dataclass_options(TrainConfig)       # --model, --batch-size, ... in the fields' order
    @click.option("--resume", is_flag=True)
    def train(resume, **settings): TrainConfig(**settings)

A field's ``metadata`` gives its ``help``, ``choices`` and ``metavar``; ``cli=False`` leaves it out. A bool field
is a flag; a default other than None (or a flag's) is shown in the help.
"""

from __future__ import annotations

import dataclasses
import typing

import click


def _click_type(annotation):
    """The option's type from the field's: its one non-None type (``float | None`` -> float), else text."""
    kinds = [t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)]
    return kinds[0] if len(kinds) == 1 else str


def dataclass_options(cls):
    """A decorator adding one click option per field of the dataclass ``cls``, named ``--field-name``."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]

    def decorate(fn):
        for f in reversed(fields):  # click lists options in decorator order, and the last applied comes first
            meta, kind = f.metadata, _click_type(hints[f.name])
            flag = kind is bool
            choices = meta.get("choices")
            fn = click.option(f"--{f.name.replace('_', '-')}", default=f.default, help=meta.get("help"),
                              is_flag=flag, show_default=not flag and f.default is not None, metavar=meta.get("metavar"),
                              type=None if flag else click.Choice(choices) if choices else kind)(fn)
        return fn

    return decorate
