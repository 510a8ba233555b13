"""The transports, registered by URI scheme, and :func:`connect`, which opens a device by its URI.

    from edgetl.devices.transports import connect
    with connect("ssh://pi@raspberrypi.local") as device:
        device.probe()

A new transport is one module with a :class:`~.base.Device` subclass and one line in ``DEVICES``. (Its own module,
not the package's ``__init__``, so that deploy and setup, which the package re-exports, can import it.)
"""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

from .base import Device, DeviceError

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
