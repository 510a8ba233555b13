"""What every export format must do, run for each format (ONNX Runtime, TFLite): parity with PyTorch, a manifest
that checks its files, a torch-free runner that trains and verifies on a "device", the weights loop back into
PyTorch, MobileTL's Hard-Swish backward kept, the CLI. Format-specific behaviour lives in test_export_<format>.py."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgetl
from edgetl.cli import main
from edgetl.exporters import ExportError, ValidationFailed, export, verify_manifest
from edgetl.exporters.validation import GRAD_RTOL, teacher_forced

from .bounds import model_bytes, numpy_process_rss
from .exportfixtures import FORMATS, require_backend
from .exportutil import exact_hardswish, make_run, reference_shard, run_runner

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
POLICIES = ["mobiletl:2", "ft:2", "last"]
# one cell per format runs by default; the whole matrix in CI's slow stage (bench/parity.py goes further)
FAST_CELL = ("mobilenet_v3_small", "mobiletl:2")
# TFLite's fast cell is slow too (21 s): the session's v3_export fixture holds a validated TFLite export fast
CELLS = [pytest.param(fmt, m, p, marks=[] if (fmt, m, p) == ("onnx", *FAST_CELL) else [pytest.mark.slow])
         for fmt in sorted(FORMATS) for m in MODELS for p in POLICIES]


@pytest.mark.parametrize("fmt, model, policy", CELLS)
def test_parity(tmp_path, fmt, model, policy):
    require_backend(fmt)
    # 96 px: at 64 px MobileNetV2's last maps are 2 x 2 (see validation.py on mask flips)
    run = make_run(tmp_path / "run", model, policy, resolution=96)
    result = export(run, fmt, tmp_path / "art", steps=3, batch_size=4)  # raises ValidationFailed if a check fails
    validation = result.manifest.validation
    assert validation["validated"] and validation["ok"] and result.validation.ok
    names = [c.name for c in result.validation.checks]
    assert names[0] == "inference logits" and any(n.startswith("gradients") for n in names)
    assert any("step of the exported optimizer" in n for n in names)
    assert validation["free_running"]["steps"] == 3
    trainable = {n for n, p in edgetl.Run.load(run).model.named_parameters() if p.requires_grad}
    assert set(result.manifest.trainable) == trainable
    if policy == "ft:2":  # fully trained norms: running statistics are updated on the device, checked after the steps
        assert any(n.startswith("running statistics") for n in names)


def test_manifest_and_checksums(v3_export, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(v3_export.art, art)  # the fixture's artifacts are shared: corrupt a copy
    manifest = json.loads((art / "manifest.json").read_text())
    for key in ("format", "model", "policy", "policy_options", "input", "class_names", "preprocessing", "optimizer",
                "memory", "versions", "files", "validation"):
        assert key in manifest
    assert manifest["input"]["shape"][1:] == [3, 64, 64] and manifest["policy_options"] == {"hardswish_threshold": 0.0}
    assert {v3_export.script, "runner_common.py", "reference.npz"} <= set(manifest["files"])
    assert sorted(p.name for p in v3_export.result.files) == sorted([*manifest["files"], "manifest.json"])
    assert verify_manifest(art) == []
    victim = sorted(manifest["files"])[0]
    with open(art / victim, "ab") as f:
        f.write(b"\0")
    assert verify_manifest(art) == [victim]


def test_manifest_memory_is_the_profilers(v3_export):
    """Deploy reads the predicted memory from the manifest; it equals the profiler's figure at any batch."""
    from edgetl.profile.analytic import analyze

    manifest = v3_export.result.manifest.as_dict()
    prof = analyze("mobilenet_v3_small", "mobiletl:3", 64, num_classes=5)
    spec = edgetl.OptimizerSpec.from_dict(manifest["optimizer"])
    for batch in (1, 4, 8, 32):
        expected = prof.totals(batch, spec)["training_memory_bytes"]
        got = manifest["memory"]["fixed_bytes"] + manifest["memory"]["per_sample_bytes"] * batch
        assert abs(got - expected) <= 8, (batch, got, expected)  # bit-packed masks round up per tensor


