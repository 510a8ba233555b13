"""The laptop's commands: ``train``, ``profile``, ``export``, ``import-weights``, ``benchmark``, ``models``,
``policies``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..formats import DEFAULT, FORMATS
from ..job import TrainConfig, trainer_from_config
from ..models import MODELS
from ..policies import POLICIES
from ..profile import build_report, fit_policies, largest_batch, parse_size, plot, print_report, write_csv, write_json
from ..profile.budget import DEVICE_PROFILES
from ..ui import ProgressBar, print_checklist
from ..units import mib
from .base import FormatChoice, command_line, console, friendly_errors, main, parse_prefix_batch
from .options import dataclass_options


@main.command()
@dataclass_options(TrainConfig)
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
    options["prefix_batch"] = parse_prefix_batch(options["prefix_batch"])
    bar = ProgressBar(Console(stderr=True), enabled=not no_progress)
    result = trainer_from_config(TrainConfig(**options), resume, [bar], command_line(ctx)).fit()
    last = result.history[-1]
    console.print(f"[green]done[/]: val acc {last['val_acc']:.3f}, run in {result.out}")


@main.command()
@click.option("--model", default="mobilenet_v2", show_default=True, type=click.Choice(list(MODELS)))
@click.option("--policy", "policies", multiple=True, help="repeatable [default: full, ft:5, mobiletl:5]")
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--resolution", default=224, show_default=True, type=int)
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "sgd-nomomentum", "adamw"]))
@click.option("--num-classes", default=10, show_default=True, type=int, help="classes of the new head")
@click.option("--measure", is_flag=True, help="also measure saved bytes, peak RSS and step time (fresh process)")
@click.option("--layers", is_flag=True, help="print every layer")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the report as JSON")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write one row per layer as CSV")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write a PNG of memory per block")
@click.option("--budget", help="memory budget, e.g. 64MiB or 1.5GB: report what fits")
@click.option("--device-profile", type=click.Choice(list(DEVICE_PROFILES)), help="budget of a known device")
@friendly_errors
def profile(model, policies, batch_size, resolution, optimizer, num_classes, measure, layers, json_path, csv_path,
            plot_path, budget, device_profile):
    """Memory and FLOPs of a training step, per layer and per policy, analytic and measured."""
    policies = list(policies) or ["full", "ft:5", "mobiletl:5"]
    if budget or device_profile:
        if budget and device_profile:
            raise click.UsageError("give --budget or --device-profile, not both")
        limit = parse_size(budget) if budget else DEVICE_PROFILES[device_profile].usable_bytes
        _print_fit(model, policies, limit, batch_size, resolution, optimizer, num_classes)
        return
    report = build_report(model, policies, batch_size, resolution, optimizer, num_classes, measure)
    print_report(report, console, layers=layers)
    for path, write in ((json_path, write_json), (csv_path, write_csv), (plot_path, plot)):
        if path:
            write(report, path)
            console.print(f"wrote {path}")


def _print_fit(model, policies, limit, batch_size, resolution, optimizer, num_classes):
    whole = fit_policies(model, limit, batch_size, resolution, optimizer, policies, num_classes)
    fit = fit_policies(model, limit, batch_size, resolution, optimizer, policies, num_classes, prefix_batch="auto")
    table = Table(title=f"{model}, batch {batch_size}, {resolution}x{resolution}: budget {mib(limit)} MiB "
                        f"(prefix streamed at the chosen --prefix-batch)")
    table.add_column("policy")
    table.add_column("unstreamed MiB", justify="right")
    table.add_column("prefix batch", justify="right")
    table.add_column("predicted MiB", justify="right")
    table.add_column("fits")
    for spec in policies:
        table.add_row(spec, mib(whole.predicted[spec]), str(fit.prefix_batch[spec] or "-"), mib(fit.predicted[spec]),
                      "[green]yes[/]" if fit.fits(spec) else "[red]no[/]")
    console.print(table)
    if fit.largest_k is None:
        console.print(f"no mobiletl:K fits at batch {batch_size}; lower --batch-size or --resolution")
    else:
        console.print(f"largest K that fits: [bold]mobiletl:{fit.largest_k}[/] "
                      f"({mib(fit.predicted[f'mobiletl:{fit.largest_k}'])} MiB)")
    for spec in policies:
        n = largest_batch(model, spec, limit, resolution, optimizer, num_classes=num_classes, prefix_batch="auto")
        console.print(f"largest batch size for {spec}: [bold]{n}[/]" if n else f"{spec} does not fit even at batch 1")


@main.command("export")
@click.argument("run", type=click.Path(), metavar="SOURCE")
@click.option("--format", "fmt", default=DEFAULT, show_default=True, type=FormatChoice(),
              help="; ".join(f"{n}: {f.summary}" for n, f in sorted(FORMATS.items())))
@click.option("--out", default=None, help="artifact directory [default: artifacts/<format>]")
@click.option("--no-validate", is_flag=True, help="skip the parity check against PyTorch")
@click.option("--steps", default=3, show_default=True, type=int, help="training steps in the parity check")
@click.option("--batch-size", default=4, show_default=True, type=int,
              help="batch size of the reference batches; for tflite also the fixed training batch size")
@click.option("--lr", default=None, type=float, help="learning rate on the device [default: the run's]")
@click.option("--inference", is_flag=True,
              help="a standalone model for apps instead: the trained weights as constants, no training signatures")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="with --inference: post-training integer quantization calibrated on --calibration [default: fp32]")
@click.option("--calibration", type=click.Path(), default=None,
              help="images the int8 quantization calibrates on (a folder; class folders give the accuracy change)")
@click.option("--calibration-images", default=200, show_default=True, type=int,
              help="images from --calibration used to calibrate (the others validate)")
@click.option("--validation-data", type=click.Path(), default=None,
              help="images the inference export is checked on [default: --calibration's others, else the run's data]")
@friendly_errors
def export_cmd(run, fmt, out, no_validate, steps, batch_size, lr, inference, quantize, calibration,
               calibration_images, validation_data):
    """Export a run (or a deploy result's device-trained weights) for on-device training, and prove it trains like
    PyTorch; or, with --inference, as a standalone model for an app."""
    from ..exporters import ValidationFailed, export

    out = out or f"artifacts/{fmt}" + ("-inference" if inference else "")
    err = Console(stderr=True)
    try:
        result = export(run, fmt, out, validate=not no_validate, steps=steps, batch_size=batch_size, lr=lr,
                        log=lambda message: err.print(message, soft_wrap=True), inference=inference, quantize=quantize,
                        calibration=calibration, validation_data=validation_data,
                        calibration_images=calibration_images)
    except ValidationFailed as exc:
        _print_export(exc.result, err)
        raise
    _print_export(result, err)
    console.print(f"[green]exported[/] {run} as {fmt} to {out}")


def _print_export(result, err: Console) -> None:
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    if result.validation is not None:
        print_checklist(result.validation.checks, err, title=f"validation of {result.format} export against PyTorch")


@main.command("import-weights")
@click.argument("run", type=click.Path())
@click.argument("params", type=click.Path())
@click.option("--out", required=True, help="the new checkpoint (.pt)")
@friendly_errors
def import_weights_cmd(run, params, out):
    """Load parameters trained on a device (params.npz) into an edgetl checkpoint."""
    from ..run import import_weights

    path = import_weights(run, params, out)
    console.print(f"wrote {path}; use it with --weights {path}")


@main.command()
def models():
    """List the supported models."""
    from ..models import create_model, inverted_residual_blocks

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


@main.command()
@click.option("--model", default="mobilenet_v2", show_default=True, type=click.Choice(list(MODELS)))
@click.option("--policy", "policies", multiple=True, help="repeatable [default: full, ft:5, mobiletl:5]")
@click.option("--runtime", "runtimes", multiple=True, type=FormatChoice(("pytorch",), deployable=True),
              help="repeatable [default: all three]")
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--resolution", default=224, show_default=True, type=int)
@click.option("--rounds", default=3, show_default=True, type=int, help="interleaved rounds over every cell; medians")
@click.option("--steps", default=3, show_default=True, type=int, help="steps per epoch (runners) and timed steps")
@click.option("--epochs", default=2, show_default=True, type=int, help="runner epochs with the cache (>= 2)")
@click.option("--prefix-batch", default="auto", show_default=True, metavar="N|auto|none")
@click.option("--cache-dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]))
@click.option("--threads", default=None, type=int, help="CPU threads of the runners [default: all]")
@click.option("--device", "device_uri", default=None, help="run the runners on this device (ssh://, adb://, local://)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the report as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write a PNG (needs matplotlib: [plot])")
@friendly_errors
def benchmark(model, policies, runtimes, batch_size, resolution, rounds, steps, epochs, prefix_batch, cache_dtype,
              threads, device_uri, json_path, plot_path):
    """Peak RSS, runtime baseline, step time and cached step time per policy and runtime, side by side."""
    from ..benchmark import BenchmarkConfig, plot, run_benchmark, write_json
    from ..ui import print_benchmark

    micro = None if prefix_batch == "none" else parse_prefix_batch(prefix_batch)
    cfg = BenchmarkConfig(model=model, batch=batch_size, resolution=resolution, rounds=rounds, steps=steps,
                          epochs=epochs, prefix_batch=micro, cache_dtype=cache_dtype, device=device_uri,
                          threads=threads)
    if policies:
        cfg.policies = list(policies)
    if runtimes:
        cfg.runtimes = list(runtimes)
    err = Console(stderr=True)
    report = run_benchmark(cfg, log=lambda msg: err.print(f"[dim]{msg}[/]"))
    print_benchmark(report, console)
    if json_path:
        write_json(report, json_path)
        console.print(f"wrote {json_path}")
    if plot_path:
        plot(report, plot_path)
        console.print(f"wrote {plot_path}")
