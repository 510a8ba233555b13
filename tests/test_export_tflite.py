"""TFLite training export, what is its own: builtin ops only, Flex ops refused by name, SGD with momentum as PyTorch
runs it, the checkpoint and --resume, the fixed batch, and the hand-written conv gradients (shared behaviour:
test_export.py)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgetl import Run
from edgetl.cli import main
from edgetl.exporters import ExportError, export
from edgetl.runtime.runner_common import RunnerError

from .exportutil import make_run, reference_shard, run_runner
from .test_runner_memory import resident_bytes

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
from edgetl.formats.tflite import exporter as tflite  # noqa: E402
from edgetl.runtime import tflite_runner  # noqa: E402

TFLITE = pytest.mark.parametrize("v3_export", ["tflite"], indirect=True)


@pytest.mark.slow  # the batch-statistic reductions these policies need are held fast by test_export_layerdiff.py
@pytest.mark.parametrize("policy", ["full", "bias", "bn+last"])
def test_parity_other_policies(tmp_path, policy):
    """The stem's 3x3 weight gradient (full), frozen convs' input gradients only (bias, bn+last)."""
    run = make_run(tmp_path / "run", "mobilenet_v3_small", policy, resolution=64)
    result = export(run, "tflite", tmp_path / "art", steps=2, batch_size=4)
    assert result.validation.ok and len(result.validation.checks) >= 4


@TFLITE
def test_only_builtin_ops(v3_export):
    art, result = v3_export.art, v3_export.result
    ops = tflite.operators((art / "model.tflite").read_bytes())
    from ai_edge_litert import schema_py_generated as schema

    builtins = set(vars(schema.BuiltinOperator))
    assert len(ops) >= 5  # the signatures' subgraphs (and the variable initialiser)
    used = {o for v in ops.values() for o in v}
    assert used <= builtins and not any(o.startswith("Flex") for o in used)
    assert {"BATCH_MATMUL", "DEPTHWISE_CONV_2D", "ASSIGN_VARIABLE", "READ_VARIABLE"} <= used
    assert sorted(used) == result.manifest.as_dict()["operators"]
    # trained 1x1 convs and linear layers are matmuls XNNPACK runs: CONV_2D and FULLY_CONNECTED with a variable
    # weight run in TFLite's own kernels at a fifth of the speed (this trained region has no frozen conv)
    assert "CONV_2D" not in ops["train"] and "FULLY_CONNECTED" not in ops["train"]


class _Tiny(tf.Module):
    """A conv trained with TensorFlow's own gradient: Conv2DBackpropFilter has no TFLite builtin."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.ones([3, 3, 2, 2]))

    @tf.function(input_signature=[tf.TensorSpec([1, 6, 6, 2])])
    def train(self, x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.conv2d(x, self.w, 1, "SAME"))
        self.w.assign_sub(0.1 * tape.gradient(loss, self.w))
        return {"loss": loss}

    def signatures(self):
        return {"train": self.train.get_concrete_function()}


def test_flex_ops_fail_the_export_by_name(tmp_path):
    with pytest.raises(ExportError, match=r"tf\.Conv2DBackpropFilter.*Flex"):
        tflite.convert(_Tiny(), tf)
    # with Select-TF allowed the converter emits a Flex op: the inspection names it
    module = _Tiny()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"train": module.train.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.experimental_enable_resource_variables = True
    assert tflite.non_builtin(converter.convert()) == ["FlexConv2DBackpropFilter"]


def test_unsupported_layer_is_named(tmp_path):
    run = Run.load(make_run(tmp_path / "run", "mobilenet_v3_small", "mobiletl:2"))
    run.model.classifier[1] = nn.GELU()
    with pytest.raises(ExportError, match=r"classifier\.1 \(torch\.nn\.modules\.activation\.GELU\)"):
        tflite.TfliteExporter().export(run, tmp_path / "art", validate=False)


