"""What a person sees: progress bars, notes and check lists, as callbacks the library calls (it draws nothing).

    trainer = edgetl.Trainer(model, data, callbacks=[ProgressBar()])     # a bar per epoch and a line after it
    show_notes()                                                         # the library's notes as "note: ..." lines
    print_checklist(result.validation.checks)                            # an export's ✓/✗ list
    with DeployProgress() as events: report = deploy(..., events=events)  # push and training bars

The CLI uses the same pieces; notebooks and scripts may use them or not.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .devices.deploy import DeployEvents
from .formats import display
from .trainer import Callback
from .units import mib


class ProgressBar(Callback):
    """A rich progress bar per epoch, and one summary line after it."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.bar: Progress | None = None

    def on_fit_start(self, trainer):
        columns = [TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn()]
        self.bar = Progress(*columns, console=self.console, disable=not self.enabled)
        self.bar.start()

    def on_epoch_start(self, trainer, epoch):
        self.task = self.bar.add_task("train", total=trainer.steps_per_epoch, epoch=epoch + 1, epochs=trainer.epochs,
                                      loss=0.0)

    def on_step_end(self, trainer, step, loss):
        self.bar.update(self.task, completed=step, loss=loss)

    def on_epoch_end(self, trainer, record):
        val = (f"  val loss {record['val_loss']:.4f}  acc {record['val_acc']:.3f}" if record["val_acc"] is not None
               else "")
        self.console.print(f"epoch {record['epoch']}/{trainer.epochs}  train loss {record['train_loss']:.4f}  "
                           f"acc {record['train_acc']:.3f}{val}  ({record['seconds']:.1f}s)", soft_wrap=True)

    def on_fit_end(self, trainer, result):
        self.bar.stop()


class _NoteHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record):
        self.console.print(f"[yellow]note:[/] {record.getMessage()}", soft_wrap=True, highlight=False)


def show_notes(console: Console | None = None) -> logging.Handler:
    """Print what the library says on the ``edgetl`` logger as ``note: ...`` lines; returns the handler."""
    logger = logging.getLogger("edgetl")
    for h in list(logger.handlers):
        if isinstance(h, _NoteHandler):
            logger.removeHandler(h)
    handler = _NoteHandler(console or Console(stderr=True))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def print_checklist(checks, console: Console | None = None, title: str = "validation") -> None:
    """An export's checks as a ✓/✗ list, each with its largest difference and tolerance."""
    console = console or Console(stderr=True)
    console.print(f"[bold]{title}[/]")
    for c in checks:
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        console.print(f"  {mark} {c.name}: max |diff| {c.max_diff:.3g} (tolerance {c.tolerance:.3g}); {c.detail}",
                      soft_wrap=True, highlight=False)


