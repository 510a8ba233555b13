"""Devices: one module per transport, registered by URI scheme; bundles; deploy; the device runners.

    from edgetl.devices import connect, deploy
    with connect("ssh://pi@raspberrypi.local") as device:
        print(device.probe())
    result = deploy("artifacts/onnx", "adb://192.168.1.20:5555", steps=200, data="./shard")   # a DeployResult
    setup_device("ssh://pi@raspberrypi.local")          # a checked Python environment with the runtime there

``runner/`` holds the scripts that train on a device with nothing but their runtime and numpy installed.
A new transport is one module with a :class:`~edgetl.devices.base.Device` subclass and one line in ``DEVICES``
(:mod:`.transports`).
"""

from __future__ import annotations

from .base import Device, DeviceError, DeviceInfo
from .transports import DEVICES, connect


def deploy(*args, **kwargs):
    from .deploy import deploy as _deploy

    return _deploy(*args, **kwargs)


def setup_device(*args, **kwargs):
    from .setup import setup_device as _setup

    return _setup(*args, **kwargs)


__all__ = ["DEVICES", "Device", "DeviceError", "DeviceInfo", "connect", "deploy", "setup_device"]
