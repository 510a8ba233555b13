"""A cache of the frozen prefix's outputs, one row per training sample, reused by every epoch after the first.

    key = cache_key(model, policy="mobiletl:5", data=identity, resolution=96, dtype="float16")
    cache = FeatureCache.open_or_create(count=len(ds), shape=(96, 14, 14), dtype="float16", key=key,
                                        directory="runs/x", budget_bytes=512 * 2**20)
    cache.put(indices, features, labels); cache.finish()          # first epoch
    cache.get(indices) -> float32 tensor; cache.labels[indices]    # later epochs

Rows live in memory when the whole cache fits ``budget_bytes``, else in a ``.npy`` memory map under
``directory/prefix-cache/`` that a later run with the same key reuses. A disk cache is built under a
temporary name (``prefix-cache.tmp-<pid>``, its space reserved up front so a full disk fails at once, not
half-way) and renamed into place only when every row is written: a run that stops part-way leaves nothing a
later run would trust. The key (:func:`cache_key`) hashes the prefix's weights and buffers, the policy, the
data's identity, the resolution and the dtype; a cache with another key is stale and rebuilt.

Only fixed inputs can be cached: :func:`random_transform` finds a random training transform, which the trainer
refuses (``--augment none``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import CacheError

log = logging.getLogger("edgetl")
FORMAT = "edgetl.prefix-cache/1"
NAME = "prefix-cache"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_FIX = ("--cache-dtype float16 (half the bytes)", "a disk cache (--cache-dir on a disk with room)")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CacheError(f"unknown --cache-dtype {dtype!r}; choose float32 or float16")


def random_transform(data) -> str | None:
    """The name of a random transform in ``data``'s pipeline (a Dataset, a Subset, or a view of one), else None;
    as a last resort, a sample read twice that differs counts as random."""
    seen, stack = set(), [data]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        transform = getattr(obj, "transform", None)
        for t in getattr(transform, "transforms", [transform] if transform is not None else []):
            if type(t).__name__.startswith("Random"):
                return type(t).__name__
        stack += [getattr(obj, "dataset", None), getattr(obj, "base", None)]
    try:
        a, b = data[0][0], data[0][0]
    except Exception:
        return None
    if isinstance(a, torch.Tensor) and not torch.equal(a, b):
        return "a transform that gives a different image each time it is read"
    return None


def data_identity(data) -> str:
    """A digest of a data set: its length, class names, and three samples (first, middle, last) with labels."""
    h = hashlib.sha256(f"{len(data)}|{getattr(data, 'classes', None)}".encode())
    for i in sorted({0, len(data) // 2, len(data) - 1}):
        image, label = data[i][:2]
        h.update(np.ascontiguousarray(torch.as_tensor(image).numpy()).tobytes())
        h.update(str(int(label)).encode())
    return h.hexdigest()


def cache_key(modules, policy: str, data: str, resolution: int, dtype: str) -> str:
    """What a cache's rows depend on: the prefix ``modules``' weights and buffers, policy, data, resolution, dtype."""
    h = hashlib.sha256(f"{policy}|{data}|{resolution}|{dtype}".encode())
    for i, m in enumerate(modules):
        for name, t in m.state_dict().items():
            h.update(f"{i}.{name}".encode())
            h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _allocate(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class FeatureCache:
    """Rows of prefix outputs (see the module docstring); build with :meth:`open_or_create`."""

    def __init__(self, rows, labels: np.ndarray, filled: np.ndarray, key: str, path: Path | None = None,
                 tmp: Path | None = None):
        self.rows, self.labels, self.filled, self.key = rows, labels, filled, key
        self.path, self.tmp = path, tmp  # the final directory and the one being built (disk caches)

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    @classmethod
    def open_or_create(cls, count: int, shape: tuple, dtype: str, key: str, directory=None,
                       budget_bytes: int = 512 * 2**20) -> FeatureCache:
        check_dtype(dtype)
        nbytes = count * int(np.prod(shape)) * DTYPES[dtype].itemsize
        if nbytes <= budget_bytes:
            try:
                rows = _allocate((count, *shape), DTYPES[dtype])
            except (MemoryError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and "alloc" not in str(exc):
                    raise
                raise CacheError(f"out of memory building the feature cache ({nbytes / 2**20:.0f} MiB); use "
                                 f"{_FIX[0]} or {_FIX[1]} with a smaller --cache-budget-mb") from None
            return cls(rows, np.zeros(count, np.int64), np.zeros(count, bool), key)
        if directory is None:
            raise CacheError(f"the feature cache needs {nbytes / 2**20:.0f} MiB, over its in-memory budget of "
                             f"{budget_bytes / 2**20:.0f} MiB; give a --cache-dir (or --out) for a disk cache, "
                             f"raise --cache-budget-mb, or use {_FIX[0]}")
        found = cls.open(directory, key)
        return found if found is not None else cls._create_on_disk(Path(directory), count, shape, dtype, key, nbytes)

    @classmethod
    def open(cls, directory, key: str) -> FeatureCache | None:
        """The finished cache in ``directory`` if its key is ``key``; a stale one is removed (None)."""
        path = Path(directory) / NAME
        try:
            header = json.loads((path / "header.json").read_text())
        except (OSError, ValueError):
            return None
        if header.get("format") != FORMAT or header.get("key") != key:
            log.warning(f"the feature cache in {path} was built for other weights, policy, data, resolution or "
                        f"dtype; rebuilding it")
            shutil.rmtree(path, ignore_errors=True)
            return None
        rows = np.load(path / "features.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        return cls(rows, labels, np.ones(len(labels), bool), key, path)

    @classmethod
    def _create_on_disk(cls, directory: Path, count, shape, dtype, key, nbytes) -> FeatureCache:
        tmp = directory / f"{NAME}.tmp-{os.getpid()}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for old in directory.glob(f"{NAME}.tmp-*"):  # left by a run that stopped part-way: never trusted
                shutil.rmtree(old, ignore_errors=True)
            tmp.mkdir()
            file = tmp / "features.npy"
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (count, *shape)}
            with open(file, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                offset = f.tell()
                os.posix_fallocate(f.fileno(), offset, nbytes)  # a full disk fails here, not half-way
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(f"no room for the feature cache ({nbytes / 2**20:.0f} MiB) in {directory}; free "
                                 f"space, use {_FIX[0]}, or give another --cache-dir") from None
            raise CacheError(f"cannot write the feature cache in {directory} ({exc.strerror or exc}); give a writable "
                             f"--cache-dir") from None
        rows = np.memmap(file, dtype=dtype, mode="r+", offset=offset, shape=(count, *shape))
        return cls(rows, np.zeros(count, np.int64), np.zeros(count, bool), key, directory / NAME, tmp)

    # -- rows --------------------------------------------------------------------------------------
    def put(self, indices: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> None:
        idx = indices.numpy()
        if isinstance(self.rows, np.ndarray):
            self.rows[idx] = features.detach().to(DTYPES[str(self.rows.dtype)]).numpy()
        else:
            self.rows[indices] = features.detach().to(self.rows.dtype)
        self.labels[idx] = labels.numpy()
        self.filled[idx] = True

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        if isinstance(self.rows, np.ndarray):
            return torch.from_numpy(np.asarray(self.rows[indices.numpy()])).float()
        return self.rows[indices].float()

    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.filled)

    def finish(self) -> None:
        """Every row written: a disk cache is flushed, given its header and renamed into place."""
        if self.tmp is None:
            return
        self.rows.flush()
        np.save(self.tmp / "labels.npy", self.labels)
        (self.tmp / "header.json").write_text(json.dumps({"format": FORMAT, "key": self.key,
                                                          "shape": list(self.rows.shape),
                                                          "dtype": str(self.rows.dtype)}))
        shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.tmp, self.path)
        self.rows = np.load(self.path / "features.npy", mmap_mode="r")
        self.tmp = None

    def discard(self) -> None:
        """Drop a cache that was not finished (the run stopped): its temporary directory goes."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
