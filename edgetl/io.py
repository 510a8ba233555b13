"""Atomic file writes: write to a temporary name in the same directory, then rename into place.

    atomic_save(obj, path)          # torch.save
    atomic_write_json(data, path)
    atomic_write_bytes(data, path)
    file_sha256(path)               # checksums of manifests and bundles

A crash mid-write leaves the previous file intact (or none), never a truncated one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_json(data: Any, path: str | os.PathLike) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    _atomic(Path(path), write)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic(Path(path), write)
