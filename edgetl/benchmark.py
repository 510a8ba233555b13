"""``edgetl benchmark``: peak RSS, runtime baseline, step time and cached step time per policy and runtime.

    report = run_benchmark(BenchmarkConfig(model="mobilenet_v2", batch=8, resolution=224))
    write_json(report, "bench.json"); plot(report, "bench.png")          # the CLI also prints a table

Rows are policies (default ``full``, ``ft:5``, ``mobiletl:5``), columns runtimes (PyTorch, ONNX Runtime, TFLite).
For each policy a run is made (random weights with batch-norm statistics from data: speed and memory do not
depend on the weights) and exported per format, without validation (``bench/parity.py`` checks parity). Every
figure is then measured in fresh processes, the cells interleaved round-robin for ``rounds`` rounds, so that
machine noise hits every cell alike; medians are reported:

- PyTorch: :func:`edgetl.profile.step.measure_step` (edgetl's step, the prefix streamed at ``prefix_batch``):
  peak RSS, the baseline (torch imported, model built, batch allocated), step time, and the step time with the
  prefix's outputs given (what epochs after the first cost with ``--cache-features``).
- A device runner, run as a device runs it (its runtime and numpy only: torch, TensorFlow and edgetl cannot be
  imported): ``--baseline`` (runtime imported, models loaded), a run of ``epochs`` epochs over a small shard of
  the built-in patterns (the training loop's peak RSS, the peak with the results written as well, step time)
  and the same with ``--cache-features`` (the steps of epochs >= 2).
  With ``device`` the runner runs on that device through :func:`edgetl.devices.deploy.deploy`.

Next to each runner's measured peak stands what deploy predicts from its measured baseline
(:mod:`edgetl.devices.memory`), and next to each measured step memory (the training peak minus the baseline) the
analytic total of :mod:`edgetl.profile.analytic` for the same micro-batch and, for TFLite, the runtime's own plan:
the training subgraph's intermediates in the order the interpreter runs them, plus every variable.

Speed is also read per FLOP: the profiler's FLOPs of a step (and of a cached step: the trained region's forward and
the backward) over its time give the achieved GFLOP/s, beside the attainable rate of this machine, a float32 matrix
product at the same thread count (:mod:`edgetl.profile.peak`, measured in every round; the fastest round counts).
Every runtime runs at ``threads`` (default: every CPU), and the report records it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .devices.runner_cli import RunnerOptions, last_json
from .errors import ConfigError, EdgeTLError
from .exporters.manifest import Manifest
from .formats import FORMATS, display
from .limits import Limit, check_numbers
from .policies import parse_policy
from .prefix import check_prefix_batch

#: what a benchmark compares, by name, for people: PyTorch and each format with a device runner (the registry's)
RUNTIMES = {"pytorch": display("pytorch"), **{n: f.display for n, f in sorted(FORMATS.items()) if f.runner}}
#: a format's runner file, as an export copies it beside its artifacts
RUNNERS = {n: f"{f.runner}.py" for n, f in FORMATS.items() if f.runner}
FIGURES = ("peak_rss_bytes", "train_peak_rss_bytes", "baseline_rss_bytes", "step_seconds", "cached_step_seconds")
GFLOPS = (("step_gflops", "step_flops", "step_seconds"), ("cached_step_gflops", "cached_step_flops", "cached_step_seconds"))
RUN_TIMEOUT_S = 1800


@dataclass
class BenchmarkConfig:
    model: str = "mobilenet_v2"
    batch: int = 8
    resolution: int = 224
    policies: list[str] = field(default_factory=lambda: ["full", "ft:5", "mobiletl:5"])
    runtimes: list[str] = field(default_factory=lambda: list(RUNTIMES))
    rounds: int = 3
    steps: int = 3  # steps per epoch of the runners' shard, and timed steps of PyTorch
    epochs: int = 2  # runner epochs with the cache: epoch 1 fills it, the later ones read it
    optimizer: str = "adamw"
    prefix_batch: int | str | None = "auto"
    cache_dtype: str = "float32"
    device: str | None = None  # a device URI: the runners run there (PyTorch stays on this machine)
    threads: int | None = None

    def validate(self) -> None:
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown:
            raise ConfigError(f"unknown runtime {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
        check_numbers(batch_size=self.batch, rounds=(self.rounds, Limit(1, 1000)), steps=(self.steps, Limit(1, 10_000)),
                      epochs=(self.epochs, Limit(2, 1000, why="the cached step time is read from epochs after the first")),
                      resolution=self.resolution, threads=self.threads)
        check_prefix_batch(self.prefix_batch, self.batch)
        for policy in self.policies:  # a bad spec is refused before anything is exported or measured
            parse_policy(policy)


def blocked_env(work: Path) -> dict:
    """The environment of a device runner here: stand-ins that fail on import of torch, TensorFlow and edgetl."""
    block = work / "block"
    for name in ("torch", "tensorflow", "edgetl"):
        (block / name).mkdir(parents=True, exist_ok=True)
        (block / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported on the device')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(block)}


def random_run(root, model: str, policy: str, resolution: int, optimizer: str = "adamw", lr: float | None = None,
               seed: int = 0, class_names: list[str] | None = None):
    """A run directory holding a random ``model`` (batch-norm statistics from one random batch) with ``policy``
    applied, for the built-in patterns' classes: what memory and speed measurements need, and export tests."""
    import torch

    from .data import Patterns
    from .models import create_model
    from .optim import OptimizerSpec
    from .run import Run
    from .surgery import apply_policy
    from .trainer import calibrate_batchnorm

    class_names = list(class_names or Patterns.classes)
    torch.manual_seed(seed)
    net = create_model(model, num_classes=len(class_names))
    calibrate_batchnorm(net, [(torch.randn(8, 3, resolution, resolution), None)], batches=1)
    apply_policy(net, policy)
    Run.save(net, policy, None, root, class_names=class_names, resolution=resolution,
             optimizer=OptimizerSpec(optimizer, lr=lr), config={"data": "patterns", "seed": seed})
    return root


