"""Inference exports for apps: the weights baked in, no training signatures, checked by running the files directly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.exporters import ValidationFailed, export
from edgetl.exporters.inference import INT8_AGREEMENT, LATENCY_RUNS, plain_model
from edgetl.run import Run

from .bounds import median_fits
from .conftest import make_image_folder
from .exportfixtures import require_backend
from .exportutil import PATTERN_CLASSES, decisive_run


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    run = decisive_run(root / "run", resolution=48)
    data = make_image_folder(root / "images", classes=PATTERN_CLASSES, per_class=8, size=48)
    return run, data


def run_file(fmt: str, path, x: np.ndarray) -> np.ndarray:
    """The exported file run by its runtime directly, not through edgetl: what an app does."""
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        assert list(interpreter.get_signature_list()) == ["infer"]
        return interpreter.get_signature_runner("infer")(images=x)["logits"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def torch_logits(run_dir, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return Run.load(run_dir).model.eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_an_fp32_inference_export_is_the_run_with_its_weights_as_constants(fmt, source, tmp_path, monkeypatch):
    require_backend(fmt)
    run, data = source
    made = []  # the interpreters the TFLite runner makes: its predictor's too, as the training session's
    if fmt == "tflite":
        from edgetl.runtime import tflite_runner

        make = tflite_runner.make_interpreter
        monkeypatch.setattr(tflite_runner, "make_interpreter", lambda *a, **kw: made.append(kw) or make(*a, **kw))
    start = time.perf_counter()
    result = export(run, fmt, tmp_path / "app", inference=True, calibration=None)
    wall = time.perf_counter() - start
    m = result.manifest.as_dict()
    assert m["kind"] == "inference" and m["quantization"] is None and m["runtime"] in ("onnxruntime", "ai-edge-litert")
    assert (tmp_path / "app" / "labels.txt").read_text().split() == PATTERN_CLASSES
    assert m["input"]["shape"] == [None, 3, 48, 48] and m["preprocessing"]["center_crop"] == 48
    assert m["size_bytes"] == (tmp_path / "app" / m["file"]).stat().st_size
    assert median_fits(m["latency"]["median_single_image_ms"] / 1000, LATENCY_RUNS, wall) and result.validation.ok
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == sorted(["labels.txt", "manifest.json", m["file"]])
    x = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(1)).numpy()
    reference = torch_logits(run, x)
    got = run_file(fmt, tmp_path / "app" / m["file"], x)  # any batch: 5 here
    assert np.max(np.abs(got - reference)) <= 1e-4 * max(1.0, np.max(np.abs(reference)))
    if fmt == "tflite":
        from edgetl.formats.tflite.exporter import operators

        ops = {o for v in operators((tmp_path / "app" / m["file"]).read_bytes()).values() for o in v}
        assert not ops & {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"}  # no variables: constants only
        # validated through the runner's predictor (in the export's temporary directory, renamed into place after)
        assert [Path(kw["model_path"]).name for kw in made] == [m["file"]] and [*made[0]] == ["model_path"]
    else:
        import onnx

        graph = onnx.load(str(tmp_path / "app" / m["file"])).graph
        assert [i.name for i in graph.input] == ["images"] and not {n.op_type for n in graph.node} & {
            "BatchNormalization", "Gradient"}  # norms folded, nothing trains


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_is_calibrated_smaller_and_its_agreement_is_measured(fmt, source, tmp_path):
    """int8 from the images given: at most 0.3x the fp32 file; the ✓/✗ agreement is the one computed here by running
    both files directly on the validation images."""
    require_backend(fmt)
    run, data = source
    fp32 = export(run, fmt, tmp_path / "fp32", inference=True)
    try:
        result = export(run, fmt, tmp_path / "int8", inference=True, quantize="int8", calibration=data,
                        calibration_images=24)
    except ValidationFailed as exc:  # the check is what is tested here, not this random model's quantizability
        result = exc.result
    m = result.manifest.as_dict()
    assert m["quantization"]["type"] == "int8" and m["quantization"]["calibration_images"] == 24
    assert m["size_bytes"] <= 0.3 * fp32.manifest.size_bytes
    (check,) = result.validation.checks
    assert check.name.startswith("int8 top-1 agreement") and "accuracy" in check.detail
    assert m["validation"]["images"] == 16  # the 40 images less the 24 that calibrated
    from edgetl.exporters.inference import images

    _, x, labels, _ = images(Run.load(run), str(data), None, 24)
    int8, reference = run_file(fmt, tmp_path / "int8" / m["file"], x), torch_logits(run, x)
    p = np.sort(torch.softmax(torch.from_numpy(reference).double(), 1).numpy(), 1)
    sure = p[:, -1] - p[:, -2] >= 0.05
    agree = float(np.mean(int8.argmax(1)[sure] == reference.argmax(1)[sure]))
    assert check.max_diff == pytest.approx(1 - agree) and check.ok == (agree >= INT8_AGREEMENT)
    assert f"of {len(x)} images fp32 decides" in check.name and f"{sure.sum()} of" in check.name
    assert f"on every image {np.mean(int8.argmax(1) == reference.argmax(1)):.2%}" in check.detail
    assert f"{100 * np.mean(int8.argmax(1) == labels):.2f}% (int8)" in check.detail


def test_inference_export_refusals_are_one_line(source, tmp_path):
    run, data = source

    def refused(*args) -> str:
        r = CliRunner().invoke(main, ["export", str(run), *map(str, args)])
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        return r.output

    assert "add --calibration DIR" in refused("--format", "tflite", "--inference", "--quantize", "int8")
    assert "add --inference" in refused("--format", "onnx", "--quantize", "int8", "--calibration", data)
    (tmp_path / "empty").mkdir()
    assert "no images" in refused("--format", "onnx", "--inference", "--quantize", "int8", "--calibration",
                                  tmp_path / "empty", "--out", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_plain_model_folds_the_policy_back_without_changing_the_output(source):
    run, _ = source
    r = Run.load(run)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(plain_model(r)(x), r.model.eval()(x), atol=1e-5)
    assert type(plain_model(r).features).__name__ == "Sequential"  # no FrozenPrefix, no masked activations
    assert json.dumps(sorted(plain_model(r).state_dict())) == json.dumps(sorted(r.model.state_dict()))
