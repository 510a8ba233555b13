"""ONNX Runtime training export: parity with PyTorch, the device runner, the manifest, and every pitfall guard."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgetl.cli import main
from edgetl.devices.runner import ort_runner
from edgetl.exporters import ExportError, export, load_run, verify_manifest
from edgetl.exporters import onnx_graph
from edgetl.exporters.validation import GRAD_RTOL, teacher_forced

from .exportutil import exact_hardswish, make_run, run_runner

pytest.importorskip("onnxruntime.training")
MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]


@pytest.fixture(scope="module")
def v3_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3")
    run = make_run(root / "run", "mobilenet_v3_small", "mobiletl:3")
    result = export(run, "onnx", root / "art", steps=3)
    return run, root / "art", result


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("policy", ["mobiletl:2", "ft:2", "last"])
def test_parity(tmp_path, model, policy):
    # 128 px: at 64 px MobileNetV2's last maps are 2 x 2 (see validation.py on mask flips)
    run = make_run(tmp_path / "run", model, policy, resolution=128)
    result = export(run, "onnx", tmp_path / "art", steps=3)  # raises ExportError if any check fails
    validation = result["manifest"]["validation"]
    assert validation["validated"] and validation["ok"]
    names = [c["name"] for c in validation["checks"]]
    assert names[0] == "inference logits" and any(n.startswith("gradients") for n in names)
    assert any("step of the exported optimizer" in n for n in names)
    assert validation["free_running"]["steps"] == 3
    trainable = {n for n, p in load_run(run).model.named_parameters() if p.requires_grad}
    assert set(result["manifest"]["trainable"]) == trainable


def test_manifest_and_checksums(v3_export, tmp_path):
    import shutil
    art = tmp_path / "art"
    shutil.copytree(v3_export[1], art)  # the fixture's artifacts are shared: corrupt a copy
    manifest = json.loads((art / "manifest.json").read_text())
    for key in ("format", "model", "policy", "input", "class_names", "preprocessing", "versions", "files", "validation"):
        assert key in manifest
    assert manifest["input"]["shape"] == [None, 3, 64, 64]
    assert set(manifest["files"]) >= {"training_model.onnx", "eval_model.onnx", "optimizer_model.onnx",
                                      "inference.onnx", "reference.npz", "ort_runner.py"}
    assert verify_manifest(art) == []
    with open(art / "inference.onnx", "ab") as f:
        f.write(b"\0")
    assert verify_manifest(art) == ["inference.onnx"]


def test_frozen_parameters_are_not_trainable(v3_export):
    _, art, result = v3_export
    state = ort_runner.training_api().CheckpointState.load_checkpoint(str(art / "checkpoint"))
    trainable = set(result["manifest"]["trainable"])
    params = dict(iter(state.parameters))  # (name, Parameter) pairs
    assert trainable <= set(params)
    assert {n for n, p in params.items() if p.requires_grad} == trainable
    assert any(n.startswith("features.0.") for n in set(params) - trainable)  # the frozen stem is there, frozen


def test_runner_trains_without_torch(v3_export, tmp_path):
    _, art, _ = v3_export
    data = np.load(art / "reference.npz")
    shard = tmp_path / "shard.npz"
    np.savez(shard, images=data["images"].reshape(-1, *data["images"].shape[2:]), labels=data["labels"].reshape(-1))
    out = tmp_path / "trained"
    proc = run_runner(art, "ort_runner.py", tmp_path, "--data", shard, "--steps", 4, "--batch-size", 4, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["losses"]) == 4 and all(np.isfinite(metrics["losses"]))
    assert metrics["torch_imported"] is False and metrics["peak_rss_bytes"] > 0
    assert proc.stdout.count("step ") == 4
    params = np.load(out / "params.npz")
    manifest = json.loads((art / "manifest.json").read_text())
    initial_stats = np.load(art / "running_stats.npz")
    assert sorted(params.files) == sorted(manifest["trainable"] + initial_stats.files)
    # the fully trained norms' running statistics were updated on the device, as PyTorch updates them
    assert initial_stats.files and all(not np.array_equal(params[k], initial_stats[k]) for k in initial_stats.files)
    assert (out / "checkpoint").exists()
    # the baked inference model carries the trained weights
    baked = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(out / "inference.onnx").graph.initializer}
    name = manifest["trainable"][0]
    np.testing.assert_array_equal(baked[name], params[name])


def test_runner_verify_on_device(v3_export, tmp_path):
    _, art, _ = v3_export
    proc = run_runner(art, "ort_runner.py", tmp_path, "--verify")
    checks = json.loads(proc.stdout.strip().splitlines()[-1])["verify"]
    assert [c["ok"] for c in checks] == [True, True, True]


def test_import_weights_closes_the_loop(v3_export, tmp_path):
    run, art, _ = v3_export
    trained = ort_runner.train(str(art), *(np.load(art / "reference.npz")[k] for k in ("images", "labels")), 3)
    params = trained["trainer"].params()
    np.savez(tmp_path / "params.npz", **params)
    out = tmp_path / "imported.pt"
    result = CliRunner().invoke(main, ["import-weights", str(run), str(tmp_path / "params.npz"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    import torchvision
    model = torchvision.models.mobilenet_v3_small(num_classes=5)
    model.load_state_dict(torch.load(out, weights_only=False)["state_dict"])
    name = next(iter(params))
    np.testing.assert_array_equal(dict(model.named_parameters())[name].detach().numpy(), params[name])
    # the imported model predicts what ONNX Runtime predicts with the same weights
    images = np.load(art / "reference.npz")["images"][0]
    ort_logits = ort_runner.infer(str(art), images, params)
    with torch.no_grad():
        torch_logits = model.eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(torch_logits, ort_logits, atol=1e-4)


def test_hardswish_backward_is_the_sign_approximation(v3_export):
    run, art, _ = v3_export
    training = onnx.load(art / "training_model.onnx")
    ops = [n.op_type for n in training.graph.node]
    assert "BatchNormalization" not in ops  # rewritten: ONNX Runtime would switch it to batch statistics
    assert "HardSwish" in ops and "Greater" in ops
    data = np.load(art / "reference.npz")
    r = load_run(run)
    checks = teacher_forced(r, ort_runner.Trainer(str(art)), data["images"], data["labels"], 2, 0.01)
    assert all(c.ok for c in checks)
    # PyTorch with the exact Hard-Swish derivative: the export's gradients must NOT match it
    exact_hardswish(r.model)
    grad_check = teacher_forced(r, ort_runner.Trainer(str(art)), data["images"], data["labels"], 1, 0.01)[1]
    assert not grad_check.ok and grad_check.max_diff > 10 * GRAD_RTOL


def test_optimizer_graph_follows_pytorch_adamw(v3_export):
    _, art, result = v3_export
    opt = onnx.load(art / "optimizer_model.onnx")
    modes = [a.i for n in opt.graph.node if n.op_type == "AdamWOptimizer" for a in n.attribute if a.name == "adam_mode"]
    assert modes and set(modes) == {0}
    check = next(c for c in result["checks"] if "step of the exported optimizer" in c.name)
    assert check.ok and check.max_diff < 1e-6


def test_merged_initializers_are_restored():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["a.bias"], ["b.bias"]), onnx.helper.make_node("Add", ["x", "b.bias"], ["y"])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])],
        [onnx.numpy_helper.from_array(np.zeros(3, np.float32), "a.bias")])
    proto = onnx.helper.make_model(graph)
    assert onnx_graph.restore_initializers(proto, ["a.bias", "b.bias"]) == ["b.bias"]
    assert {i.name for i in proto.graph.initializer} == {"a.bias", "b.bias"}
    assert [n.op_type for n in proto.graph.node] == ["Add"]


def test_real_export_keeps_every_parameter_name():
    class TwoZeroBiases(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            nn.init.zeros_(self.a.bias), nn.init.zeros_(self.b.bias)

        def forward(self, x):
            return self.b(self.a(x))

    import io
    m, f = TwoZeroBiases(), io.BytesIO()
    torch.onnx.export(m, torch.randn(1, 3), f, dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.EVAL)
    proto = onnx.load_from_string(f.getvalue())
    onnx_graph.restore_initializers(proto, [n for n, _ in m.named_parameters()])
    assert {n for n, _ in m.named_parameters()} <= {i.name for i in proto.graph.initializer}


def test_ir_version_guard(monkeypatch, tmp_path):
    real = onnx.load_from_string

    def newer(data):
        proto = real(data)
        proto.ir_version = 11
        return proto

    monkeypatch.setattr(onnx, "load_from_string", newer)
    run = make_run(tmp_path / "run")
    with pytest.raises(ExportError, match="onnx==1.17.0"):
        export(run, "onnx", tmp_path / "art")


def test_unsupported_layer_is_named(tmp_path):
    r = load_run(make_run(tmp_path / "run"))
    r.model.classifier[1] = nn.SiLU()
    with pytest.raises(ExportError, match="cannot train on device: Sigmoid"):
        onnx_graph.export_graph(r.model, 64, training=True)


def test_missing_backend_is_a_clear_error(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    result = CliRunner().invoke(main, ["export", str(make_run(tmp_path / "run")), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "pip install 'edgetl[onnx]'" in result.output


def test_export_cli_and_errors(tmp_path):
    run = make_run(tmp_path / "run", optimizer="sgd", lr=0.01)
    result = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "a"),
                                       "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "✓ gradients" in result.output and "plain SGD" in result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "no checkpoint.pt" in result.output
    result = CliRunner().invoke(main, ["export", str(run), "--format", "coreml", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "'coreml' is not one of 'onnx', 'tflite'" in result.output