class _Local:
    """Runs a device runner in a fresh process on this machine, as a device would (no torch, no TF, no edgetl)."""

    def __init__(self, work: Path, threads: int | None):
        self.work, self.env, self.threads = work, blocked_env(work), threads

    def run(self, art: Path, fmt: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(art / RUNNERS[fmt]), "--artifacts", str(art), *args]
        cmd += ["--threads", str(self.threads)] if self.threads else []
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise EdgeTLError(f"the {RUNTIMES[fmt]} runner failed ({' '.join(args[:1])}): {tail}")
        return proc

    def baseline(self, art: Path, fmt: str, prefix_batch) -> int:
        out = self.run(art, fmt, "--baseline", *RunnerOptions(prefix_batch=prefix_batch).prefix_argv()).stdout
        return int(last_json(out)["baseline_rss_bytes"])

    def train(self, art: Path, fmt: str, shard: Path, cfg: BenchmarkConfig, cached: bool, tag: str) -> dict:
        out = self.work / f"out-{tag}"
        options = RunnerOptions(epochs=cfg.epochs if cached else 1, batch_size=cfg.batch, data=str(shard),
                                prefix_batch=cfg.prefix_batch, cache_features=cached, cache_dtype=cfg.cache_dtype)
        self.run(art, fmt, *options.argv(), "--out", str(out))
        metrics = json.loads((out / "metrics.json").read_text())
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # a finished run there would be continued, not repeated
        return metrics


