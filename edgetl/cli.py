"""The ``edgetl`` command line: a thin click layer over the Python API.

    edgetl train                        # the built-in default: MobileNetV3-Small, mobiletl:5, patterns data
    edgetl train --model mobilenet_v3_large --policy mobiletl:5 --data ./flowers --weights imagenet
    edgetl models | edgetl policies     # what can be chosen

Errors meant for the user (:class:`~edgetl.errors.EdgeTLError`) print one line and exit with status 2.
"""

from __future__ import annotations

import functools
import sys

import click
from rich.console import Console
from rich.table import Table

from .errors import EdgeTLError
from .models import MODELS
from .policies import POLICIES
from .trainer import TrainConfig, Trainer

console = Console()


def friendly_errors(fn):
    """Turn :class:`EdgeTLError` into ``error: <message>`` and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeTLError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgetl")
def main():
    """edgetl: on-device transfer learning for MobileNets (MobileTL)."""


_DEFAULTS = TrainConfig()


def _command_line(ctx: click.Context) -> list[str]:
    """The command as the user gave it, rebuilt from the options click parsed from the command line."""
    words = ["edgetl", ctx.info_name]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name).name != "COMMANDLINE":
            continue
        flag, value = param.opts[0], ctx.params[param.name]
        words += [flag] if getattr(param, "is_flag", False) else [flag, str(value)]
    return words


@main.command()
@click.option("--model", default=_DEFAULTS.model, show_default=True, type=click.Choice(list(MODELS)))
@click.option("--policy", default=_DEFAULTS.policy, show_default=True, help="full, last, bn+last, bias, ft:K, mobiletl:K")
@click.option("--data", default=_DEFAULTS.data, show_default=True, help="ImageFolder directory, or 'patterns' (built in)")
@click.option("--weights", default=_DEFAULTS.weights, show_default=True,
              help="auto (ImageNet if obtainable, else random), imagenet, none, or a .pth path")
@click.option("--epochs", default=_DEFAULTS.epochs, show_default=True, type=int)
@click.option("--batch-size", default=_DEFAULTS.batch_size, show_default=True, type=int)
@click.option("--resolution", default=_DEFAULTS.resolution, show_default=True, type=int)
@click.option("--lr", default=None, type=float, help="learning rate [default: 0.05 for sgd, 0.001 for adamw]")
@click.option("--optimizer", default=_DEFAULTS.optimizer, show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--seed", default=_DEFAULTS.seed, show_default=True, type=int)
@click.option("--hardswish-threshold", default=_DEFAULTS.hardswish_threshold, show_default=True, type=float,
              help="threshold of MobileTL's Hard-Swish backward mask 1[x > t]")
@click.option("--workers", default=_DEFAULTS.workers, show_default=True, type=int, help="data loader processes")
@click.option("--out", default=None, help="run directory [default: runs/<model>-<policy>-<time>; runs/last links it]")
@click.option("--resume", is_flag=True, help="continue the interrupted run in --out")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.pass_context
@friendly_errors
def train(ctx, resume, no_progress, **options):
    """Fine-tune a MobileNet under a training policy."""
    if resume:
        if not options["out"]:
            raise click.UsageError("--resume needs --out DIR, the run to continue")
        given = [k for k in options if k != "out" and ctx.get_parameter_source(k).name == "COMMANDLINE"]
        if given:
            raise click.UsageError(
                f"--resume takes the run's own settings; drop {', '.join('--' + g.replace('_', '-') for g in given)}"
            )
    config = TrainConfig(**options)
    result = Trainer(config, resume=resume, progress=not no_progress, command=_command_line(ctx)).fit()
    last = result.metrics["epochs"][-1]
    console.print(f"[green]done[/]: val acc {last['val_acc']:.3f}, run in {result.out}")


@main.command()
def models():
    """List the supported models."""
    from .models import create_model, inverted_residual_blocks

    table = Table("model", "inverted-residual blocks", "parameters")
    for name in MODELS:
        m = create_model(name)
        table.add_row(name, str(len(inverted_residual_blocks(m))), f"{sum(p.numel() for p in m.parameters()):,}")
    console.print(table)


@main.command()
def policies():
    """List the training policies."""
    table = Table("policy", "what trains")
    for name, cls in POLICIES.items():
        spec = f"{name}:K" if "k" in cls.__dataclass_fields__ else name
        table.add_row(spec, cls.summary)
    console.print(table)


if __name__ == "__main__":
    main()
