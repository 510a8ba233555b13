"""``edgetl evaluate`` and ``edgetl predict``: judge and use a model from a run, a checkpoint, a deploy result or an
export (which runs in its own runtime)."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .base import console, friendly_errors, main

SOURCE_HELP = "a run directory, a checkpoint (.pt), a deploy result (deploy --out) or an export directory"


class _Bar:
    """A rich progress bar over the images, started on the first batch (nothing is drawn for a refused input)."""

    def __init__(self, what: str):
        self.what, self.bar, self.task = what, None, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            err = Console(stderr=True)
            self.bar = Progress(TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=err, transient=True, disable=not err.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total)
        self.bar.update(self.task, completed=done)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _write(target: str, write_file, text: str) -> None:
    """``-`` prints ``text`` to standard output; any other target is a file ``write_file`` writes."""
    if target == "-":
        click.echo(text)
    else:
        write_file(target)
        Console(stderr=True).print(f"wrote {target}")


@main.command("evaluate")
@click.argument("source", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="an ImageFolder of labelled images: DIR/<class>/*.jpg, "
                                                              "class folders named as the model's classes")
@click.option("--json", "json_path", is_flag=False, flag_value="-", default=None, metavar="[PATH]",
              help="write the result as JSON (schema edgetl.eval/1) to PATH, or to standard output")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write the confusion matrix as a PNG")
@click.option("--batch-size", default=None, type=int,
              help="images per call [default: the export's fixed batch, else 16]")
@click.option("--threads", default=None, type=int, help="CPU threads of an export's runtime")
@friendly_errors
def evaluate_cmd(source, data, json_path, plot_path, batch_size, threads):
    """Accuracy, per-class precision and recall, and the confusion matrix of a model on labelled images."""
    import json

    from ..evaluate import evaluate
    from ..ui import print_evaluation

    with _Bar("evaluate") as bar:
        result = evaluate(source, data, batch_size=batch_size, threads=threads, progress=bar)
    if json_path != "-":
        print_evaluation(result, console)
    if json_path:
        _write(json_path, result.write_json, json.dumps(result.as_dict(), indent=2))
    if plot_path:
        result.plot_confusion(plot_path)
        Console(stderr=True).print(f"wrote {plot_path}")


@main.command("predict")
@click.argument("source", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=3, show_default=True, type=int, help="classes per image")
@click.option("--json", "json_path", is_flag=False, flag_value="-", default=None, metavar="[PATH]",
              help="the predictions as JSON (schema edgetl.predict/1), to PATH or standard output")
@click.option("--csv", "csv_path", is_flag=False, flag_value="-", default=None, metavar="[PATH]",
              help="one row per image and rank (image, rank, class, probability), to PATH or standard output")
@click.option("--batch-size", default=None, type=int,
              help="images per call [default: the export's fixed batch, else 16]")
@click.option("--threads", default=None, type=int, help="CPU threads of an export's runtime")
@friendly_errors
def predict_cmd(source, images, top_k, json_path, csv_path, batch_size, threads):
    """The most probable classes of images (files or folders), with their probabilities."""
    import json

    from ..evaluate import predict
    from ..ui import print_predictions

    if json_path == "-" and csv_path == "-":
        raise click.UsageError("--json and --csv cannot both go to standard output; give one of them a file")
    with _Bar("predict") as bar:
        preds = predict(source, list(images), top_k=top_k, batch_size=batch_size, threads=threads, progress=bar)
    if "-" not in (json_path, csv_path):
        print_predictions(preds, console)
    if json_path:
        _write(json_path, preds.write_json, json.dumps(preds.as_dict(), indent=2))
    if csv_path:
        if csv_path == "-":
            preds.write_csv(sys.stdout)
        else:
            _write(csv_path, preds.write_csv, "")
