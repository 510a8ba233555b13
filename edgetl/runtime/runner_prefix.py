"""The frozen prefix on a device: run in micro-batches, and its outputs cached across epochs (numpy only).

    micro = prefix_batch("auto", batch=8, split=manifest["split"])      # an int, or RunnerError
    features = stream(run_prefix, images, micro)                        # == run_prefix(images), less memory
    cache = FeatureCache.open(n, feature_shape, "float16", budget_bytes, directory, key)

An export with a frozen prefix (``manifest["split"]``) ships the prefix as its own inference model and the
trained region as the training model. ``features[:split]`` runs in inference mode without gradients, so each
image's features do not depend on the others in its batch: the runner runs the prefix ``micro`` images at a
time (the last chunk padded, so the runtime's buffers keep one size) and trains the region at full batch on
the concatenated features. With fixed inputs (no random augmentation) the features of an image are the same
in every epoch: :class:`FeatureCache` keeps them (in memory up to a budget, else in a memory-mapped file),
written to a temporary name and renamed into place only when complete, under a header whose key names the
prefix's checksum, the policy, the data, the resolution and the dtype, so a stale or half-built cache is never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

if __package__:  # edgetl.runtime.runner_prefix
    from .runner_io import DISK_FULL, RunnerError, proc_bytes
else:  # beside the runner on a device
    from runner_io import DISK_FULL, RunnerError, proc_bytes

CACHE_DATA, CACHE_HEADER = "feature_cache.npy", "feature_cache.json"


# -- streaming ----------------------------------------------------------------------------------------

def auto_prefix_batch(batch: int, split: dict) -> int:
    """The largest micro-batch whose prefix working set (its largest layer's input and output, per image) stays
    within what one image costs the trained region (its layers' outputs).

    Why one image and not the batch: a TFLite interpreter keeps its arena for its life, so the prefix's
    working set adds to the training step's peak instead of taking turns with it (measured on MobileNetV2,
    mobiletl:5, batch 8, 224 px: peak 179 MiB at micro-batch 1, 219 MiB at 7), while the prefix's convolutions
    on 112 x 112 maps run as fast one image at a time (0.67 s for 8 images at 1, 0.79 s at 8, one thread).
    """
    per_image, region = split.get("prefix_sample_bytes"), split.get("region_sample_bytes")
    if not per_image or not region:
        return 1
    return int(max(1, min(batch, region // per_image)))


def prefix_batch(value, batch: int, split: dict | None) -> int | None:
    """The micro-batch the prefix runs at (None: the export has no prefix); refuses 0 or more than the batch."""
    if split is None:
        return None
    if value in (None, "auto"):
        return auto_prefix_batch(batch, split)
    try:
        micro = int(value)
    except (TypeError, ValueError):
        raise RunnerError(f"--prefix-batch {value!r} is not a number: give a micro-batch from 1 to {batch}, "
                          f"or auto") from None
    if not 1 <= micro <= batch:
        raise RunnerError(f"--prefix-batch {micro} is outside 1..{batch} (the training batch): give a micro-batch "
                          f"from 1 to {batch}, or auto")
    return micro


def stream(run, images: np.ndarray, micro: int) -> np.ndarray:
    """``run`` (a batch of ``micro`` images -> their features) over ``images``, ``micro`` at a time; the last
    chunk is padded with zeros so that the runtime always sees one shape (no reallocation)."""
    n, out = len(images), None
    for start in range(0, n, micro):
        chunk = np.ascontiguousarray(images[start:start + micro], dtype=np.float32)
        real = len(chunk)
        if real < micro:
            chunk = np.concatenate([chunk, np.zeros((micro - real, *chunk.shape[1:]), np.float32)])
        y = run(chunk)
        if out is None:
            out = np.empty((n, *y.shape[1:]), np.float32)
        out[start:start + real] = y[:real]
    return out


# -- the feature cache --------------------------------------------------------------------------------

def data_identity(split) -> str:
    """What the cached features were computed from: the images' files (path, size, mtime) or array contents
    (labels, shape and a sample of images), in the split's order."""
    h = hashlib.sha256()
    h.update(f"{split.name}:{len(split)}".encode())
    if hasattr(split, "paths"):
        for p in split.paths:
            st = os.stat(p) if os.path.exists(p) else None
            h.update(f"{p}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    else:
        h.update(np.ascontiguousarray(split.labels).tobytes())
        images = split.images
        h.update(f"{images.shape}{images.dtype}".encode())
        for i in sorted({0, len(images) // 2, len(images) - 1}):
            if 0 <= i < len(images):
                h.update(np.ascontiguousarray(images[i]).tobytes())
    return h.hexdigest()


def cache_key(manifest: dict, split, dtype: str) -> str:
    """The header key: the prefix model's checksum, policy, model, resolution, data and dtype."""
    s = manifest["split"]
    parts = {"prefix_sha256": manifest.get("files", {}).get(s["prefix"]), "at": s["at"], "model": manifest["model"],
             "policy": manifest["policy"], "policy_options": manifest.get("policy_options"),
             "input": manifest["input"]["shape"][1:], "data": data_identity(split), "dtype": dtype}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux, Android), else None (unknown)."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def _no_room(need: int, what: str) -> RunnerError:
    return RunnerError(f"the feature cache needs {need / 2**20:,.0f} MiB and {what}: use --cache-dtype float16 "
                       f"(half the size), or a disk cache (--cache-budget-mb 0, in --cache-dir), or drop "
                       f"--cache-features")


class FeatureCache:
    """Prefix features by sample index; ``get``/``put`` in float32, stored as ``dtype``."""

    def __init__(self, array: np.ndarray, filled: np.ndarray, where: str, dtype: str, directory: str | None = None,
                 tmp: str | None = None, key: str | None = None):
        self.array, self.filled, self.where, self.dtype = array, filled, where, dtype
        self.directory, self.tmp, self.key = directory, tmp, key
        self.sealed = where == "disk" and tmp is None  # read back from disk: complete, read-only

    @property
    def bytes(self) -> int:
        return int(self.array.nbytes)

    def describe(self) -> dict:
        return {"dtype": self.dtype, "bytes": self.bytes, "where": self.where}

    @classmethod
    def open(cls, n: int, shape, dtype: str, budget_bytes: int, directory: str, key: str, log=print) -> FeatureCache:
        """A cache for ``n`` samples: a complete one with header ``key`` read back from ``directory``, else an
        empty one in memory (when it fits ``budget_bytes``) or in a temporary file there."""
        np_dtype = np.dtype(dtype)
        need = n * int(np.prod(shape)) * np_dtype.itemsize
        header_path, data_path = os.path.join(directory, CACHE_HEADER), os.path.join(directory, CACHE_DATA)
        header = None
        try:
            with open(header_path) as f:
                header = json.load(f)
        except (OSError, ValueError):
            pass
        if header is not None:
            if header.get("key") == key and os.path.exists(data_path):
                try:
                    array = np.load(data_path, mmap_mode="r")
                except (OSError, ValueError):
                    array = None
                if array is not None and array.shape == (n, *shape) and array.dtype == np_dtype:
                    filled = np.zeros(n, bool)
                    filled[np.asarray(header["filled"], np.int64)] = True
                    log(f"note: using the feature cache in {directory} ({need / 2**20:,.0f} MiB, {dtype})")
                    return cls(array, filled, "disk", dtype, directory, None, key)
            log(f"note: the feature cache in {directory} is stale (the prefix, policy, data, resolution or dtype "
                f"changed); rebuilding it")
            for p in (header_path, data_path):
                try:
                    os.unlink(p)
                except OSError:
                    pass
        filled = np.zeros(n, bool)
        if need <= budget_bytes:
            free = available_memory()
            if free is not None and need > 0.9 * free:
                raise _no_room(need, f"only {free / 2**20:,.0f} MiB of memory are available")
            try:
                array = np.empty((n, *shape), np_dtype)
                array.reshape(-1)[::max(1, 4096 // np_dtype.itemsize)] = 0  # touch every page now, not mid-epoch
            except MemoryError:
                raise _no_room(need, "the memory ran out while building it") from None
            return cls(array, filled, "memory", dtype)
        return cls._disk(n, shape, np_dtype, need, directory, key, filled)

    @classmethod
    def _disk(cls, n, shape, np_dtype, need, directory, key, filled) -> FeatureCache:
        tmp = os.path.join(directory, f".{CACHE_DATA}.{os.getpid()}.tmp")
        try:
            os.makedirs(directory, exist_ok=True)
            for old in os.listdir(directory):  # leftovers of interrupted builds: never trusted, only in the way
                if old.startswith(f".{CACHE_DATA}.") and old.endswith(".tmp"):
                    os.unlink(os.path.join(directory, old))
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(n, *shape))
            if need and hasattr(os, "posix_fallocate"):
                # reserve the blocks now: a full disk is one clear error here, not a SIGBUS in a later write
                with open(tmp, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if exc.errno in DISK_FULL:
                raise _no_room(need, f"{os.path.abspath(directory)} has no room for it ({exc.strerror})") from None
            raise RunnerError(f"cannot write the feature cache in {os.path.abspath(directory)} ({exc.strerror}): give "
                              f"a writable --cache-dir, or keep the cache in memory (a larger --cache-budget-mb)") from None
        return cls(array, filled, "disk", np_dtype.name, directory, tmp, key)

    def has(self, i: int) -> bool:
        return bool(self.filled[i])

    def put(self, index, features: np.ndarray) -> None:
        if self.sealed:  # a sealed file is never written again (its header lists what it holds)
            return
        self.array[index] = features
        self.filled[index] = True

    def get(self, index) -> np.ndarray:
        return np.asarray(self.array[index], np.float32)

    def seal(self) -> None:
        """After the first full epoch: a disk cache is flushed, renamed into place, then its header written
        (a reader trusts the data only under a header with its key)."""
        if self.sealed or self.tmp is None:
            return
        self.array.flush()
        data_path = os.path.join(self.directory, CACHE_DATA)
        os.replace(self.tmp, data_path)
        header = {"key": self.key, "dtype": self.dtype, "shape": list(self.array.shape),
                  "filled": np.flatnonzero(self.filled).tolist()}
        tmp = os.path.join(self.directory, f".{CACHE_HEADER}.tmp")
        with open(tmp, "w") as f:
            json.dump(header, f)
        os.replace(tmp, os.path.join(self.directory, CACHE_HEADER))
        self.tmp, self.sealed = None, True

    def discard(self) -> None:
        """After a failure: remove what was being built (a complete cache read back stays)."""
        if self.tmp is not None:
            self.array = None
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


def cached_batches(split, order, size: int, cache: FeatureCache, features):
    """Batches ``(features, labels)`` of ``size`` readable samples in ``order``, taken from ``cache`` where it
    holds them, else computed by ``features(images)`` and stored; unreadable images are skipped as
    ``runner_data.batches`` skips them, and the last short batch is dropped."""
    index, images = [], []
    for i in order:
        i = int(i)
        x = None
        if not cache.has(i):
            x = split.load(i)
            if x is None:
                continue
        index.append(i)
        images.append(x)
        if len(index) == size:
            split.release()
            todo = [k for k, x in enumerate(images) if x is not None]
            out = cache.get(index)
            if todo:
                computed = features(np.stack([images[k] for k in todo]))
                cache.put([index[k] for k in todo], computed)
                # what later epochs read back: the stored dtype's rounding from the first epoch on
                out[todo] = computed.astype(cache.array.dtype).astype(np.float32)
                del computed
            labels = np.asarray(split.labels[index], np.int64)
            index, images = [], []  # the images are not held while the caller trains on the features
            yield out, labels
    split.release()