class DeployProgress(DeployEvents):
    """A deploy as a person follows it: the device, a push bar, the on-device checks, a training bar."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.fields[detail]}"), TimeRemainingColumn(), console=self.console)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def _update(self, name: str, done: int, total: int, detail: str) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total, detail=detail)
        self.bar.update(self.tasks[name], completed=done, total=total, detail=detail)

    def message(self, text):
        self.console.print(text, soft_wrap=True, highlight=False)

    def device(self, info):
        self.message(f"device: {info.model or info.os} ({info.arch}, {info.cpus} CPUs, "
                     f"{info.mem_available_bytes / 2**20:,.0f} MiB available, Python {info.python} at {info.python_bin})")

    def push(self, done, total):
        self._update("push", done, total, f"{done / 2**20:.1f}/{total / 2**20:.1f} MB")

    def verified(self, checks):
        for c in checks:
            mark = "[green]✓[/]" if c["ok"] else "[red]✗[/]"
            self.console.print(f"  {mark} on device: {c['name']}: max |diff| {c['max_diff']:.3g} (tolerance "
                               f"{c['tolerance']:.3g})", highlight=False)

    def step(self, step, steps, loss):
        self._update("train", step, steps, f"{step}/{steps} loss {loss}")

    def images(self, done, total):
        self._update("images", done, total, f"{done}/{total} on the device")

    def epoch(self, record):
        of = f"/{record['epochs']}" if record.get("epochs") else ""
        val = (f"  val acc {record['val_acc']:.3f}  val loss {record['val_loss']:.4f} ({record['val_images']} images)"
               if record.get("val_acc") is not None else "")
        skipped = f"  ({record['skipped_unreadable']} unreadable skipped)" if record.get("skipped_unreadable") else ""
        self.message(f"epoch {record['epoch']}{of} on the device  train loss {record['train_loss']:.4f}{val}{skipped}")


def print_deploy_report(result, console: Console | None = None) -> None:
    """A deploy's :class:`~edgetl.devices.result.DeployResult` as a table (training) or its predictions/evaluation."""
    console = console or Console(stderr=True)
    if result.mode in ("predict", "evaluate"):
        _print_device_use(result, console)
        return
    table = Table(title=f"deploy to {result.device_name}")
    table.add_column("")
    table.add_column("")
    losses, data, epochs = result.losses, result.data or {}, result.epochs
    where = {"device": f"on the device, {data.get('path')} (never sent back)",
             "pushed": f"pushed {data.get('shard')} ({data.get('shard_bytes', 0) / 2**20:.1f} MiB, {data.get('format')})",
             "reference": "the export's reference batches"}.get(data.get("source"), "")
    rows = [("model", f"{result.model} {result.policy} ({result.format})"), ("data", where),
            ("images", f"{data.get('train_images')} train, {data.get('val_images')} validation"
                       + (f", {data['skipped_unreadable']} unreadable skipped" if data.get("skipped_unreadable") else "")),
            ("steps", f"{result.steps} at batch {result.batch_size}"
                      + (f", {len(epochs)} epoch(s)" if epochs else "")
                      + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else "")),
            ("loss", f"{losses[0]:.4f} -> {losses[-1]:.4f}")]
    accs = [f"{e['val_acc']:.3f}" for e in epochs if e.get("val_acc") is not None]
    if accs:
        rows.append(("val accuracy", " -> ".join(accs) + " (per epoch, on the device)"))
    held_out = result.eval
    if held_out:
        rows.append(("held-out accuracy", f"{_pct(held_out['before']['top1'])} before -> {_pct(held_out['after']['top1'])} "
                                          f"after training ({held_out['after']['images']} images on the device, "
                                          f"{held_out['path']})"))
    if result.images_left_device is not None:
        rows.append(("privacy", "images stayed on the device" if not result.images_left_device else "images left the device"))
    for key, value in [*rows,
                       ("step time", f"{1000 * result.median_step_seconds:.0f} ms (median)"),
                       ("peak RSS", f"{result.peak_rss_bytes / 2**20:,.0f} MiB on the device "
                                    f"(predicted {result.predicted_memory_bytes / 2**20:,.0f} MiB)"),
                       ("results", str(result.out))]:
        table.add_row(key, value)
    console.print(table)


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (as the user typed it, most often)."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _print_device_use(result, console: Console) -> None:
    """A ``deploy --predict`` or ``--evaluate``: what the device computed, with the weights it used."""
    from .evaluate import EvalResult, Predictions

    source = {"model": result.model, "policy": result.policy, "kind": f"on {result.device_name}"}
    if result.mode == "evaluate":
        print_evaluation(EvalResult.from_dict(result.evaluation, source), console,
                         title=f"{result.model} {result.policy} evaluated on {result.device_name}")
    else:
        print_predictions(Predictions.from_dict(result.predictions, source), console)
    console.print(f"weights: {result.weights}; the images stayed on the device; results in {result.out}",
                  highlight=False, soft_wrap=True)