class _Remote:
    """Runs a device runner on ``uri`` through the deploy machinery (bundle pushed, run, metrics pulled)."""

    def __init__(self, uri: str, work: Path):
        self.uri, self.work = uri, work

    def _deploy(self, art: Path, cfg: BenchmarkConfig, cached: bool, tag: str) -> dict:
        from .devices.deploy import deploy

        micro = cfg.prefix_batch
        return deploy(art, self.uri, epochs=cfg.epochs if cached else 1, data="patterns",
                      shard_size=cfg.batch * cfg.steps, out=self.work / f"deploy-{tag}", batch_size=cfg.batch,
                      prefix_batch=micro, cache_features=cached, cache_dtype=cfg.cache_dtype, force=True)

    def baseline(self, art: Path, fmt: str, prefix_batch, report=None) -> int | None:
        """The runner's baseline as deploy measured it there (``--baseline``, for its memory gate); ``report`` the
        deploy's :class:`~edgetl.devices.result.DeployResult`."""
        return report.baseline_bytes if report else None

    def train(self, art: Path, fmt: str, shard, cfg: BenchmarkConfig, cached: bool, tag: str) -> dict:
        report = self._deploy(art, cfg, cached, tag)
        metrics = json.loads((self.work / f"deploy-{tag}" / "metrics.json").read_text())
        metrics["_report"] = report
        return metrics


def _runner_sample(runner, art: Path, fmt: str, shard, cfg: BenchmarkConfig, split: bool, tag: str) -> dict:
    plain = runner.train(art, fmt, shard, cfg, False, tag + "-plain")
    times = plain["step_seconds"][1:] or plain["step_seconds"]  # the first step warms up
    # train_peak: the training loop's peak; peak: with the results written too (reading every variable back)
    sample = {"peak_rss_bytes": plain["peak_rss_bytes"], "train_peak_rss_bytes": plain.get("train_peak_rss_bytes"),
              "step_seconds": statistics.median(times), "threads": plain.get("threads"),
              "prefix_batch": plain.get("prefix_batch"), "cached_step_seconds": None}
    if isinstance(runner, _Remote):
        sample["baseline_rss_bytes"] = runner.baseline(art, fmt, cfg.prefix_batch, plain.get("_report"))
    else:
        sample["baseline_rss_bytes"] = runner.baseline(art, fmt, cfg.prefix_batch)
    if split:
        cached = runner.train(art, fmt, shard, cfg, True, tag + "-cached")
        first = cached["epochs"][0].get("steps") or len(cached["step_seconds"]) // len(cached["epochs"])
        sample["cached_step_seconds"] = statistics.median(cached["step_seconds"][first:])
        sample["cache"] = cached.get("cache")
    return sample


