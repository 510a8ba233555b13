"""``edgetl devices probe|setup|wheels|clean`` and ``edgetl deploy``: a device, from first contact to training."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..formats import runtimes
from .base import FormatChoice, console, friendly_errors, main, parse_prefix_batch


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

    from ..devices import connect

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
    from ..devices.runtime_packages import setup_command

    if info.python_source == "uri":
        return f"{info.env or 'no virtual environment'} (named by ?python=)"
    if info.python_source == "setup":
        return f"{info.env} (made by `edgetl devices setup`; deploy uses it)"
    return f"none: deploy would use the login PATH's Python; `{setup_command(uri)}` makes one"


@devices.command("setup")
@click.argument("uri")
@click.option("--runtime", default="auto", show_default=True, type=FormatChoice(("auto",), deployable=True, sort=False),
              help="auto: the first of " + ", ".join(f"{r.option} ({r.name})" for r in runtimes().values())
              + " that has wheels for the device")
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

    from ..devices.setup import setup_device

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
@click.option("--runtime", default=next(iter(runtimes().values())).option, show_default=True,
              type=FormatChoice(deployable=True, sort=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for the wheels")
@click.option("--fleet", is_flag=True, help="Flower's wheels too (devices setup --fleet)")
@friendly_errors
def devices_wheels(platform_, python, glibc, runtime, out, fleet):
    """Download here the wheels a device without internet needs (then: devices setup DEVICE --wheels DIR)."""
    from ..devices.setup import download_wheels

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
    from ..devices import connect

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
@click.option("--eval-data", default=None, metavar="PATH",
              help="an ImageFolder on the device evaluated there before and after training (accuracy, confusion)")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default=None,
              help="learning rate over the planned steps [default: the run's, as the export records it]")
@click.option("--predict", multiple=True, metavar="PATH",
              help="classify images on the device (files or folders there) with --weights; trains nothing")
@click.option("--evaluate", default=None, metavar="PATH",
              help="evaluate --weights on an ImageFolder on the device (accuracy, confusion); trains nothing")
@click.option("--weights", default="latest", show_default=True,
              help="for --predict/--evaluate: latest (the newest training of this export on the device), export "
                   "(its own weights), or a deploy result / params.npz here (pushed)")
@click.option("--top-k", default=3, show_default=True, type=int, help="classes per image (--predict)")
@click.option("--out", default=None, help="where results land [default: deploy/<time>]")
@click.option("--batch-size", default=None, type=int, help="[default: the export's fixed batch (tflite), else 8]")
@click.option("--lr", default=None, type=float, help="learning rate [default: the export's]")
@click.option("--verify", is_flag=True, help="repeat the export's parity check on the device first")
@click.option("--force", is_flag=True, help="deploy even if the predicted memory exceeds the device's")
@click.option("--timeout", default=3600, show_default=True, type=float, help="seconds for the training run")
@friendly_errors
def deploy(artifacts, device_uri, steps, epochs, data, device_data, val_split, augment, seed, shard_size, prefix_batch,
           cache_features, cache_dtype, eval_data, schedule, predict, evaluate, weights, top_k, out, batch_size, lr,
           verify, force, timeout):
    """Push an export to a device, train there, and bring back metrics and weights; or classify (--predict) or
    evaluate (--evaluate) images there with what it learned."""
    from ..devices.deploy import deploy as run_deploy
    from ..ui import DeployProgress, print_deploy_report

    err = Console(stderr=True)
    prefix_batch = parse_prefix_batch(prefix_batch)
    with DeployProgress(err) as events:
        result = run_deploy(artifacts, device_uri, steps=steps, data=data, out=out, batch_size=batch_size, lr=lr,
                            verify=verify, force=force, timeout=timeout, events=events, device_data=device_data,
                            epochs=epochs, val_split=val_split, augment=augment, seed=seed, shard_size=shard_size,
                            prefix_batch=prefix_batch, cache_features=cache_features, cache_dtype=cache_dtype,
                            eval_data=eval_data, schedule=schedule, predict=list(predict) or None, evaluate=evaluate,
                            weights=weights, top_k=top_k)
    print_deploy_report(result, console if result.mode != "train" else err)