class FleetTable:
    """The live per-round table of ``edgetl fleet run``: one row per round as it ends (a FleetEvents)."""

    HEADER = (f"{'round':>5}  {'answered':>8}  {'loss':>7}  {'eval acc':>8}  {'on':>6}  {'sent':>9}  {'received':>9}  "
              f"{'seconds':>7}  note")

    def __init__(self, console: Console):
        self.console, self.devices, self.header = console, 0, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def message(self, text: str) -> None:
        self.console.print(text, style="yellow" if text.startswith("WARNING") else None, markup=False)

    def device(self, uri: str, info) -> None:
        self.devices += 1
        self.console.print(f"{uri.split('?')[0]}: {info.arch} {info.os}, Python {info.python}", markup=False)

    def refused(self, record: dict) -> None:
        self.console.print(f"refused {record.get('label') or record['node']}: {record['reason']}", style="red", markup=False)

    def round(self, r: dict) -> None:
        if not self.header:  # a resumed run has no round 0 to open the table
            self.console.print(self.HEADER, style="bold")
            self.header = True
        if r.get("event") == "start":
            self.console.print(f"{0:>5}  {'':>8}  {'':>7}  {100 * r['eval_acc']:>7.1f}%  {r['eval_images']:>6}",
                               markup=False)
            return
        loss = f"{r['train_loss']:.3f}" if r.get("train_loss") is not None else "-"
        acc = f"{100 * r['eval_acc']:.1f}%" if r.get("eval_acc") is not None else "-"
        notes = [f"lost {', '.join(r.get('lost_devices') or map(str, r['lost']))}"] if r.get("lost") else []
        notes += [f"rejoined {', '.join(r['rejoined'])}"] if r.get("rejoined") else []
        note = r.get("skipped") or "; ".join(notes)
        self.console.print(f"{r['round']:>5}  {len(r.get('answered', [])):>3}/{len(r.get('sampled', [])):<4}  {loss:>7}  "
                           f"{acc:>8}  {r.get('eval_images', '-'):>6}  {mib(r.get('bytes_sent', 0)) + ' MiB':>9}  "
                           f"{mib(r.get('bytes_received', 0)) + ' MiB':>9}  "
                           f"{r.get('seconds', 0):>7.1f}  {note}", markup=False)


def _ms(s) -> str:
    return f"{1000 * s:,.0f}" if s is not None else "-"


def print_benchmark(report: dict, console: Console | None = None) -> None:
    """The ``edgetl benchmark`` tables, memory and speed: one row per (policy, runtime), with the ratios the targets
    speak of."""
    console = console or Console()
    c, rows = report["config"], report["rows"]
    setting = (f"{c['model']}, batch {c['batch']}, {c['resolution']}x{c['resolution']}, {c['optimizer']}, "
               f"prefix batch {c['prefix_batch']}, {c.get('threads') or 'default'} threads")
    table = Table(title=f"Memory: {setting}: medians of {c['rounds']} interleaved round(s)")
    for col in ("policy", "runtime", "training peak MiB", "peak with results MiB", "predicted MiB", "baseline MiB",
                "step MiB (training peak - baseline)", "analytic MiB", "measured / analytic", "runtime plan MiB",
                "vs ft training peak"):
        table.add_column(col, justify="left" if col in ("policy", "runtime") else "right")
    ft = {r["runtime"]: r for r in rows if r["policy"].startswith("ft:")}
    for r in rows:
        step, analytic = r.get("step_rss_bytes"), r.get("analytic_bytes")
        ref = ft.get(r["runtime"])
        table.add_row(
            r["policy"], display(r["runtime"]),
            mib(r.get("train_peak_rss_bytes"), 0), mib(r["peak_rss_bytes"], 0), mib(r.get("predicted_bytes"), 0),
            mib(r["baseline_rss_bytes"], 0), mib(step, 0),
            mib(analytic, 0),
            f"{step / analytic:.2f}" if step and analytic else "-", mib(r.get("planned_bytes"), 0),
            f"{r['train_peak_rss_bytes'] / ref['train_peak_rss_bytes']:.2f}" if ref and r.get("train_peak_rss_bytes")
            else "-")
    console.print(table)
    peak = report.get("peak")
    table = Table(title=f"Speed: {setting}; float32 matmul peak "
                        + (f"{peak['gflops']:,.0f} GFLOP/s" if peak else "not measured (a device)"))
    for col in ("policy", "runtime", "step ms", "cached step ms", "cached / uncached", "step / PyTorch's",
                "cached / PyTorch's", "step GFLOP/s", "cached GFLOP/s", "cached / peak"):
        table.add_column(col, justify="left" if col in ("policy", "runtime") else "right")
    torch = {r["policy"]: r for r in rows if r["runtime"] == "pytorch"}
    for r in rows:
        ref = torch.get(r["policy"]) if r["runtime"] != "pytorch" else None
        cached = r.get("cached_step_gflops")
        table.add_row(
            r["policy"], display(r["runtime"]), _ms(r["step_seconds"]), _ms(r["cached_step_seconds"]),
            _ratio(r["cached_step_seconds"], r["step_seconds"]),
            _ratio(r["step_seconds"], ref and ref["step_seconds"]),
            _ratio(r["cached_step_seconds"], ref and ref["cached_step_seconds"]),
            _gflops(r.get("step_gflops")), _gflops(cached), _ratio(cached, peak and peak["gflops"]))
    console.print(table)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _gflops(g) -> str:
    return f"{g:,.0f}" if g else "-"


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if x is not None else "-"


