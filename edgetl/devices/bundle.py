"""What a deploy pushes: the artifacts, their manifest, the runner and an optional data shard.

    bundle = make_bundle("artifacts/onnx", data="./flowers")      # staged locally, content-addressed
    remote = push_bundle(device, bundle)                           # atomic and resumable

The runner files travel from this edgetl (``edgetl/runtime``), not from the artifact directory: the device
runs the code deploy talks to (its flags and its output), and an artifact exported before a runner file
existed (``runner_data.py``) still deploys. A data shard packed from an ImageFolder is uint8 ``.npy``
(resized and cropped on the laptop, normalised on the device): a quarter of float32's bytes, memory-mapped
there. A ``.npz`` travels as it is (the float32 shards of earlier versions work).

A bundle's id is a hash of its files, so the device keeps one directory per content,
``<workdir>/bundles/<id>``. Files travel into ``<id>.partial`` (each as ``name.part``, renamed when whole),
are verified by sha256 on the device, and only then is the directory renamed into place: a runner never
sees a half-written bundle, and a rerun after a dropped connection sends only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..exporters import Artifacts, ExportError
from ..exporters.manifest import MANIFEST, Manifest, verify_manifest
from ..formats import FORMATS, by_runtime
from ..runtime import SHARED_FILES
from .base import Device, DeviceError, DiskFull, file_sha256

BUNDLE_JSON = "bundle.json"
SHARD, SHARD_DIR = "shard.npz", "shard"
RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"


@dataclass
class Bundle:
    root: Path
    id: str
    manifest: Manifest
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    runner: str = ""
    shard: str | None = None

    @property
    def size(self) -> int:
        return sum((self.root / rel).stat().st_size for rel in self.files)


def make_bundle(artifacts: Artifacts | str | Path, data: str | Path | None = None, shard_size: int | None = None, seed: int = 0,
                val_split: float | None = None) -> Bundle:
    """Stage a bundle: the artifacts, the current runner files, and a shard of ``data`` (an ImageFolder or the
    built-in ``patterns``, packed as uint8 with at most ``shard_size`` images per split and ``val_split`` of a flat
    folder held out; or a ``.npz``, copied)."""
    artifacts = Artifacts.of(artifacts).out  # a directory without a manifest is refused there
    bad = verify_manifest(artifacts)
    if bad:
        raise ExportError(f"{artifacts} is damaged: {', '.join(bad[:5])} do not match the manifest; export again")
    manifest = Manifest.load(artifacts)  # what is pushed is what is on disk, checked just now
    if manifest.inference:
        raise ExportError(f"{artifacts} is an inference export (weights baked in, for apps): deploy trains a training "
                          f"export; export the run without --inference")
    fmt = FORMATS.get(manifest.format) or by_runtime(manifest.runtime)
    if fmt is None or fmt.runtime is None or fmt.runner is None:
        what = f"the {fmt.display} format" if fmt else f"the runtime {manifest.runtime!r}"
        raise ExportError(f"{artifacts} cannot be deployed: {what} has no device runtime in edgetl; export with "
                          f"--format {' or --format '.join(f.name for f in FORMATS.values() if f.runner)}")
    runner = fmt.runner + ".py"
    root = Path(tempfile.mkdtemp(prefix="edgetl-bundle-"))
    for rel in [*manifest.files, MANIFEST]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(artifacts / rel, root / rel)
    for name in (runner, *SHARED_FILES):
        shutil.copy2(RUNTIME_DIR / name, root / name)
    shard = None
    if data is not None:
        shard = _write_shard(Path(data), root, manifest, shard_size, seed, val_split)
    files = {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    bundle_id = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()[:16]
    bundle = Bundle(root, bundle_id, manifest, files, runner, shard)
    # runner and runtime_dists: what the fleet's ClientApp, which imports nothing of edgetl, runs and reports
    dists = list(dict.fromkeys((fmt.runtime.dist, *fmt.runtime.dists)))
    (root / BUNDLE_JSON).write_text(json.dumps({"id": bundle_id, "files": files, "runner": runner, "shard": shard,
                                                "format": manifest.format, "model": manifest.model,
                                                "policy": manifest.policy, "runtime_dists": dists}, indent=2))
    bundle.files[BUNDLE_JSON] = file_sha256(root / BUNDLE_JSON)
    return bundle


def _write_shard(data: Path, root: Path, manifest: Manifest, count: int | None, seed: int,
                 val_split: float | None) -> str:
    """The shard's name in the bundle: ``shard.npz`` copied, or ``shard/`` packed as uint8 ``.npy``."""
    if data.suffix == ".npz":
        with np.load(data, allow_pickle=False) as z:
            if "images" not in z or "labels" not in z:
                raise ExportError(f"{data} is no data shard: it needs 'images' and 'labels' arrays")
        shutil.copy2(data, root / SHARD)
        return SHARD
    from ..data import pack_uint8_shard

    pack_uint8_shard(data, manifest.resolution, root / SHARD_DIR, count, seed, val_split,
                     class_names=manifest.class_names)
    return SHARD_DIR


def push_bundle(device: Device, bundle: Bundle, on_bytes: Callable[[int], None] | None = None,
                log: Callable[[str], None] = lambda msg: None, free_bytes: int | None = None) -> str:
    """Put ``bundle`` on ``device`` (atomically, resuming a previous attempt); returns its remote directory.

    ``free_bytes`` is the space free in the work directory when a probe already told (else it probes).
    """
    final = f"{device.workdir}/bundles/{bundle.id}"
    staging = f"{final}.partial"
    if device.exists(f"{final}/{BUNDLE_JSON}"):
        have = device.sha256([f"{final}/{rel}" for rel in bundle.files])
        if all(have.get(f"{final}/{rel}") == digest for rel, digest in bundle.files.items()):
            log(f"bundle {bundle.id} is already on the device")
            return final
        device.remove(final)  # damaged in place: send it again
    dirs = {str(Path(rel).parent) for rel in bundle.files if str(Path(rel).parent) != "."}
    for d in [staging, *(f"{staging}/{d}" for d in sorted(dirs))]:
        device.makedirs(d)
    have = device.sha256([f"{staging}/{rel}" for rel in bundle.files])
    todo = [rel for rel, digest in bundle.files.items() if have.get(f"{staging}/{rel}") != digest]
    needed = sum((bundle.root / rel).stat().st_size for rel in todo)
    free = device.probe().free_bytes if free_bytes is None else free_bytes
    if free and needed > free:
        raise DiskFull(f"the bundle needs {needed / 2**20:.1f} MiB but {device.workdir} on the device has "
                       f"{free / 2**20:.1f} MiB free; free some space, or deploy to another directory")
    if len(todo) < len(bundle.files):
        log(f"resuming: {len(bundle.files) - len(todo)} of {len(bundle.files)} files are already on the device")
    for rel in todo:
        device.push_file(bundle.root / rel, f"{staging}/{rel}.part", on_bytes)
        device.rename(f"{staging}/{rel}.part", f"{staging}/{rel}")
    have = device.sha256([f"{staging}/{rel}" for rel in bundle.files])
    wrong = [rel for rel, digest in bundle.files.items() if have.get(f"{staging}/{rel}") != digest]
    if wrong:
        raise DeviceError(f"{', '.join(wrong[:5])} arrived damaged on the device; deploy again")
    device.rename(staging, final)
    return final
