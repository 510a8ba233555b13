"""A fleet's options as three small objects: how it trains, where its SuperLink listens, how it keeps devices up.

    from edgetl.fleet import Fleet, FleetConfig, Network, Supervision
    Fleet("artifacts/onnx", devices, "runs/fleet", data="shards/",
          config=FleetConfig(rounds=20, local_steps=10, strategy="fedprox", strategy_options={"mu": 0.01}),
          network=Network(host="0.0.0.0", address="192.168.1.5:9092"), supervision=Supervision(restarts=3))
    Fleet("artifacts/onnx", devices, "runs/fleet", data="shards/", rounds=20)   # any field by name, the same

``FleetConfig`` travels to the server as it is (:meth:`FleetConfig.server_options`); ``Network`` and
``Supervision`` stay with the orchestrator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import FleetError
from ..limits import check_numbers

STRATEGIES = ("fedavg", "fedadam", "fedprox")
#: the strategy options each strategy reads (others given, e.g. by the CLI's defaults, are checked and left out)
STRATEGY_OPTIONS = {"fedavg": (), "fedadam": ("eta", "eta_l", "tau"), "fedprox": ("mu",)}


@dataclass(frozen=True)
class FleetConfig:
    """How the fleet trains: ``rounds`` of ``local_steps`` on each device, aggregated by ``strategy``."""

    rounds: int = 10
    local_steps: int = 20
    min_devices: int | None = None  # None: every device given
    fraction: float = 1.0
    strategy: str = "fedavg"
    strategy_options: dict = field(default_factory=dict)  # fedprox: mu; fedadam/fedyogi: eta (the server's rate)
    eval_size: int | None = 500
    seed: int = 0
    lr: float | None = None
    round_timeout: float = 600
    join_timeout: float = 120
    keep_client_arrays: bool = False

    def check(self) -> None:
        """Every number in its range and a known strategy (one line naming the first that is not)."""
        check_numbers(rounds=self.rounds, local_steps=self.local_steps, min_devices=self.min_devices,
                      fraction=self.fraction, eval_size=self.eval_size, seed=self.seed, lr=self.lr,
                      round_timeout=self.round_timeout, join_timeout=self.join_timeout,
                      mu=self.strategy_options.get("mu"), server_lr=self.strategy_options.get("eta"))
        if self.strategy not in STRATEGIES:
            raise FleetError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")

    def server_options(self) -> dict:
        """What the ServerApp is told: every field but ``min_devices`` (the orchestrator resolves it), and only the
        strategy's own options."""
        options = {k: v for k, v in dataclasses.asdict(self).items() if k != "min_devices"}
        options["strategy_options"] = {k: v for k, v in self.strategy_options.items()
                                       if k in STRATEGY_OPTIONS[self.strategy]}
        return options


@dataclass(frozen=True)
class Network:
    """Where the SuperLink listens (``host``, ``port``: a free one when None), the address devices dial
    (``address``, default 127.0.0.1:port), and its security: TLS unless ``insecure``, node keys with ``auth``."""

    host: str = "127.0.0.1"
    address: str | None = None
    port: int | None = None
    insecure: bool = False
    auth: bool = False

    def check(self) -> None:
        check_numbers(port=self.port)
        if self.auth and self.insecure:
            raise FleetError("SuperNode authentication needs TLS: drop --insecure to use --auth")


@dataclass(frozen=True)
class Supervision:
    """A device's SuperNode that dies is restarted at most ``restarts`` times, ``restart_backoff`` seconds apart and
    doubling, checked every ``watch_s`` seconds."""

    restarts: int = 5
    restart_backoff: float = 5.0
    watch_s: float = 3.0

    def check(self) -> None:
        check_numbers(restarts=self.restarts)