@TFLITE
def test_sgd_momentum_matches_pytorch(v3_export):
    art, manifest = v3_export.art, v3_export.result.manifest.as_dict()
    assert manifest["optimizer"]["name"] == "sgd" and manifest["optimizer"]["momentum"] == 0.9
    assert any(v["name"].endswith(".momentum_buffer") for v in manifest["variables"])
    # three steps carrying the buffers: the model's own SGD against torch.optim.SGD on the same gradients
    data = np.load(art / "reference.npz")
    trainer = tflite_runner.Session(str(art))
    params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in trainer.params().items()}
    opt = torch.optim.SGD(params.values(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for i in range(3):
        x, y = data["images"][i], data["labels"][i]
        _, grads = trainer.gradients(x, y)
        trainer.step(x, y)  # recomputes the very same gradients from the same parameters
        for n, p in params.items():
            p.grad = torch.from_numpy(grads[n])
        opt.step()
    state = trainer.state()
    for n, p in params.items():
        np.testing.assert_allclose(state[n], p.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(state[f"optimizer.{n}.momentum_buffer"], opt.state[p]["momentum_buffer"].numpy(),
                                   atol=1e-6)
    assert state["optimizer.step"] == 3


@TFLITE
def test_runner_checkpoint_holds_every_variable_and_resumes(v3_export, tmp_path):
    art = v3_export.art
    data = np.load(art / "reference.npz")
    shard = reference_shard(art, tmp_path)
    out = tmp_path / "trained"
    run_runner(art, "tflite_runner.py", tmp_path, "--data", shard, "--steps", 4, "--out", out)
    manifest = json.loads((art / "manifest.json").read_text())
    params = np.load(out / "params.npz")
    kinds = {v["name"]: v["kind"] for v in manifest["variables"]}
    assert sorted(params.files) == sorted(n for n, k in kinds.items() if k in ("param", "stat"))
    state = np.load(out / "checkpoint.npz")
    assert sorted(state.files) == sorted(kinds)  # optimizer state too, for --resume
    # resuming continues from the checkpoint: the first loss of a resumed run is the next step's
    run_runner(art, "tflite_runner.py", tmp_path, "--data", shard, "--steps", 1, "--resume", out / "checkpoint.npz",
               "--out", tmp_path / "t2")
    fresh = tflite_runner.Session(str(art))
    fresh.set_state(dict(state))
    x, y = data["images"].reshape(-1, *data["images"].shape[2:]), data["labels"].reshape(-1)
    order = np.random.default_rng([0, 1]).permutation(len(x))[:4]  # epoch 1 of seed 0
    expected = fresh.step(x[order], y[order])
    assert json.loads((tmp_path / "t2" / "metrics.json").read_text())["losses"][0] == pytest.approx(expected, rel=1e-6)


@TFLITE
def test_state_views_read_the_same_values_without_a_copy(v3_export):
    """The runner writes its checkpoint from views of get_weights' outputs: the same numbers as the copies,
    in the interpreter's own buffers."""
    trainer = tflite_runner.Session(str(v3_export.art))
    copies, views = trainer.state(), trainer.state(copy=False)
    assert sorted(copies) == sorted(views)
    assert all(not v.flags.owndata for v in views.values() if v.ndim)  # numpy copies a 0-d output (the step)
    assert all(np.array_equal(copies[k], views[k]) for k in copies)


@TFLITE
def test_step_count_initializes_and_the_model_file_leaves_memory(v3_export):
    """The runner's first call sets the variables from the model file, whose pages then leave RSS; the
    step_count signature counts optimizer steps."""
    model = v3_export.art / "model.tflite"
    trainer = tflite_runner.Session(str(v3_export.art))
    assert resident_bytes(model) < model.stat().st_size // 4
    assert float(trainer.run("step_count")["step"]) == 0
    ref = np.load(v3_export.art / "reference.npz")
    trainer.step(ref["images"][0], ref["labels"][0])
    assert float(trainer.run("step_count")["step"]) == 1


@TFLITE
def test_wrong_batch_size_is_explained(v3_export):
    art = v3_export.art
    images = np.zeros((3, 3, 64, 64), np.float32)
    with pytest.raises(RunnerError, match="trains at batch 4 .*--batch-size 3"):
        tflite_runner.Session(str(art)).step(images, np.zeros(3, np.int64))


@pytest.mark.slow  # over 9 s: the second stage of .ci/run
def test_cli_export_tflite(tmp_path):
    run = make_run(tmp_path / "run", "mobilenet_v3_small", "last", resolution=64)
    out = tmp_path / "art"
    result = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--out", str(out), "--batch-size", "2",
                                       "--no-validate"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [2, 3, 64, 64] and manifest["runtime"] == "ai-edge-litert"
    assert manifest["trainable"] == ["classifier.3.weight", "classifier.3.bias"]
    assert {"model.tflite", "tflite_runner.py", "runner_common.py", "reference.npz"} <= set(manifest["files"])


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("k,stride,size", [(1, 1, 6), (3, 1, 7), (3, 2, 8), (3, 2, 7), (5, 1, 6), (5, 2, 9)])
def test_conv_gradients_match_tensorflow(depthwise, k, stride, size):
    """The builtin-op gradients of tflite_ops.conv2d against TensorFlow's own conv gradients (PyTorch padding)."""
    from edgetl.formats.tflite.ops import conv2d

    rng = np.random.default_rng(k * 10 + stride)
    pad = (k - 1) // 2
    x = tf.constant(rng.standard_normal((2, size, size, 4)), tf.float32)
    w = tf.constant(rng.standard_normal((k, k, 4, 1 if depthwise else 3)), tf.float32)
    b = tf.constant(rng.standard_normal(4 if depthwise else 3), tf.float32)

    def reference(x, w, b):
        xp = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        y = (tf.nn.depthwise_conv2d(xp, w, [1, stride, stride, 1], "VALID") if depthwise
             else tf.nn.conv2d(xp, w, stride, "VALID"))
        return y + b

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w, b])
        y = conv2d(x, w, b, stride, pad, depthwise, (True, True, True))
        y_ref = reference(x, w, b)
        weights = tf.constant(rng.standard_normal(y.shape), tf.float32)  # a generic output gradient
        loss, loss_ref = tf.reduce_sum(y * weights), tf.reduce_sum(y_ref * weights)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-5)
    for got, ref in zip(tape.gradient(loss, [x, w, b]), tape.gradient(loss_ref, [x, w, b])):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["relu", "relu6", "hardswish"])
