"""ONNX Runtime training export, what is its own: trainability in the checkpoint, running statistics and the baked
inference model, PyTorch's AdamW, plain SGD, and every pitfall guard (shared behaviour: test_export.py)."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgetl import Run
from edgetl.cli import main
from edgetl.exporters import ExportError, export
from edgetl.formats.onnx import graph as onnx_graph
from edgetl.runtime import ort_runner

from .exportutil import make_run, reference_shard, run_runner

pytest.importorskip("onnxruntime.training")


ONNX = pytest.mark.parametrize("v3_export", ["onnx"], indirect=True)


@ONNX
def test_frozen_parameters_are_not_trainable(v3_export):
    art, result = v3_export.art, v3_export.result
    state = ort_runner.training_api().CheckpointState.load_checkpoint(str(art / "checkpoint"))
    trainable = set(result.manifest.trainable)
    params = dict(iter(state.parameters))  # (name, Parameter) pairs
    assert trainable <= set(params)
    assert {n for n, p in params.items() if p.requires_grad} == trainable
    split = result.manifest.split.index
    frozen = set(params) - trainable
    assert frozen and all(int(n.split(".")[1]) >= split for n in frozen if n.startswith("features."))  # region only
    import onnx

    prefix = {i.name for i in onnx.load(str(art / result.manifest.split.prefix)).graph.initializer}
    assert any(n.startswith("features.0.") for n in prefix)  # the frozen stem lives in the prefix's model


@ONNX
def test_runner_updates_running_statistics_and_bakes_inference_model(v3_export, tmp_path):
    art = v3_export.art
    shard = reference_shard(art, tmp_path)
    out = tmp_path / "trained"
    run_runner(art, "ort_runner.py", tmp_path, "--data", shard, "--steps", 4, "--batch-size", 4, "--out", out)
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


@ONNX
def test_hardswish_backward_is_in_the_graph_as_standard_ops(v3_export):
    training = onnx.load(v3_export.art / "training_model.onnx")
    ops = [n.op_type for n in training.graph.node]
    assert "BatchNormalization" not in ops  # rewritten: ONNX Runtime would switch it to batch statistics
    assert "HardSwish" in ops and "Greater" in ops


@ONNX
def test_optimizer_graph_follows_pytorch_adamw(v3_export):
    opt = onnx.load(v3_export.art / "optimizer_model.onnx")
    modes = [a.i for n in opt.graph.node if n.op_type == "AdamWOptimizer" for a in n.attribute if a.name == "adam_mode"]
    assert modes and set(modes) == {0}


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
    r = Run.load(make_run(tmp_path / "run"))
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


@pytest.mark.slow  # 5 to 9 s: the second stage of .ci/run
def test_sgd_momentum_becomes_plain_sgd_with_a_note(tmp_path):
    run = make_run(tmp_path / "run", optimizer="sgd", lr=0.01)
    result = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "a"),
                                       "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "✓ gradients" in result.output and "plain SGD" in result.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["optimizer"]["momentum"] == 0.0 and manifest["optimizer"]["weight_decay"] == 0.0
