"""``edgetl fleet shard|run``: federated fine-tuning across devices."""

from __future__ import annotations

import click

from .base import console, friendly_errors, main


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
    from ..fleet import make_shards

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
@click.option("--eval-data", default=None,
              help="Held-out data the server evaluates whole each round (default: the run's data, its validation split).")
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
    from ..fleet import FleetConfig, Network, Supervision, run_fleet
    from ..ui import FleetTable

    uris = list(device_uris)
    if devices_file:
        uris += [line.strip() for line in open(devices_file) if line.strip() and not line.startswith("#")]
    config = FleetConfig(rounds=rounds, local_steps=local_steps, min_devices=min_devices, fraction=fraction,
                         strategy=strategy, seed=seed, round_timeout=round_timeout,
                         strategy_options={"mu": mu, "eta": server_lr})  # the API checks both, keeps the strategy's own
    network = Network(host=host, address=address, port=port, insecure=insecure, auth=auth)
    with FleetTable(console) as events:
        result = run_fleet(artifacts, uris, out, data=data, device_data=device_data, run=source_run, eval_data=eval_data,
                           config=config, network=network, supervision=Supervision(restarts=restarts), resume=resume,
                           events=events)
    message = result.report["message"]
    console.print(f"global model: {result.out} (fleet.json, fleet.png); {message['bytes_per_device_per_direction']:,} "
                  f"bytes per device per direction, {100 * message['ratio_to_whole_model']:.1f}% of the whole model")
