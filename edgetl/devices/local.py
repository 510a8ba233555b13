"""The laptop itself as a device: ``local://`` (work directory ``~/.edgetl/device``) or ``local:///path``.

Useful to try a bundle and its runner exactly as a device would run them, without a device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from .base import Device
from .stream import run_streaming


class LocalDevice(Device):
    scheme = "local"

    def __init__(self, uri: str):
        path = urlparse(uri).path
        super().__init__(uri, path if path not in ("", "/") else str(Path.home() / ".edgetl" / "device"))

    def run(self, command, timeout=600, on_line=None):
        proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.workdir if os.path.isdir(self.workdir) else None)
        return run_streaming(proc, timeout, on_line, self.uri)

    def push_file(self, local, remote, on_bytes=None):
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, remote)
        if on_bytes:
            on_bytes(Path(local).stat().st_size)

    def resolve(self, path):
        """This computer is the device: a relative path is from the working directory, as for any local path."""
        return os.path.abspath(os.path.expanduser(path))

    def pull_file(self, remote, local):
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)

