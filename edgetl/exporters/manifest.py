"""The artifact directory's ``manifest.json``: what every format writes, checksums, and the device runner.

    fields = manifest_fields(exporter, run, spec, trainable, batch_size=None, reference_batch=4, steps=3)
    manifest = write_manifest(out, fields)          # adds file checksums; written atomically
    verify_manifest(out)                            # files whose checksum no longer matches (empty when intact)
    m = Manifest.load(out)                          # typed: m.model, m.class_names, m.resolution, m.split, ...
    m.predicted_memory().bytes_at(8)                # the analytic training memory of a step at batch 8

The manifest is the one contract between an export and everything that reads it, so this module is the only
place of the library that reads its keys (the device runners in ``edgetl/runtime/``, which import nothing of
edgetl, read the JSON themselves). ``Manifest.as_dict()`` is the JSON as it was read: the file format is not
this class's, so keys it does not type travel untouched.

The manifest is what a device and ``edgetl deploy`` read: model, policy, input, classes, preprocessing,
the optimizer spec, the trainable tensors, the predicted training memory (from the profiler, per batch
size, so deploy never rebuilds the model), library versions, checksums and the validation result.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class PredictedMemory:
    """``manifest["memory"]``: one training step needs ``fixed_bytes + per_sample_bytes * batch`` (the profiler's
    figures are linear in the batch); ``state_bytes``, the trained tensors and optimizer state, read back when a
    runner writes its results."""
    fixed_bytes: int
    per_sample_bytes: int
    state_bytes: int

    def bytes_at(self, batch_size: int) -> int:
        """The analytic training memory of one step at ``batch_size``."""
        return int(self.fixed_bytes + self.per_sample_bytes * batch_size)


@dataclass(frozen=True)
class SplitEntry:
    """``manifest["split"]``: where the frozen prefix ends and its model file (see :func:`split_entry`)."""
    at: str
    index: int
    prefix: str
    feature_shape: tuple[int, ...]
    prefix_sample_bytes: int
    region_sample_bytes: int


@dataclass(frozen=True)
class Manifest:
    """An export's ``manifest.json``, typed (``Manifest.load(dir)``, ``Manifest.from_dict(json)``)."""
    format: str | None
    runtime: str | None
    kind: str  # "training", or "inference" (weights baked in, for apps)
    model: str
    policy: str | None
    input_name: str | None
    input_shape: tuple  # [batch or None, 3, resolution, resolution]
    class_names: list[str]
    preprocessing: dict
    trainable: list[str] = field(default_factory=list)
    optimizer: dict | None = None  # OptimizerSpec.as_dict(); optimizer_spec() gives the spec
    schedule: str | None = None
    memory: PredictedMemory | None = None  # None in exports made before manifests carried it
    split: SplitEntry | None = None
    variables: list[dict] = field(default_factory=list)  # TFLite's resource variables: name, shape, kind
    running_stats: list[dict] = field(default_factory=list)  # ONNX's trained batch-norm statistics
    train_intermediates_bytes: int | None = None
    size_bytes: int | None = None
    latency: dict | None = None
    validation: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    source_run: str | None = None
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        return cls.from_dict(json.loads((Path(root) / MANIFEST).read_text()))

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        # every key read leniently, as the dict was: a key missing matters only to whoever needs it
        memory, split, given = d.get("memory") or {}, d.get("split"), d.get("input") or {}
        return cls(
            format=d.get("format"), runtime=d.get("runtime"), kind=d.get("kind", "training"), model=d.get("model"),
            policy=d.get("policy"), input_name=given.get("name"), input_shape=tuple(given.get("shape", ())),
            class_names=list(d.get("class_names", [])), preprocessing=d.get("preprocessing") or {},
            trainable=list(d.get("trainable", [])),
            optimizer=d.get("optimizer"), schedule=(d.get("schedule") or {}).get("name"),
            memory=PredictedMemory(int(memory["fixed_bytes"]), int(memory["per_sample_bytes"]),
                                   int(memory["state_bytes"])) if "state_bytes" in memory else None,
            split=SplitEntry(split["at"], split["index"], split["prefix"], tuple(split["feature_shape"]),
                             split["prefix_sample_bytes"], split["region_sample_bytes"]) if split else None,
            variables=list(d.get("variables", [])), running_stats=list(d.get("running_stats", [])),
            train_intermediates_bytes=d.get("train_intermediates_bytes"), size_bytes=d.get("size_bytes"),
            latency=d.get("latency"), validation=d.get("validation") or {}, files=dict(d.get("files", {})),
            source_run=d.get("source_run"), notes=list(d.get("notes") or []), raw=d)

    @classmethod
    def of(cls, manifest: Manifest | dict | str | Path) -> Manifest:
        """A Manifest from one, its JSON as a dict, or an export directory."""
        if isinstance(manifest, Manifest):
            return manifest
        return cls.from_dict(manifest) if isinstance(manifest, dict) else cls.load(manifest)

    def as_dict(self) -> dict:
        """The JSON as it was read (or written)."""
        return self.raw

    @property
    def batch_size(self) -> int | None:
        """The batch the model trains at, fixed at export (TFLite), or None for any batch."""
        return self.input_shape[0]

    @property
    def resolution(self) -> int:
        return self.input_shape[-1]

    @property
    def inference(self) -> bool:
        return self.kind == "inference"

    @property
    def validated_ok(self) -> bool | None:
        """The export's own parity check: passed, failed, or None when it was not run."""
        return self.validation.get("ok")

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec.from_dict(self.optimizer)

    def predicted_memory(self) -> PredictedMemory:
        """The manifest's predicted memory; for an export made before manifests carried it, the profiler's, as
        export computes it."""
        if self.memory is not None:
            return self.memory
        from ..profile.analytic import analyze

        d = predicted_memory(analyze(self.model, self.policy, self.resolution, len(self.class_names)),
                             self.optimizer_spec())
        return PredictedMemory(d["fixed_bytes"], d["per_sample_bytes"], d["state_bytes"])

    @property
    def planned_bytes(self) -> int | None:
        """The runtime's own plan of a step, where the export records one (TFLite: the training subgraph's
        intermediates in its op order, plus every float32 variable: weights, running statistics, optimizer state)."""
        if self.train_intermediates_bytes is None:
            return None
        return self.train_intermediates_bytes + sum(4 * math.prod(v["shape"]) for v in self.variables)

    def travelling(self) -> list[str]:
        """Names (torchvision's) of the tensors the device trains and a fleet round exchanges, in a fixed order:
        the trainable tensors, then the trained running statistics."""
        names = list(self.trainable)
        names += [v["name"] for v in self.variables if v.get("kind") == "stat"]
        for norm in self.running_stats:
            names += [f"{norm['name']}.running_mean", f"{norm['name']}.running_var"]
        return list(dict.fromkeys(names))


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


def write_manifest(root: Path, manifest: dict) -> Manifest:
    manifest = {**manifest, "edgetl_version": __version__, "files": file_checksums(root)}
    atomic_write_json(manifest, root / MANIFEST)
    return Manifest.from_dict(manifest)


def validated_manifest(out: Path, fields: dict, validate: bool, run_checks) -> tuple[Manifest, Validation | None]:
    """Write the manifest (the runner reads it, so before validation), run ``run_checks() -> Validation`` when
    ``validate``, and store the result in the manifest; returns (manifest, validation)."""
    manifest = write_manifest(out, fields)
    if not validate:
        return manifest, None
    validation = run_checks()
    fields["validation"].update(validation.as_dict())
    return write_manifest(out, fields), validation


def load_manifest(root: str | Path) -> Manifest:
    return Manifest.load(root)


def verify_manifest(root: str | Path) -> list[str]:
    """Files whose checksum does not match the manifest (missing files included); empty when intact."""
    root = Path(root)
    bad = []
    for rel, digest in Manifest.load(root).files.items():
        p = root / rel
        if not p.is_file() or file_sha256(p) != digest:
            bad.append(rel)
    return bad