def _median(samples: list[dict]) -> dict:
    out = {}
    for k in FIGURES:
        values = [s[k] for s in samples if s.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    out["prefix_batch"] = samples[0].get("prefix_batch")
    out["rounds"] = len(samples)
    return out


def run_benchmark(cfg: BenchmarkConfig, log: Callable[[str], None] = lambda msg: None,
                  work: str | Path | None = None) -> dict:
    """Measure every (policy, runtime) cell, interleaved for ``cfg.rounds`` rounds; returns the report (a dict)."""
    cfg.validate()
    from .data import pack_uint8_shard
    from .exporters import export
    from .profile.analytic import analyze
    from .profile.peak import matmul_peak
    from .profile.step import measure_step

    if not cfg.threads and not cfg.device:
        cfg.threads = os.cpu_count()  # recorded as run: every runtime gets the same count
    peaks = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp)
        runner = _Remote(cfg.device, root) if cfg.device else _Local(root, cfg.threads)
        shard = root / "shard"
        if any(r in RUNNERS for r in cfg.runtimes) and not cfg.device:
            pack_uint8_shard("patterns", cfg.resolution, shard, count=cfg.batch * cfg.steps)
        arts, splits, analytic, plans = {}, {}, {}, {}
        for policy in cfg.policies:
            prof = analyze(cfg.model, policy, cfg.resolution, num_classes=5)
            splits[policy] = prof.split
            flops = {"step_flops": prof.training_flops(cfg.batch),
                     "cached_step_flops": prof.training_flops(cfg.batch, cached=True) if prof.split else None}
            micro = prof.auto_prefix_batch(cfg.batch) if cfg.prefix_batch == "auto" else cfg.prefix_batch
            analytic[policy] = {"training_memory_bytes": prof.totals(cfg.batch, cfg.optimizer, micro)[
                "training_memory_bytes"], "unstreamed_memory_bytes": prof.totals(cfg.batch, cfg.optimizer)[
                "training_memory_bytes"], "prefix_batch": micro if prof.split else None, **flops}
            fmts = [r for r in cfg.runtimes if r in RUNNERS]
            if fmts:
                run = random_run(root / f"run-{policy.replace(':', '')}", cfg.model, policy, cfg.resolution)
                for fmt in fmts:
                    log(f"exporting {policy} as {fmt}")
                    art = root / f"{fmt}-{policy.replace(':', '')}"
                    export(run, fmt, art, validate=False, batch_size=cfg.batch)
                    arts[policy, fmt] = art
                    plans[policy, fmt] = Manifest.load(art).planned_bytes
        cells = [(p, r) for p in cfg.policies for r in cfg.runtimes]
        samples: dict[tuple, list] = {c: [] for c in cells}
        for rnd in range(cfg.rounds):
            if not cfg.device:  # the device's own rate is not measured: this machine's would mislead
                log(f"round {rnd + 1}/{cfg.rounds}: float32 matmul at {cfg.threads} threads")
                peaks.append(matmul_peak(cfg.threads))
            for policy, rt in cells:
                log(f"round {rnd + 1}/{cfg.rounds}: {policy} on {RUNTIMES[rt]}")
                tag = f"{rt}-{policy.replace(':', '')}-{rnd}"
                if rt == "pytorch":
                    m = measure_step(cfg.model, policy, cfg.batch, cfg.resolution, cfg.optimizer, cfg.prefix_batch,
                                     cached=bool(splits[policy]), steps=cfg.steps, threads=cfg.threads)
                    m["cached_step_seconds"] = m.get("cached_step_seconds")
                    m["train_peak_rss_bytes"] = m["peak_rss_bytes"]  # the step alone: no results to write
                    samples[policy, rt].append(m)
                else:
                    samples[policy, rt].append(_runner_sample(runner, arts[policy, rt], rt, shard, cfg,
                                                              bool(splits[policy]), tag))
        predicted = {cell: _predicted(arts[cell], cfg.batch, _median(samples[cell])["baseline_rss_bytes"])
                     for cell in cells if cell in arts}
    rows = []
    for policy, rt in cells:
        med = _median(samples[policy, rt])
        step = (med["train_peak_rss_bytes"] - med["baseline_rss_bytes"]) if med["baseline_rss_bytes"] else None
        row = {"policy": policy, "runtime": rt, **med, "step_rss_bytes": step,
               "analytic_bytes": analytic[policy]["training_memory_bytes"],
               "analytic_unstreamed_bytes": analytic[policy]["unstreamed_memory_bytes"],
               "planned_bytes": plans.get((policy, rt)), "predicted_bytes": predicted.get((policy, rt)),
               "threads": samples[policy, rt][0].get("threads"),
               "where": cfg.device if cfg.device and rt != "pytorch" else "local://"}
        for gflops, flops, seconds in GFLOPS:
            row[flops] = analytic[policy][flops]
            row[gflops] = row[flops] / row[seconds] / 1e9 if row[flops] and row[seconds] else None
        rows.append(row)
    best = max(peaks, key=lambda p: p["gflops"]) if peaks else None
    return {"format": "edgetl.benchmark/1", "config": asdict(cfg), "rows": rows,
            "peak": {"threads": best["threads"], "gflops": best["gflops"], "rounds": [p["gflops"] for p in peaks]}
            if best else None}


