"""Federated fine-tuning on Flower across many devices: ``edgetl fleet run`` and ``edgetl fleet shard``.

    from edgetl.fleet import run_fleet, make_shards
    make_shards("patterns", 3, "shards/", resolution=32, by_class=True)
    result = run_fleet("artifacts/tflite", ["ssh://pi@cam-1", "local://"], "runs/fleet", data="shards/", rounds=10)

Modules: ``params`` (which tensors travel), ``shard`` (trial shards), ``fab/`` (the ServerApp and ClientApp),
``server`` (the rounds, in the ServerApp), ``processes`` (SuperLink, SuperNodes), ``certs`` (TLS),
``config`` (a fleet's options: FleetConfig, Network, Supervision), ``orchestrate`` (one fleet run end to end),
``report`` (fleet.json, fleet.png).
"""

from __future__ import annotations

from ..errors import FleetError
from .config import FleetConfig, Network, Supervision
from .orchestrate import Fleet, FleetEvents, FleetResult, run_fleet
from .params import travelling
from .shard import make_shards

__all__ = ["Fleet", "FleetConfig", "FleetError", "FleetEvents", "FleetResult", "Network", "Supervision", "make_shards",
           "run_fleet", "travelling"]
