"""What every exporter is: a registered format that lowers a run, writes artifacts and proves them.

    class MyFormat(Exporter):
        format, input_name, runner = FORMAT, "input", my_runner_module     # FORMAT: its edgetl.formats.Format
        def lower(self, run, out, spec, batch_size, log) -> tuple[list[str], dict]: ...   # files + manifest fields

    result = MyFormat().export(run, Path("artifacts/myformat"))      # Artifacts: out, manifest, files, validation
    art = Artifacts.load("artifacts/myformat")                         # an existing export (what deploy and fleet take)

:meth:`Exporter.export` is the shared flow: the optimizer the format runs, the lowering (the format's own
part), the reference batches, the manifest, and validation against PyTorch through the format's device
runner (:func:`.validation.validate_with_runner`). A format's subclass lives in its package under
:mod:`edgetl.formats`, whose registry names it (docs/architecture.md: adding a format).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from ..errors import EdgeTLError
from ..io import staged_dir
from ..optim import OptimizerSpec
from ..run import Run
from .manifest import MANIFEST, Manifest, manifest_fields, split_entry, validated_manifest
from .reference import training_copy, write_reference
from .split import Split, plan
from .validation import Validation, validate_with_runner


class ExportError(EdgeTLError):
    """An export that cannot be made or did not validate."""


class ValidationFailed(ExportError):
    """The export was written but does not match PyTorch; ``result`` holds its checks."""

    def __init__(self, message: str, result: Artifacts):
        super().__init__(message)
        self.result = result


@dataclass
class Artifacts:
    """An export directory: ``out``, its typed :class:`.manifest.Manifest`, its files and its validation against
    PyTorch. ``export()`` returns one; ``Artifacts.load(dir)`` reads an existing export."""

    format: str
    out: Path
    manifest: Manifest
    validation: Validation | None  # None when validation was skipped
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, out: str | Path) -> Artifacts:
        out = Path(out)
        if not (out / MANIFEST).is_file():
            raise ExportError(f"{out} holds no {MANIFEST}; pass a directory written by `edgetl export`")
        manifest = Manifest.load(out)
        return cls(manifest.format, out, manifest, Validation.from_dict(manifest.validation), list(manifest.notes))

    @classmethod
    def of(cls, artifacts: Artifacts | str | Path) -> Artifacts:
        """``artifacts`` itself, or the export in that directory."""
        return artifacts if isinstance(artifacts, Artifacts) else cls.load(artifacts)

    @property
    def files(self) -> list[Path]:
        return [self.out / MANIFEST, *(self.out / rel for rel in self.manifest.files)]

    @property
    def ok(self) -> bool:
        return self.validation is None or self.validation.ok


#: the name export()'s result had before it could be loaded from a directory
ExportResult = Artifacts


@contextlib.contextmanager
def quiet_stderr():
    """Silence native libraries' log lines (they go to fd 2, beneath Python); yields the file that holds them,
    for error messages."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class Exporter(ABC):
    format: ClassVar  # its registry entry (:class:`edgetl.formats.Format`), which gives the three below
    name: ClassVar[str]
    runtime: ClassVar[str | None]  # the device runtime's distribution name
    inference_runtime: ClassVar[str | None]  # an inference export's runtime
    input_name: ClassVar[str]
    fixed_batch: ClassVar[bool] = False  # the training batch size is fixed at export
    runner: ClassVar  # the device runner module (edgetl.runtime.*)
    prefix_file: ClassVar[str]  # the frozen prefix's inference model, when the policy leaves one

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fmt = cls.__dict__.get("format")
        if fmt is not None:  # the names a manifest carries are the registry's
            cls.name, cls.inference_runtime = fmt.name, fmt.inference_runtime
            cls.runtime = fmt.runtime.name if fmt.runtime else None

    def optimizer(self, run: Run, lr: float | None) -> OptimizerSpec:
        """The optimizer the exported graph runs: the run's, at ``lr`` when given."""
        return run.optimizer.replace(lr=lr) if lr is not None else run.optimizer

    def probe(self, model, batch_size: int, resolution: int):
        """``model`` lowered as this format lowers it, run by its runtime with every layer tapped
        (:class:`.layerdiff.Probe`); None when the format has none."""
        return None

    def layer_report(self, run: Run, images, labels) -> dict | None:
        """Where the export departs from PyTorch, layer by layer, on one batch (``{"summary": ...}``), for a
        failed validation's message; None when the format cannot tell. Best effort: it explains a failure, so
        its own failure is reported instead of raised."""
        from ..runtime.runner_prefix import available_memory
        from .layerdiff import compare, memory_estimate

        try:
            model = training_copy(run.model)
            need, free = memory_estimate(model, images.shape[0], run.resolution), available_memory()
            if free is not None and need > free:  # running out of memory would lose the failed checks' message too
                return {"summary": f"the layer-by-layer comparison was skipped: it needs about {need / 2**30:.1f} GiB "
                                   f"and {free / 2**30:.1f} GiB are available"}
            probe = self.probe(model, images.shape[0], run.resolution)
            return compare(model, images, labels, probe).as_dict() if probe is not None else None
        except Exception as exc:  # noqa: BLE001 (e.g. memory: the comparison holds every layer's output three times)
            return {"summary": f"the layer-by-layer comparison did not run: {type(exc).__name__}: {exc}"}

    def _validate(self, run: Run, out: Path, images, labels, logits, steps: int, spec: OptimizerSpec) -> Validation:
        validation = validate_with_runner(self.runner, str(out), run, images, labels, logits, steps, spec)
        if not validation.ok:
            layers = self.layer_report(run, images[0], labels[0])
            if layers:
                validation.extra["layers"] = layers
        return validation

    @abstractmethod
    def lower(self, run: Run, out: Path, spec: OptimizerSpec, batch_size: int, log: Callable[[str], None],
              split: Split | None = None) -> tuple[list[str], dict]:
        """Write the format's files and runner into ``out``; returns (trainable tensor names, manifest fields).

        With ``split``, the training model is the trained region (input: the prefix's features) and the
        prefix is written as ``prefix_file``, an inference model; a full inference model is still written."""

    def export(self, run: Run, out: Path, validate: bool = True, steps: int = 3, batch_size: int = 4,
               lr: float | None = None, log: Callable[[str], None] | None = None, dataset=None) -> Artifacts:
        """Build the artifacts in a hidden directory beside ``out`` and rename it to ``out`` once written and
        validated (a failed validation too: its manifest says so, and the files stay for inspection); a crash
        or an interruption leaves ``out`` as it was."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
            raise ExportError(f"{out} exists and is not an export directory (no {MANIFEST}): an export replaces its "
                              f"--out, so choose a new directory")
        with staged_dir(out) as build:
            result = self._build(run, build, validate, steps, batch_size, lr, log, dataset)
        result.out = out
        return result

    def _build(self, run: Run, out: Path, validate: bool, steps: int, batch_size: int, lr: float | None,
               log: Callable[[str], None] | None, dataset) -> Artifacts:
        log = log or (lambda message: None)
        spec = self.optimizer(run, lr)
        split = plan(run.model, run.resolution)
        trainable, own = self.lower(run, out, spec, batch_size, log, split)
        if split is not None:
            own = {**own, "split": split_entry(split, self.prefix_file)}
        images, labels, logits = write_reference(run, out, batch_size, steps, trainable, dataset)
        fields = {**manifest_fields(self, run, spec, trainable, batch_size if self.fixed_batch else None, batch_size,
                                    steps), **own}
        manifest, validation = validated_manifest(
            out, fields, validate, lambda: self._validate(run, out, images, labels, logits, steps, spec))
        return Artifacts(self.name, out, manifest, validation, list(run.notes))