def test_activation_masks_from_the_output_are_the_exact_gradient(kind):
    """Every activation's backward, with its mask made from the output (``output_kept``) and from the input, inside a
    ``tf.function``, against PyTorch's gradient at and around every kink. (The autograph failure that once stopped
    MobileNetV2 ``full`` at 224 px, ReLU6's output mask converted from the wrong lambda of its source line, showed only
    in that export; ``bench/parity.py`` at 224 is its check.)"""
    import tensorflow as tf

    from edgetl.formats.tflite.ops import activation

    # values at and around every kink, away from them, and both signs
    x = np.array([-7.0, -3.0, -2.5, -1e-3, 0.0, 1e-3, 0.5, 2.9, 3.0, 5.99, 6.0, 6.5, 9.0], np.float32)
    dy = np.linspace(0.5, 1.7, x.size).astype(np.float32)
    masked = kind == "hardswish"  # MobileTL's Hard-Swish: the gradient passes where x > 0, unscaled
    for kept in (True, False):
        @tf.function
        def grad(v, kept=kept):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = activation(v, kind, masked=masked, output_kept=kept)
            return tape.gradient(y, v, output_gradients=tf.constant(dy))

        got = grad(tf.constant(x)).numpy()
        if masked:
            expected = dy * (x > 0)
        else:
            t = torch.from_numpy(x).requires_grad_()
            {"relu": torch.relu, "relu6": nn.functional.relu6}[kind](t).backward(torch.from_numpy(dy))
            expected = t.grad.numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"{kind}, mask from the {'output' if kept else 'input'}")
