"""The artifact directory's ``manifest.json``: what every format writes, checksums, and the device runner.

    fields = manifest_fields(exporter, run, spec, trainable, batch_size=None, reference_batch=4, steps=3)
    manifest = write_manifest(out, fields)          # adds file checksums; written atomically
    verify_manifest(out)                            # files whose checksum no longer matches (empty when intact)

The manifest is what a device and ``edgetl deploy`` read: model, policy, input, classes, preprocessing,
the optimizer spec, the trainable tensors, the predicted training memory (from the profiler, per batch
size, so deploy never rebuilds the model), library versions, checksums and the validation result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data import preprocessing
from ..io import atomic_write_json, file_sha256
from ..optim import OptimizerSpec
from ..profile.analytic import ModelProfile, profile_model
from ..run import Run
from ..runtime import SHARED_FILES
from ..version import __version__
from .validation import TOLERANCES, Validation

MANIFEST = "manifest.json"


def predicted_memory(prof: ModelProfile, spec: OptimizerSpec) -> dict:
    """``manifest["memory"]``: the analytic training memory of one step of the profiled model (``prof``) as
    ``fixed_bytes + per_sample_bytes * batch`` (the profiler's figures are linear in the batch), and ``state_bytes``,
    the trained tensors and optimizer state a runner reads back to write its results: what deploy adds to the
    runner's measured baseline (:mod:`edgetl.devices.memory`, which also makes it for manifests without it)."""
    one, two = (prof.totals(b, spec) for b in (1, 2))
    fixed, per_sample = 2 * one["training_memory_bytes"] - two["training_memory_bytes"], \
        two["training_memory_bytes"] - one["training_memory_bytes"]
    return {"fixed_bytes": int(fixed), "per_sample_bytes": int(per_sample),
            "state_bytes": int(one["trainable_param_bytes"] + one["optimizer_state_bytes"]),
            "what": "analytic training memory of one step (profiler): weights, gradients, optimizer state, "
                    "saved activations and the largest transient buffers; state: trained tensors and optimizer "
                    "state, read back when the results are written"}


def manifest_fields(exporter, run: Run, spec: OptimizerSpec, trainable: list[str], batch_size: int | None,
                    reference_batch: int, steps: int) -> dict:
    """What every format's manifest says; ``batch_size`` None means any batch (else fixed at export)."""
    return {
        "format": exporter.name, "runtime": exporter.runtime, "model": run.model_name, "policy": str(run.policy),
        "policy_options": run.policy.options(),
        "input": {"name": exporter.input_name, "shape": [batch_size, 3, run.resolution, run.resolution],
                  "dtype": "float32"},
        "output": {"name": "logits", "shape": [batch_size, len(run.class_names)]}, "class_names": run.class_names,
        "preprocessing": preprocessing(run.resolution), "trainable": trainable, "optimizer": spec.as_dict(),
        "schedule": {"name": run.schedule, "what": "the run's learning-rate schedule, which the runner follows from "
                     "the optimizer's lr over the planned steps of a device run (--epochs x batches per epoch, or "
                     "--steps); cosine as the trainer's CosineAnnealingLR"},
        "memory": predicted_memory(profile_model(run.model, run.resolution, name=run.model_name), spec),
        "dropout": "not exported: on-device training runs without dropout (the parity check does the same)",
        "validation": {"validated": False, "steps": steps, "batch_size": reference_batch, "tolerances": TOLERANCES},
        "notes": run.notes, "source_run": str(Path(run.path).resolve()) if run.path else None}


def split_entry(split, prefix_file: str) -> dict:
    """``manifest["split"]``: where the frozen prefix ends, its model file, and what the runner needs to stream
    it (``split`` an :class:`.split.Split`); the one place this entry is made."""
    return {"at": split.at, "index": split.index, "prefix": prefix_file, "feature_shape": list(split.feature_shape),
            "prefix_sample_bytes": split.prefix_sample_bytes, "region_sample_bytes": split.region_sample_bytes,
            "what": "the frozen prefix runs as its own inference model (any batch: micro-batches on the device); "
                    "the training model is the region after it, its input the prefix's features at full batch"}


def file_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest itself, by relative path."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}


def copy_runner(runner_module, out: Path) -> str:
    """Put a device runner and the files it imports (``runtime.SHARED_FILES``) into ``out``; returns the runner's
    file name."""
    name = Path(runner_module.__file__).name
    here = Path(runner_module.__file__).parent
    for file in (name, *SHARED_FILES):
        shutil.copy(here / file, out / file)
    return name


def write_manifest(root: Path, manifest: dict) -> dict:
    manifest = {**manifest, "edgetl_version": __version__, "files": file_checksums(root)}
    atomic_write_json(manifest, root / MANIFEST)
    return manifest


def validated_manifest(out: Path, fields: dict, validate: bool, run_checks) -> tuple[dict, Validation | None]:
    """Write the manifest (the runner reads it, so before validation), run ``run_checks() -> Validation`` when
    ``validate``, and store the result in the manifest; returns (manifest, validation)."""
    manifest = write_manifest(out, fields)
    if not validate:
        return manifest, None
    validation = run_checks()
    fields["validation"].update(validation.as_dict())
    return write_manifest(out, fields), validation


def load_manifest(root: str | Path) -> dict:
    return json.loads((Path(root) / MANIFEST).read_text())


def verify_manifest(root: str | Path) -> list[str]:
    """Files whose checksum does not match the manifest (missing files included); empty when intact."""
    root = Path(root)
    bad = []
    for rel, digest in load_manifest(root)["files"].items():
        p = root / rel
        if not p.is_file() or file_sha256(p) != digest:
            bad.append(rel)
    return bad
