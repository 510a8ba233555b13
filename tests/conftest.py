"""Shared fixtures: an offline, isolated torch cache and small ImageFolder data sets made on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetl.data import Patterns


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    # Tests never touch the network nor the user's torch cache.
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    torch.manual_seed(0)


def make_image_folder(root, classes=("stripes_horizontal", "stripes_vertical", "checkerboard"), per_class=6, size=32):
    """An ImageFolder of real PNGs drawn by the Patterns generator."""
    gen = Patterns(1, image_size=size)
    for label, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            image = gen.draw(Patterns.classes.index(name), np.random.default_rng([label, i]))
            image.save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")


from .devicefixtures import (adb_peer, adb_server, artifacts, device_wheels, pi, pi_device,  # noqa: E402,F401
                             sshd, tflite_artifacts)  # (fixtures for the device tests)
