"""The ``edgetl`` command line: a thin click layer over the Python API.

    edgetl train                        # the built-in default: MobileNetV3-Small, mobiletl:5, patterns data
    edgetl train --model mobilenet_v3_large --policy mobiletl:5 --data ./flowers --weights imagenet
    edgetl models | edgetl policies     # what can be chosen

Errors meant for the user (:class:`~edgetl.errors.EdgeTLError`) print one line and exit with status 2.

Modules: ``base`` (the ``main`` group, one-line errors), ``commands`` (the laptop's), ``evaluate`` (evaluate and
predict), ``devices`` (devices and deploy), ``fleet``; importing each registers its commands.
"""

from . import commands, devices, evaluate, fleet  # noqa: F401 - registers the commands on main
from .base import main

__all__ = ["main"]
