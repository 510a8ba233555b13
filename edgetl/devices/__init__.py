"""Devices: one module per transport, registered by URI scheme; bundles; deploy; the device runners.

    from edgetl.devices import connect, deploy
    with connect("ssh://pi@raspberrypi.local") as device:
        print(device.probe())
    report = deploy("artifacts/onnx", "adb://192.168.1.20:5555", steps=200, data="./shard")
    setup_device("ssh://pi@raspberrypi.local")          # a checked Python environment with the runtime there

``runner/`` holds the scripts that train on a device with nothing but their runtime and numpy installed.
A new transport is one module with a :class:`~edgetl.devices.base.Device` subclass and one line in ``DEVICES``.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

from .base import Device, DeviceError, DeviceInfo

DEVICES = {
    "local": "edgetl.devices.local:LocalDevice",
    "ssh": "edgetl.devices.ssh:SSHDevice",
    "adb": "edgetl.devices.adb:ADBDevice",
}


def connect(uri: str) -> Device:
    """The device at ``uri`` (``ssh://``, ``adb://``, ``local://``), connected."""
    scheme = urlparse(uri).scheme
    if scheme not in DEVICES:
        raise DeviceError(f"unknown device {uri!r}; use one of: ssh://user@host, adb://SERIAL, adb://HOST:PORT, local://")
    module, cls = DEVICES[scheme].split(":")
    return getattr(importlib.import_module(module), cls)(uri)


def deploy(*args, **kwargs):
    from .deploy import deploy as _deploy

    return _deploy(*args, **kwargs)


def setup_device(*args, **kwargs):
    from .setup import setup_device as _setup

    return _setup(*args, **kwargs)


__all__ = ["DEVICES", "Device", "DeviceError", "DeviceInfo", "connect", "deploy", "setup_device"]
