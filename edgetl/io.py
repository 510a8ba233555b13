"""Atomic file writes: write to a temporary name in the same directory, then rename into place.

    atomic_save(obj, path)          # torch.save
    atomic_write_json(data, path)
    atomic_write_bytes(data, path)
    with staged_dir(path) as tmp:   # a directory built under a temporary name, renamed into place when whole
        ...
    file_sha256(path)               # checksums of manifests and bundles
    absolute("runs/x")              # a path the user gave, made absolute where a command receives it

A crash mid-write leaves the previous file intact (or none), never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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


def absolute(path: str | os.PathLike | None, *names: str) -> str | None:
    """``path`` made absolute on this computer (``~`` expanded), so that a process started in another directory
    finds it; None and the ``names`` that are no path (a built-in data set, ``auto``) stay as they are."""
    if path is None or str(path) in names:
        return None if path is None else str(path)
    return str(Path(path).expanduser().resolve())


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


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, partial: str = "partial"):
    """Yield a new directory beside ``path`` (``.NAME.partial-XXXX``) to build in; when the block ends without an
    exception it replaces ``path`` (a previous one is removed only then), else it is removed: ``path`` never holds a
    half-built directory. A process killed mid-build leaves only the hidden one, which the next build removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.{partial}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{partial}-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{partial}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
