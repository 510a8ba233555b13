"""What a format is, as plain data: the registry (:mod:`edgetl.formats`) holds one :class:`Format` per format.

    fmt = FORMATS["tflite"]
    fmt.runtime.requirement          # what `edgetl devices setup` installs on a device (a :class:`Runtime`)
    fmt.runner, fmt.display          # the device runner's module under edgetl/runtime/, the name people read

Nothing here imports a backend or another edgetl module, so every layer, core included, may read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """A device runtime: its pins and the platforms it has wheels for (checked with ``pip download --platform``;
    a test holds pyproject.toml to the pins)."""

    name: str  # as an export's manifest names it
    option: str  # `edgetl devices setup --runtime OPTION`: the format's name
    requirement: str  # what setup installs (pinned)
    dists: tuple[str, ...]  # distributions that provide it, as a probe lists them
    module: str  # what it imports as (setup's health check looks for it)
    platforms: tuple[tuple[str, str], ...]  # (platform.system(), platform.machine()) with wheels
    python: tuple[tuple[int, int], tuple[int, int]]  # oldest and newest CPython with wheels
    where: str  # the platforms, for a person
    instead: str = ""  # where the runtime has no wheel: what to do instead, appended to the refusal

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]

    @property
    def dist(self) -> str:
        """The distribution setup installs (the requirement's name)."""
        return self.requirement.split("==")[0]

    def python_range(self) -> str:
        (a, b), (c, d) = self.python
        return f"Python {a}.{b}-{c}.{d}"


@dataclass(frozen=True)
class Format:
    """One export format: what the exporter, the devices, the fleet, the benchmark and the CLI need to know of it.

    A format without a ``runtime`` (or ``runner``) exports but cannot be deployed: deploy refuses it by name."""

    name: str  # `edgetl export --format NAME`, an export manifest's ``format``
    display: str  # for people: tables, messages
    exporter: str  # "module:Class" of its :class:`edgetl.exporters.base.Exporter`, imported when used
    extra: str  # the pip extra that installs it on this computer (`pip install 'edgetl[EXTRA]'`)
    summary: str = ""  # what an export holds, in a few words (`edgetl export --help`)
    runtime: Runtime | None = None  # the device runtime training exports run in
    runner: str | None = None  # the device runner module under edgetl/runtime/ (a self-contained file)
    inference_runtime: str | None = None  # an inference export's runtime (its runner runs it too)
    #: setup's self-test: the module (runtime and numpy only; ``check(folder, x, y, steps, lr)`` returns the losses of
    #: a few steps) and the micro models it reads, relative to the format's package
    selftest: tuple[str, ...] = ()
    baked: str | None = None  # the file a runner's results bake with the trained weights (deploy's memory)

    @property
    def package(self) -> str:
        """The format's package (its exporter's), where its self-test files are."""
        return self.exporter.partition(":")[0].rpartition(".")[0]

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Every runtime name an export of this format may carry in its manifest."""
        names = (self.runtime.name if self.runtime else None, self.inference_runtime)
        return tuple(dict.fromkeys(n for n in names if n))
