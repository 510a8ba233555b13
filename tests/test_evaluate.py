"""edgetl evaluate / predict on the laptop: any model source, checked against an independent loop over the images."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.data import eval_transform
from edgetl.evaluate import EvalResult, evaluate, predict
from edgetl.run import Run
from edgetl.sources import SourceError, open_source

from .conftest import make_image_folder
from .exportutil import PATTERN_CLASSES, decisive_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return decisive_run(tmp_path_factory.mktemp("eval") / "run")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Pattern images of four of the five classes (one class absent), odd sizes and modes, one corrupt file."""
    root = make_image_folder(tmp_path_factory.mktemp("evaldata") / "test", classes=PATTERN_CLASSES[:4], per_class=5,
                             size=48)
    Image.open(root / "dots" / "000.png").convert("L").resize((70, 40)).save(root / "dots" / "gray.jpg")
    Image.open(root / "checkerboard" / "001.png").convert("RGBA").resize((30, 90)).save(root / "checkerboard" / "rgba.png")
    (root / "stripes_vertical" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def reference(run_dir, folder):
    """The independent loop: every readable file, torchvision's eval transform, the model, numpy's statistics."""
    run = Run.load(run_dir)
    model = run.model.eval()
    tf = eval_transform(run.resolution)
    rows = []
    for label, name in enumerate(run.class_names):
        d = folder / name
        for path in sorted(d.iterdir()) if d.is_dir() else []:
            try:
                with Image.open(path) as im:
                    x = tf(im.convert("RGB"))
            except Exception:
                continue
            with torch.no_grad():
                logits = model(x[None]).double()[0]
            rows.append((str(path), label, logits))
    return run, rows


def test_evaluate_a_run_matches_an_independent_loop(run_dir, folder):
    run, rows = reference(run_dir, folder)
    result = evaluate(run_dir, folder)
    n = len(run.class_names)
    confusion = np.zeros((n, n), int)
    loss = 0.0
    for _, label, logits in rows:
        confusion[label, int(logits.argmax())] += 1
        loss -= float(torch.log_softmax(logits, 0)[label])
        margin = torch.topk(logits, 2).values
        assert margin[0] - margin[1] > 1e-3  # no tie: both sides must agree on every image
    assert result.images == len(rows) == 4 * 5 + 2
    assert result.confusion == confusion.tolist()
    assert result.top1 == pytest.approx(np.trace(confusion) / len(rows))
    assert result.top5 is None  # five classes: top-5 would always be 1
    assert result.loss == pytest.approx(loss / len(rows), rel=1e-5)
    for i, row in enumerate(result.per_class):
        predicted, actual = confusion[:, i].sum(), confusion[i].sum()
        assert row["support"] == actual
        assert row["recall"] == (pytest.approx(confusion[i, i] / actual) if actual else None)
        assert row["precision"] == (pytest.approx(confusion[i, i] / predicted) if predicted else None)
    assert result.skipped_unreadable == 1 and "broken.jpg" in result.unreadable[0]
    assert any("rings" in note for note in result.notes)  # the class without a folder is said, not refused


def test_predict_gives_the_top_classes_and_probabilities_of_an_independent_softmax(run_dir, folder):
    run, rows = reference(run_dir, folder)
    preds = predict(run_dir, [folder], top_k=3)
    got = {r.image: r.top for r in preds.rows}
    assert len(got) == len(rows)
    for path, _, logits in rows:
        p = torch.softmax(logits, 0)
        top = torch.topk(p, 3)
        assert [c for c, _ in got[path]] == [run.class_names[i] for i in top.indices]
        assert [q for _, q in got[path]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [u["image"] for u in preds.unreadable] == [str(folder / "stripes_vertical" / "broken.jpg")]


@pytest.mark.slow  # the exports take half a minute
@pytest.mark.parametrize("v3_export", ["onnx", "tflite"], indirect=True)
def test_an_export_is_evaluated_in_its_own_runtime_with_the_numbers_of_its_run(v3_export, tmp_path):
    data = make_image_folder(tmp_path / "d", classes=PATTERN_CLASSES, per_class=3, size=40)
    source = open_source(v3_export.art)
    assert source.kind == "export" and source.runtime == {"onnx": "onnxruntime-training", "tflite": "ai-edge-litert"}[
        v3_export.fmt]
    on_export, on_torch = evaluate(v3_export.art, data), evaluate(v3_export.run, data)
    assert on_export.images == on_torch.images == 15
    assert on_export.loss == pytest.approx(on_torch.loss, abs=1e-4)
    ours, theirs = predict(v3_export.art, [data], top_k=5), predict(v3_export.run, [data], top_k=5)
    for a, b in zip(ours.rows, theirs.rows):
        assert dict(a.top) == pytest.approx(dict(b.top), abs=1e-4)


def test_cli_evaluate_and_predict_from_a_working_directory(run_dir, folder, tmp_path, monkeypatch):
    """The README's commands as written: relative paths, from the user's working directory."""
    monkeypatch.chdir(tmp_path)
    os.symlink(run_dir, "run")
    os.symlink(folder, "test")
    r = CliRunner().invoke(main, ["evaluate", "run", "--data", "test", "--json", "eval.json", "--plot", "confusion.png"])
    assert r.exit_code == 0, r.output
    saved = json.loads(open("eval.json").read())
    assert saved["schema"] == "edgetl.eval/1" and saved["images"] == 22 and saved["skipped_unreadable"] == 1
    assert EvalResult.from_dict(saved).confusion == evaluate(run_dir, folder).confusion
    assert Image.open("confusion.png").size[0] > 300
    assert "top-1" in r.output and "1 unreadable skipped" in r.output
    r = CliRunner().invoke(main, ["predict", "run", "test/dots", "test/rings_missing.jpg"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["predict", "run", "test/dots", "--top-k", "2", "--csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 2 * 6 and rows[0]["rank"] == "1" and {row["class"] for row in rows} <= set(PATTERN_CLASSES)
    r = CliRunner().invoke(main, ["predict", "run", "test/dots/000.png", "--json"])
    assert json.loads(r.output)["predictions"][0]["image"].endswith("test/dots/000.png")


def test_bad_input_is_one_line_naming_the_fix(run_dir, folder, tmp_path):
    def refused(*args) -> str:
        r = CliRunner().invoke(main, list(map(str, args)))
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        return r.output

    (tmp_path / "empty" / "dots").mkdir(parents=True)
    assert "holds no images" in refused("evaluate", run_dir, "--data", tmp_path / "empty")
    make_image_folder(tmp_path / "other", classes=("dots",), per_class=1)
    (tmp_path / "other" / "cats").mkdir()
    (tmp_path / "other" / "dots" / "000.png").rename(tmp_path / "other" / "cats" / "000.png")
    assert "extra cats" in refused("evaluate", run_dir, "--data", tmp_path / "other")
    assert "does not exist" in refused("evaluate", tmp_path / "nothing", "--data", folder)
    # a deploy result whose run is gone
    result = tmp_path / "deployed"
    result.mkdir()
    (result / "report.json").write_text(json.dumps({"source_run": str(tmp_path / "gone"), "model": "x"}))
    np.savez(result / "params.npz", x=np.zeros(1, np.float32))
    assert "copy that run directory back" in refused("evaluate", result, "--data", folder)
    with pytest.raises(SourceError, match="holds no PyTorch model"):
        from edgetl.sources import load_run

        (tmp_path / "art").mkdir()
        (tmp_path / "art" / "manifest.json").write_text(json.dumps({"source_run": "runs/x"}))
        load_run(tmp_path / "art")


@pytest.mark.slow  # the exports take half a minute
@pytest.mark.parametrize("v3_export", ["tflite"], indirect=True)
def test_an_export_whose_runtime_is_not_installed_names_the_install(v3_export, tmp_path):
    block = tmp_path / "block"
    for name in ("ai_edge_litert", "tflite_runtime"):
        (block / name).mkdir(parents=True)
        (block / name / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(block)}
    data = make_image_folder(tmp_path / "d", classes=PATTERN_CLASSES[:2], per_class=1)
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli", "evaluate", str(v3_export.art), "--data", str(data)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in proc.stderr
    assert "TFLite runtime" in line or "not installed" in line