def test_runner_trains_without_torch(v3_export, tmp_path):
    art = v3_export.art
    shard = reference_shard(art, tmp_path)
    out = tmp_path / "trained"
    proc = run_runner(art, v3_export.script, tmp_path, "--data", shard, "--steps", 4, "--batch-size", 4, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["losses"]) == 4 and all(np.isfinite(metrics["losses"]))
    assert metrics["torch_imported"] is False and metrics["tensorflow_imported"] is False
    # the runner's process holds numpy, the runtime and the export's models at least
    assert metrics["peak_rss_bytes"] >= numpy_process_rss() + model_bytes(art) and proc.stdout.count("step ") == 4
    assert set(v3_export.result.manifest.trainable) <= set(np.load(out / "params.npz").files)


def test_runner_verify_on_device(v3_export, tmp_path):
    proc = run_runner(v3_export.art, v3_export.script, tmp_path, "--verify")
    checks = json.loads(proc.stdout.strip().splitlines()[-1])["verify"]
    assert [c["ok"] for c in checks] == [True, True, True]


def test_runner_explains_a_bad_shard(v3_export, tmp_path):
    """A runner error is one line and exit status 2 from the script, an exception from Python."""
    import subprocess
    import sys

    shard = tmp_path / "bad.npz"
    np.savez(shard, images=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    proc = subprocess.run([sys.executable, str(v3_export.art / v3_export.script), "--artifacts", str(v3_export.art),
                           "--data", str(shard), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the data shard's images are (4, 3, 8, 8)")
    from edgetl.runtime import runner_data

    with pytest.raises(runner_data.RunnerError, match="pack the shard at the model's resolution"):
        runner_data.npz_shard(str(shard), v3_export.result.manifest.as_dict())


def test_weights_round_trip_through_the_device(v3_export, tmp_path):
    """PyTorch -> export -> trained by the runner -> edgetl import-weights -> PyTorch, same predictions."""
    art, runner = v3_export.art, v3_export.runner
    out = tmp_path / "trained"
    run_runner(art, v3_export.script, tmp_path, "--steps", 6, "--batch-size", 4, "--out", out)
    imported = tmp_path / "imported.pt"
    result = CliRunner().invoke(main, ["import-weights", str(v3_export.run), str(out / "params.npz"),
                                       "--out", str(imported)])
    assert result.exit_code == 0, result.output
    import torchvision
    model = torchvision.models.mobilenet_v3_small(num_classes=5)
    model.load_state_dict(torch.load(imported, weights_only=True)["state_dict"])
    params = np.load(out / "params.npz")
    for name in params.files:
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), params[name])
    # a held-out batch (not trained on): the imported PyTorch model predicts what the device model predicts
    held_out = np.random.default_rng(7).standard_normal((4, 3, 64, 64)).astype(np.float32)
    device_logits = runner.infer(str(art), held_out, dict(params))
    with torch.no_grad():
        torch_logits = model.eval()(torch.from_numpy(held_out)).numpy()
    np.testing.assert_allclose(torch_logits, device_logits, atol=1e-4 * max(1.0, np.abs(torch_logits).max()))
    original = edgetl.Run.load(v3_export.run).model.state_dict()
    assert not np.allclose(params[params.files[0]], original[params.files[0]].numpy())


def test_hardswish_backward_is_the_sign_approximation(v3_export):
    data = np.load(v3_export.art / "reference.npz")
    run, trainer = edgetl.Run.load(v3_export.run), v3_export.runner.Session
    assert all(c.ok for c in teacher_forced(run, trainer(str(v3_export.art)), data["images"], data["labels"], 2, 0.01))
    # PyTorch with the exact Hard-Swish derivative: the export's gradients must NOT match it
    exact_hardswish(run.model)
    grad_check = teacher_forced(run, trainer(str(v3_export.art)), data["images"], data["labels"], 1, 0.01)[1]
    assert not grad_check.ok and grad_check.max_diff > 10 * GRAD_RTOL


def test_optimizer_step_follows_pytorch(v3_export):
    check = next(c for c in v3_export.result.validation.checks if "step of the exported optimizer" in c.name)
    assert check.ok and check.max_diff < 1e-6
    assert check.name.startswith(f"one {FORMATS[v3_export.fmt][2]['optimizer']} step")


@pytest.mark.parametrize("v3_export", ["onnx"], indirect=True)  # the mechanism is the formats' shared flow
def test_a_failed_check_carries_the_result(v3_export, tmp_path, monkeypatch):
    """ValidationFailed names the check and keeps the result, so the CLI can print the list."""
    from edgetl.exporters import validation

    monkeypatch.setattr(validation, "LOGIT_ATOL", 0.0)  # nothing passes a zero tolerance
    with pytest.raises(ValidationFailed, match="inference logits differs by") as err:
        export(v3_export.run, v3_export.fmt, tmp_path / "art", steps=1, batch_size=4)
    assert not err.value.result.validation.ok and err.value.result.manifest.validation["ok"] is False
    # refused, not crashed: the files stay at --out for inspection, their manifest saying so
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["validation"]["ok"] is False
    assert err.value.result.out == tmp_path / "art" and not list(tmp_path.glob(".art.*"))


@pytest.mark.parametrize("v3_export", ["onnx", pytest.param("tflite", marks=pytest.mark.slow)], indirect=True)
def test_cli_export(v3_export, tmp_path):
    fmt = v3_export.fmt
    result = CliRunner().invoke(main, ["export", str(v3_export.run), "--format", fmt, "--out", str(tmp_path / "a"),
                                       "--steps", "2", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "✓ gradients" in result.output and f"exported {v3_export.run} as {fmt}" in result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nowhere"), "--format", fmt])
    assert result.exit_code == 2 and "no checkpoint.pt" in result.output
    result = CliRunner().invoke(main, ["export", str(v3_export.run), "--format", "coreml"])
    assert result.exit_code == 2 and "'coreml' is not one of 'onnx', 'tflite'" in result.output


def test_unknown_format_from_python(tmp_path):
    with pytest.raises(ExportError, match="unknown format 'coreml'; choose one of: onnx, tflite"):
        export(make_run(tmp_path / "run"), "coreml", tmp_path / "art")


def _crash(self, run, out, *args, **kwargs):
    (out / "half.onnx").write_bytes(b"half")
    raise RuntimeError("the backend fell over")


def test_a_crashed_export_leaves_nothing_at_out(tmp_path, monkeypatch):
    """Exports are built under a hidden name beside --out and renamed into place when complete: an exception
    mid-export leaves --out as it was (absent, or the previous export); what a killed one left is cleared by the
    next; a folder that is not an export is never replaced."""
    from edgetl.formats.onnx.exporter import OnnxExporter

    run = make_run(tmp_path / "run", resolution=32)
    art = tmp_path / "art"
    with monkeypatch.context() as m:
        m.setattr(OnnxExporter, "lower", _crash)
        with pytest.raises(RuntimeError, match="fell over"):
            export(run, "onnx", art, validate=False)
    assert not art.exists() and not list(tmp_path.glob(".art.*"))
    first = export(run, "onnx", art, validate=False, steps=1)
    before = (art / "manifest.json").read_bytes()
    (tmp_path / ".art.partial-left").mkdir()  # what a killed export leaves
    with monkeypatch.context() as m:
        m.setattr(OnnxExporter, "lower", _crash)
        with pytest.raises(RuntimeError):
            export(run, "onnx", art, validate=False)
    assert (art / "manifest.json").read_bytes() == before and first.out == art
    assert not list(tmp_path.glob(".art.*"))
    with pytest.raises(ExportError, match="is not an export directory"):
        export(run, "onnx", tmp_path, validate=False)  # never replaces a folder of other things


@pytest.mark.slow  # a fresh process that imports torch and exports, killed mid-way
def test_a_killed_export_leaves_the_previous_one_whole(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = make_run(tmp_path / "run", resolution=32)
    art = tmp_path / "art"
    export(run, "onnx", art, validate=False, steps=1)
    before = (art / "manifest.json").read_bytes()
    script = f"from edgetl.exporters import export; export({str(run)!r}, 'onnx', {str(art)!r}, steps=1)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [p for d in tmp_path.glob(".art.partial-*") for p in d.iterdir()]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".art.partial-*")), "the export was killed before it wrote anything"
    assert (art / "manifest.json").read_bytes() == before  # the previous export, whole
