"""The Flower app bundle (FAB) of a fleet run: ``server_app.py`` runs on the laptop, ``client_app.py`` on devices.

The orchestrator copies this directory into a fresh app directory with a generated ``pyproject.toml`` and
submits it with ``flwr run``. ``client_app.py`` imports nothing of edgetl: it drives the device runner of the
bundle edgetl pushed (the node's ``bundle`` setting), so a device needs only flwr, numpy and the runtime.
"""
