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

from .errors import ConfigError, EdgeTLError
from .exporters import EXPORTERS
from .job import TrainConfig, trainer_from_config
from .models import MODELS
from .policies import POLICIES
from .profile import build_report, fit_policies, largest_batch, parse_size, plot, print_report, write_csv, write_json
from .profile.budget import DEVICE_PROFILES
from .profile.report import mib
from .ui import ProgressBar, print_checklist, show_notes

console = Console()
if not console.is_terminal:  # piped or captured output: do not squeeze tables into 80 columns
    console = Console(width=160)


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
    show_notes(Console(stderr=True))


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


def parse_prefix_batch(value: str | None) -> int | str | None:
    """``--prefix-batch``: None, "auto" or a whole number (checked against the batch by the trainer)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--prefix-batch must be 'auto' or a whole number, got {value!r}") from None


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
@click.option("--augment", default=_DEFAULTS.augment, show_default=True, type=click.Choice(["standard", "none"]),
              help="training transform: random crop and flip, or none (fixed inputs, needed by --cache-features)")
@click.option("--prefix-batch", default=None, metavar="N|auto",
              help="run the frozen prefix N samples at a time (auto: the largest within the trained region's peak)")
@click.option("--cache-features", is_flag=True, help="store the frozen prefix's outputs in epoch 1, reuse them after")
@click.option("--cache-dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]))
@click.option("--cache-dir", default=None, help="where a disk cache goes [default: the run directory]")
@click.option("--cache-budget-mb", default=_DEFAULTS.cache_budget_mb, show_default=True, type=float,
              help="a larger cache goes to a memory-mapped file on disk")
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
    result = trainer_from_config(TrainConfig(**options), resume, [bar], _command_line(ctx)).fit()
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
    if batch_size < 1 or resolution < 32:
        raise click.UsageError("--batch-size must be at least 1 and --resolution at least 32")
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
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(sorted(EXPORTERS)),
              help="onnx: ONNX Runtime training artifacts; tflite: one .tflite with train/infer signatures")
@click.option("--out", default=None, help="artifact directory [default: artifacts/<format>]")
@click.option("--no-validate", is_flag=True, help="skip the parity check against PyTorch")
@click.option("--steps", default=3, show_default=True, type=int, help="training steps in the parity check")
@click.option("--batch-size", default=4, show_default=True, type=int,
              help="batch size of the reference batches; for tflite also the fixed training batch size")
@click.option("--lr", default=None, type=float, help="learning rate on the device [default: the run's]")
@friendly_errors
def export_cmd(run, fmt, out, no_validate, steps, batch_size, lr):
    """Export a trained run for on-device training, and prove it trains like PyTorch."""
    from .exporters import ValidationFailed, export

    out = out or f"artifacts/{fmt}"
    err = Console(stderr=True)
    try:
        result = export(run, fmt, out, validate=not no_validate, steps=steps, batch_size=batch_size, lr=lr,
                        log=lambda message: err.print(message, soft_wrap=True))
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
    from .run import import_weights

    path = import_weights(run, params, out)
    console.print(f"wrote {path}; use it with --weights {path}")


@main.group()
def devices():
    """Probe and set up devices (ssh://, adb://, local://)."""


@devices.command("probe")
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@friendly_errors
def devices_probe(uri, as_json):
    """Arch, OS, RAM, CPUs, Python and runtimes of a device."""
    import json as _json

    from .devices import connect

    with connect(uri) as device:
        info = device.probe()
    if as_json:
        click.echo(_json.dumps(info.as_dict(), indent=2))
        return
    table = Table(title=uri, show_header=False)
    for key, value in [("model / OS", f"{info.model} {info.os}".strip()), ("arch", info.arch), ("kernel", info.kernel),
                       ("CPUs", str(info.cpus)),
                       ("RAM", f"{info.mem_available_bytes / 2**20:,.0f} MiB available of {info.mem_total_bytes / 2**20:,.0f}"),
                       ("disk", f"{info.free_bytes / 2**20:,.0f} MiB free in {info.workdir}"),
                       ("Python", f"{info.python} at {info.python_bin}" if info.python else "none"),
                       ("environment", _python_source(uri, info)),
                       ("runtimes", ", ".join(f"{k} {v}" for k, v in info.runtimes.items()) or "none")]:
        table.add_row(key, value)
    console.print(table)


def _python_source(uri, info) -> str:
    """Which interpreter deploy will use, and why (the probe's choice)."""
    from .devices.runtimes import setup_command

    if info.python_source == "uri":
        return f"{info.env or 'no virtual environment'} (named by ?python=)"
    if info.python_source == "setup":
        return f"{info.env} (made by `edgetl devices setup`; deploy uses it)"
    return f"none: deploy would use the login PATH's Python; `{setup_command(uri)}` makes one"


@devices.command("setup")
@click.argument("uri")
@click.option("--runtime", default="auto", show_default=True, type=click.Choice(["auto", "tflite", "onnx"]),
              help="auto: tflite (ai-edge-litert) where it has wheels, else onnx (onnxruntime-training)")
@click.option("--python", "python", help="the device's Python to build from [default: ?python=, else python3]")
@click.option("--wheels", type=click.Path(file_okay=False),
              help="install from the wheels in DIR, pushed from here (the device needs no index); an empty DIR is "
                   "filled for the device first")
@click.option("--force", is_flag=True, help="rebuild the environment even if it is set up")
@click.option("--fleet", is_flag=True, help="also install Flower (flwr), for `edgetl fleet run`")
@friendly_errors
def devices_setup(uri, runtime, python, wheels, force, fleet):
    """Make a Python environment on a device with the training runtime, check it, and record it for deploy."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from .devices.setup import setup_device

    err = Console(stderr=True)
    bar = Progress(TextColumn("push wheels"), BarColumn(), DownloadColumn(), console=err, transient=True)
    task = None

    def on_progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("push", total=total)
        bar.update(task, completed=done)

    try:
        # indented lines are the device's pip talking: dimmed under edgetl's own lines
        record = setup_device(uri, runtime, python, wheels, force, on_event=lambda line: err.print(
            line, style="dim" if line.startswith(" ") else None, markup=False, highlight=False, soft_wrap=True),
            on_progress=on_progress, fleet=fleet)
    finally:
        if task is not None:
            bar.stop()
    if not record.get("already"):
        runtimes = ", ".join(f"{k} {v}" for k, v in record["runtimes"].items())
        fleet_note = f", Flower {record['fleet']}" if record.get("fleet") else ""
        console.print(f"[green]ready[/]: {uri} trains with {runtimes}{fleet_note} in {record['env']}", soft_wrap=True)


@devices.command("wheels")
@click.option("--platform", "platform_", required=True,
              help="the device's: aarch64 (Raspberry Pi OS 64-bit), x86_64, macos-arm64")
@click.option("--python", "python", default="3.11", show_default=True, help="the device's Python (Bookworm: 3.11)")
@click.option("--glibc", default="2.36", show_default=True, help="the device's glibc (Bookworm: 2.36)")
@click.option("--runtime", default="tflite", show_default=True, type=click.Choice(["tflite", "onnx"]))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for the wheels")
@click.option("--fleet", is_flag=True, help="Flower's wheels too (devices setup --fleet)")
@friendly_errors
def devices_wheels(platform_, python, glibc, runtime, out, fleet):
    """Download here the wheels a device without internet needs (then: devices setup DEVICE --wheels DIR)."""
    from .devices.setup import download_wheels

    system, _, machine = platform_.lower().rpartition("-")
    system = {"": "Linux", "linux": "Linux", "macos": "Darwin", "macosx": "Darwin"}.get(system, system)
    machine = {"amd64": "x86_64", "arm64": "aarch64" if system == "Linux" else "arm64"}.get(machine, machine)
    err = Console(stderr=True)
    paths = download_wheels(out, system, machine, python, glibc, [runtime],
                            on_event=lambda line: err.print(line, style="dim", markup=False, highlight=False), fleet=fleet)
    console.print(f"[green]{len(paths)} wheels[/] in {out}: `edgetl devices setup DEVICE --wheels {out}`")


@devices.command("clean")
@click.argument("uri")
@click.option("--keep-results", is_flag=True, help="keep the training runs, remove only the bundles' files")
@friendly_errors
def devices_clean(uri, keep_results):
    """Remove the bundles edgetl pushed to a device."""
    from .devices import connect

    with connect(uri) as device:
        removed = device.clean(keep_results)
    console.print(f"removed {len(removed)} bundle(s) from {uri}")


@main.command()
@click.argument("artifacts", type=click.Path())
@click.option("--device", "device_uri", required=True, help="ssh://user@host, adb://SERIAL, adb://HOST:PORT, local://")
@click.option("--steps", default=None, type=int, help="optimizer steps [default: 50, unless --epochs]")
@click.option("--epochs", default=None, type=int, help="passes over the training images (instead of --steps)")
@click.option("--data", default=None, help="images on this machine, pushed: an ImageFolder (packed as a uint8 shard) "
                                           "or a .npz [default: the reference batches]")
@click.option("--device-data", default=None, metavar="PATH",
              help="an ImageFolder already on the device (PATH/<class>/*, or PATH/train + PATH/val): decoded and "
                   "streamed there, never sent back")
@click.option("--val-split", default=None, type=float,
              help="fraction of a flat ImageFolder held out and evaluated each epoch (a train/val layout uses its val)")
@click.option("--augment", type=click.Choice(["none", "flip"]), default="none", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int, help="shuffling, the validation split, augmentation")
@click.option("--shard-size", default=None, type=int, help="most images per split packed from --data [default: all]")
@click.option("--prefix-batch", default="auto", show_default=True,
              help="micro-batch of the frozen prefix on the device (1..batch), or auto")
@click.option("--cache-features", is_flag=True,
              help="compute the frozen prefix's features in the first epoch and reuse them (needs --augment none)")
@click.option("--cache-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--out", default=None, help="where results land [default: deploy/<time>]")
@click.option("--batch-size", default=None, type=int, help="[default: the export's fixed batch (tflite), else 8]")
@click.option("--lr", default=None, type=float, help="learning rate [default: the export's]")
@click.option("--verify", is_flag=True, help="repeat the export's parity check on the device first")
@click.option("--force", is_flag=True, help="deploy even if the predicted memory exceeds the device's")
@click.option("--timeout", default=3600, show_default=True, type=float, help="seconds for the training run")
@friendly_errors
def deploy(artifacts, device_uri, steps, epochs, data, device_data, val_split, augment, seed, shard_size, prefix_batch,
           cache_features, cache_dtype, out, batch_size, lr, verify, force, timeout):
    """Push an export to a device, train there, and bring back metrics and weights."""
    from .devices.deploy import deploy as run_deploy
    from .ui import DeployProgress, print_deploy_report

    err = Console(stderr=True)
    with DeployProgress(err) as events:
        report = run_deploy(artifacts, device_uri, steps=steps, data=data, out=out, batch_size=batch_size, lr=lr,
                            verify=verify, force=force, timeout=timeout, events=events, device_data=device_data,
                            epochs=epochs, val_split=val_split, augment=augment, seed=seed, shard_size=shard_size,
                            prefix_batch=prefix_batch, cache_features=cache_features, cache_dtype=cache_dtype)
    print_deploy_report(report, err)


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


@main.group()
def fleet():
    """Federated fine-tuning across many devices, on Flower."""


@fleet.command("shard")
@click.argument("data")
@click.option("--devices", "n", type=int, required=True, help="How many shards (one per device).")
@click.option("--iid/--by-class", default=True, help="Deal images at random, or grouped by class (non-IID).")
@click.option("--resolution", type=int, required=True, help="The model's input size (the export's).")
@click.option("--count", type=int, default=None, help="Images in all (default: every image; patterns: 64).")
@click.option("--seed", type=int, default=0)
@click.option("--out", default="shards", show_default=True)
@friendly_errors
def fleet_shard(data, n, iid, resolution, count, seed, out):
    """Split DATA (an ImageFolder or patterns) into one .npz shard per device."""
    from .fleet import make_shards

    for path in make_shards(data, n, out, resolution, by_class=not iid, count=count, seed=seed):
        console.print(str(path))


@fleet.command("run")
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False))
@click.option("--device", "device_uris", multiple=True, help="A device URI (repeatable).")
@click.option("--devices", "devices_file", type=click.Path(exists=True, dir_okay=False),
              help="A file of device URIs, one a line.")
@click.option("--data", default=None, help="Shards pushed from here: a directory of .npz, one per device.")
@click.option("--device-data", default=None, help="An ImageFolder on each device (never leaves it).")
@click.option("--rounds", type=int, default=10, show_default=True)
@click.option("--local-steps", type=int, default=20, show_default=True)
@click.option("--min-devices", type=int, default=None, help="Devices that must answer for a round to count (default: all).")
@click.option("--fraction", type=float, default=1.0, show_default=True, help="Fraction of devices sampled per round.")
@click.option("--strategy", type=click.Choice(["fedavg", "fedadam", "fedprox"]), default="fedavg", show_default=True)
@click.option("--mu", type=float, default=0.01, show_default=True, help="FedProx's proximal weight.")
@click.option("--server-lr", type=float, default=0.01, show_default=True, help="FedAdam's server learning rate.")
@click.option("--run", "source_run", default=None, help="The run the artifacts came from (default: the manifest's).")
@click.option("--eval-data", default=None, help="Held-out data for server evaluation (default: the run's data).")
@click.option("--round-timeout", type=float, default=600, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the SuperLink listens (0.0.0.0: all).")
@click.option("--address", default=None, help="HOST:PORT devices reach the SuperLink by (default: 127.0.0.1).")
@click.option("--port", type=int, default=None)
@click.option("--insecure", is_flag=True, help="No TLS: for loopback tests only.")
@click.option("--auth", is_flag=True, help="SuperNode authentication: only the keys edgetl makes for these devices join.")
@click.option("--resume", is_flag=True, help="Continue a stopped fleet run from its last saved round.")
@click.option("--restarts", type=int, default=5, show_default=True,
              help="Restarts of a device's SuperNode that died, per device (0: none), 5 s apart and doubling; "
                   "it rejoins at the next round.")
@click.option("--seed", type=int, default=0)
@click.option("--out", default="runs/fleet", show_default=True)
@friendly_errors
def fleet_run(artifacts, device_uris, devices_file, data, device_data, rounds, local_steps, min_devices, fraction, strategy,
              mu, server_lr, source_run, eval_data, round_timeout, host, address, port, insecure, auth, resume, restarts, seed,
              out):
    """Fine-tune ARTIFACTS across devices: a SuperLink here, a SuperNode on each device, FedAvg by default."""
    from .fleet import run_fleet
    from .ui import FleetTable

    uris = list(device_uris)
    if devices_file:
        uris += [line.strip() for line in open(devices_file) if line.strip() and not line.startswith("#")]
    options = {"mu": mu} if strategy == "fedprox" else {"eta": server_lr} if strategy == "fedadam" else {}
    with FleetTable(console) as events:
        result = run_fleet(artifacts, uris, out, data=data, device_data=device_data, rounds=rounds,
                           local_steps=local_steps, min_devices=min_devices, fraction=fraction, strategy=strategy,
                           strategy_options=options, run=source_run, eval_data=eval_data, round_timeout=round_timeout,
                           host=host, address=address, port=port, insecure=insecure, auth=auth, resume=resume, seed=seed,
                           restarts=restarts, events=events)
    message = result.report["message"]
    console.print(f"global model: {result.out} (fleet.json, fleet.png); {message['bytes_per_device_per_direction']:,} "
                  f"bytes per device per direction, {100 * message['ratio_to_whole_model']:.1f}% of the whole model")


@main.command()
@click.option("--model", default="mobilenet_v2", show_default=True, type=click.Choice(list(MODELS)))
@click.option("--policy", "policies", multiple=True, help="repeatable [default: full, ft:5, mobiletl:5]")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(["pytorch", "onnx", "tflite"]),
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
    from .benchmark import BenchmarkConfig, plot, run_benchmark, write_json
    from .ui import print_benchmark

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


if __name__ == "__main__":
    main()
