"""Split a data set into one shard per device, for fleet trials: ``edgetl fleet shard DATA --devices N``.

    paths = make_shards("patterns", 3, "shards/", resolution=32, by_class=True, count=600)

Each shard is ``device-<i>.npz`` with ``images`` (N, R, R, 3) uint8 (resized and center-cropped; the device
normalises, as the manifest says) and ``labels`` int64: the format the device runners read. ``--iid`` deals the
images out at random; ``--by-class`` sorts them by class first, so each device sees a few classes mostly (the
non-IID split federated learning is usually tried on). ``shards.json`` records the split.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import EdgeTLError
from ..io import atomic_write_json
from ..limits import check_numbers


class ShardError(EdgeTLError):
    """Data that cannot be split as asked."""


def make_shards(data: str | os.PathLike, devices: int, out: str | os.PathLike, resolution: int, by_class: bool = False,
                count: int | None = None, seed: int = 0, class_names: list[str] | None = None) -> list[Path]:
    """Write ``devices`` shards of ``data`` (an ImageFolder or ``patterns``) under ``out``; returns their paths."""
    from ..data import pack_uint8_shard

    check_numbers(devices=devices, resolution=resolution, count=count, seed=seed)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="edgetl-shard-") as tmp:
        meta = pack_uint8_shard(data, resolution, tmp, count=count, seed=seed, class_names=class_names)
        images = np.load(Path(tmp) / "train_images.npy", allow_pickle=False)
        labels = np.load(Path(tmp) / "train_labels.npy", allow_pickle=False)
    if len(labels) < devices:
        raise ShardError(f"{data} has {len(labels)} images, fewer than {devices} devices: use fewer devices or more data")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    if by_class:
        order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within each class
    paths, split = [], []
    for i, part in enumerate(np.array_split(order, devices), start=1):
        path = out / f"device-{i}.npz"
        tmp_path = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp_path, images=images[part], labels=labels[part])
        os.replace(tmp_path, path)
        paths.append(path)
        split.append({"file": path.name, "images": int(len(part)),
                      "classes": {meta["class_names"][c]: int(n) for c, n in zip(*np.unique(labels[part], return_counts=True))}})
    atomic_write_json({"data": str(data), "devices": devices, "split": "by-class" if by_class else "iid",
                       "resolution": resolution, "class_names": meta["class_names"], "shards": split}, out / "shards.json")
    return paths