def _predicted(art: Path, batch: int, baseline: int | None) -> int | None:
    """What deploy predicts for this cell (:mod:`edgetl.devices.memory`), from the baseline measured here."""
    from .devices.memory import predict

    if not baseline:
        return None
    return predict(Manifest.load(art), batch, baseline, art).total_bytes


def measure_artifacts(artifacts: list, cfg: BenchmarkConfig, log: Callable[[str], None] = lambda msg: None,
                      work: str | Path | None = None) -> list[dict]:
    """Measure export directories as they are, as a runner cell above (interleaved for ``cfg.rounds`` rounds,
    medians): two builds of one export side by side, or an export made elsewhere. One row per directory."""
    from .data import pack_uint8_shard

    arts = [Path(a) for a in artifacts]
    manifests = [Manifest.load(a) for a in arts]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp)
        runner, shard = _Local(root, cfg.threads), root / "shard"
        pack_uint8_shard("patterns", manifests[0].resolution, shard, count=cfg.batch * cfg.steps)
        samples: list[list[dict]] = [[] for _ in arts]
        for rnd in range(cfg.rounds):
            for i, (art, manifest) in enumerate(zip(arts, manifests)):
                log(f"round {rnd + 1}/{cfg.rounds}: {art}")
                samples[i].append(_runner_sample(runner, art, manifest.format, shard, cfg,
                                                 manifest.split is not None, f"{i}-{rnd}"))
    return [{"artifacts": str(art), "policy": m.policy, "runtime": m.format, **_median(s),
             "planned_bytes": m.planned_bytes} for art, m, s in zip(arts, manifests, samples)]


def write_json(report: dict, path) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def plot(report: dict, path) -> None:
    """Three panels per policy and runtime: the training peak RSS (the runtime baseline shaded), step time (uncached,
    cached), and achieved GFLOP/s beside the machine's float32 matmul peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{r['policy']}\n{RUNTIMES[r['runtime']]}" for r in rows]
    mib = [(r.get("train_peak_rss_bytes") or r["peak_rss_bytes"] or 0) / 2**20 for r in rows]
    base = [(r["baseline_rss_bytes"] or 0) / 2**20 for r in rows]
    xs = range(len(rows))
    fig, (a, b, g) = plt.subplots(3, 1, figsize=(max(7, 0.9 * len(rows)), 9), sharex=True)
    a.bar(xs, mib, color="#d95f02", label="training peak RSS")
    a.bar(xs, base, color="#b3b3b3", label="runtime baseline (imported, loaded)")
    a.set_ylabel("MiB")
    a.legend(fontsize=8)
    for axis, keys, unit in ((b, ("step_seconds", "cached_step_seconds"), "ms"),
                             (g, ("step_gflops", "cached_step_gflops"), "GFLOP/s")):
        scale = 1000 if unit == "ms" else 1
        for shift, key, color, name in ((-0.2, keys[0], "#1b9e77", "step"),
                                        (0.2, keys[1], "#7570b3", "step with the feature cache")):
            axis.bar([x + shift for x in xs], [scale * (r.get(key) or 0) for r in rows], width=0.4, color=color,
                     label=name)
        axis.set_ylabel(unit)
    peak = report.get("peak")
    if peak:
        g.axhline(peak["gflops"], color="#e7298a", linestyle="--",
                  label=f"float32 matmul, {peak['threads']} threads: {peak['gflops']:,.0f}")
    b.legend(fontsize=8)
    g.legend(fontsize=8)
    g.set_xticks(list(xs), labels, fontsize=7)
    c = report["config"]
    fig.suptitle(f"{c['model']}, batch {c['batch']}, {c['resolution']}x{c['resolution']}, {c['optimizer']}, "
                 f"prefix batch {c['prefix_batch']}, {c.get('threads') or 'default'} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