def print_evaluation(result, console: Console | None = None, title: str | None = None) -> None:
    """An :class:`~edgetl.evaluate.EvalResult`: accuracy, then per-class precision, recall and support."""
    console = console or Console()
    s = result.source
    where = s.get("runtime") if s.get("runtime") else s.get("weights", "")
    table = Table(title=title or f"{s.get('model', '')} {s.get('policy') or ''} ({s.get('kind', 'device')}, {where}) "
                                 f"on {_shown(result.data)}")
    for col in ("class", "precision", "recall", "images"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in result.per_class:
        table.add_row(row["class"], _pct(row["precision"]), _pct(row["recall"]), str(row["support"]))
    console.print(table)
    top5 = f"  top-5 {_pct(result.top5)}" if result.top5 is not None else ""
    skipped = f", {result.skipped_unreadable} unreadable skipped" if result.skipped_unreadable else ""
    loss = f"  loss {result.loss:.4f}" if result.loss is not None else ""
    console.print(f"[bold]top-1 {_pct(result.top1)}[/]{top5}{loss}  ({result.images} images{skipped})", highlight=False)
    for line in result.unreadable[:5]:
        console.print(f"  [yellow]unreadable:[/] {line}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def print_predictions(preds, console: Console | None = None) -> None:
    """A :class:`~edgetl.evaluate.Predictions` table: each image with its top classes and probabilities."""
    import os

    console = console or Console()
    paths = [r.image for r in preds.rows]
    base = _shown(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else ""
    table = Table(title=f"{preds.source.get('model', '')} {preds.source.get('policy') or ''} "
                        f"({preds.source.get('kind', 'device')}): top {preds.top_k}" + (f", images in {base}" if base else ""))
    table.add_column("image")
    for rank in range(1, preds.top_k + 1):
        table.add_column(f"#{rank}")
    for r in preds.rows:
        cells = [f"{c} {100 * p:.1f}%" for c, p in r.top]
        table.add_row(os.path.relpath(os.path.abspath(r.image), os.path.abspath(base)) if base else r.image, *cells,
                      *[""] * (preds.top_k - len(cells)))
    console.print(table)
    for bad in preds.unreadable:
        console.print(f"[yellow]unreadable, skipped:[/] {bad['image']} ({bad['error']})", highlight=False, soft_wrap=True)
