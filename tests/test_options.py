"""Options as objects: the trainer's and the fleet's settings are small dataclasses, and their fields by name are
the same settings; a name no object has is refused, naming the ones there are."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from edgetl.errors import ConfigError, FleetError
from edgetl.fleet import Fleet, FleetConfig, Network, Supervision
from edgetl.models import create_model
from edgetl.options import with_overrides
from edgetl.surgery import apply_policy
from edgetl.trainer import Trainer, TrainerOptions


def tiny_data(n=12):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g))


def model():
    return apply_policy(create_model("mobilenet_v3_small", num_classes=3), "last")


def test_trainer_options_by_object_and_by_name_are_the_same():
    data = tiny_data()
    by_object = Trainer(model(), data, options=TrainerOptions(epochs=3, batch_size=4, seed=2, schedule="constant"))
    by_name = Trainer(model(), data, epochs=3, batch_size=4, seed=2, schedule="constant")
    assert by_object.options == by_name.options
    assert (by_name.epochs, by_name.batch_size, by_name.seed, by_name.steps_per_epoch) == (3, 4, 2, 3)
    # a name given beside the object overrides that field only
    mixed = Trainer(model(), data, options=TrainerOptions(epochs=3, batch_size=4), epochs=5)
    assert (mixed.options.epochs, mixed.options.batch_size) == (5, 4)


def test_trainer_refuses_an_unknown_option_and_a_bad_value():
    with pytest.raises(ConfigError, match=r"Trainer takes no option 'epoch'; its options are: .*epochs"):
        Trainer(model(), tiny_data(), epoch=3)
    with pytest.raises(ConfigError, match="unknown schedule 'step'"):
        Trainer(model(), tiny_data(), schedule="step")
    with pytest.raises(ConfigError, match="batch-size must be a whole number from 1"):
        Trainer(model(), tiny_data(), batch_size=0)


def test_fleet_options_sorted_into_their_objects():
    config, network, supervision = with_overrides([FleetConfig(), Network(), Supervision()],
                                                  {"rounds": 3, "port": 9100, "restarts": 1}, "Fleet")
    assert (config.rounds, network.port, supervision.restarts) == (3, 9100, 1)
    assert (config.local_steps, network.host, supervision.watch_s) == (20, "127.0.0.1", 3.0)  # the rest unchanged
    # the server is told the strategy's own options only, and never min_devices (the orchestrator resolves it)
    told = FleetConfig(strategy="fedprox", strategy_options={"mu": 0.1, "eta": 0.5}, min_devices=2).server_options()
    assert told["strategy_options"] == {"mu": 0.1} and "min_devices" not in told and told["rounds"] == 10


def test_fleet_refuses_unknown_options_and_bad_values_before_touching_anything(tmp_path):
    with pytest.raises(ConfigError, match="Fleet takes no option 'round'"):
        Fleet(tmp_path / "none", ["local://"], tmp_path / "out", round=3)
    with pytest.raises(FleetError, match="unknown strategy 'fedsgd'"):
        Fleet(tmp_path / "none", ["local://"], tmp_path / "out", strategy="fedsgd")
    with pytest.raises(FleetError, match="needs TLS"):
        Fleet(tmp_path / "none", ["local://"], tmp_path / "out", network=Network(insecure=True, auth=True))
    assert not (tmp_path / "out").exists()
