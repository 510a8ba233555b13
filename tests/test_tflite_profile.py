"""The TFLite op profile (``tflite_profile``): operators cut out compute what they compute in the model, variables
are read and assigned for real, a prefix of the step keeps the work its cut would drop, and every operator of a
training model is named after its layer; and the lowering's own ops (masks from the output, the depthwise weight
gradient in chunks) against the reference forms."""

import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
from edgetl.exporters.reference import training_copy  # noqa: E402
from edgetl.formats.tflite import profile as tp  # noqa: E402
from edgetl.formats.tflite.exporter import convert  # noqa: E402
from edgetl.formats.tflite.graph import Lowering, TrainingModule  # noqa: E402
from edgetl.formats.tflite.ops import DEPTHWISE_MAX_CHANNELS, _depthwise_weight_grad, activation  # noqa: E402
from edgetl.formats.tflite.schedule import _Graph, _load, _subgraphs  # noqa: E402
from edgetl.optim import OptimizerSpec  # noqa: E402
from edgetl.runtime.tflite_runner import make_interpreter  # noqa: E402

from .exportutil import tiny_mobilenet  # noqa: E402


class _Chain(tf.Module):
    """x -> a = 2x -> b = a + 1 -> c = b * b + a (MUL, ADD, MUL, ADD); ``w`` a variable read, scaled, assigned."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.ones([3]))

    @tf.function(input_signature=[tf.TensorSpec([1, 1000], tf.float32, name="x")])
    def train(self, x):
        a = x * 2.0
        b = a + 1.0
        return {"c": b * b + a}

    @tf.function(input_signature=[])
    def scale(self):
        self.w.assign(self.w * 3.0)
        return {"w": self.w.read_value()}

    def signatures(self):
        return {"train": self.train.get_concrete_function(), "scale": self.scale.get_concrete_function()}


@pytest.fixture(scope="module")
def chain():
    return convert(_Chain(), tf)


def _run_cut(model: bytes, signature: str, k: int, value: np.ndarray | None = None) -> list[np.ndarray]:
    tree = _load(model)
    cut = tp._Cutter(tree, _Graph(tree, _subgraphs(tree, (signature,))[signature])).cut(k)
    interp = make_interpreter(1, model_content=cut)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], value)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def test_each_cut_operator_computes_what_it_computes_in_the_model(chain):
    start = time.perf_counter()
    ops = tp.op_times(chain, "train", threads=1, budget_s=0.0, least=2)
    wall = time.perf_counter() - start
    assert [o.op for o in ops] == ["CALL_ONCE", "MUL", "ADD", "MUL", "ADD"]  # the variables' initialiser first
    assert ops[0].seconds == 0.0 and all(o.seconds > 0 and o.delegated for o in ops[1:])
    assert sum(o.seconds for o in ops) <= wall  # one pass of the operators fits in the time they were timed in
    assert ops[1].inputs == ["1x1000", "scalarc"] and ops[1].output == "1x1000"
    x = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32)
    np.testing.assert_array_equal(_run_cut(chain, "train", 1, x)[0], 2 * x)  # the constant 2 kept
    np.testing.assert_array_equal(_run_cut(chain, "train", 2, x)[0], x + 1)


def test_variables_are_read_and_assigned_for_real(chain):
    ops = {o.op: o for o in tp.op_times(chain, "scale", threads=1, budget_s=0.0, least=2)}
    assert {"READ_VARIABLE", "ASSIGN_VARIABLE", "VAR_HANDLE"} <= set(ops)
    graph_ops = [o.op for o in tp.op_times(chain, "scale", threads=1, budget_s=0.0, least=1)]
    read = graph_ops.index("READ_VARIABLE")
    np.testing.assert_array_equal(_run_cut(chain, "scale", read)[0], np.zeros(3, np.float32))  # assigned once, read
    assert ops["VAR_HANDLE"].seconds == 0.0


class _Heavy(tf.Module):
    """A 512-cube matmul whose result only a cheap operator after it reads."""

    @tf.function(input_signature=[tf.TensorSpec([512, 512], tf.float32, name="a"),
                                  tf.TensorSpec([512, 512], tf.float32, name="b")])
    def train(self, a, b):
        return {"s": tf.reduce_sum(tf.linalg.matmul(a[None], b[None]), axis=[1, 2])}

    def signatures(self):
        return {"train": self.train.get_concrete_function()}


def test_a_prefix_keeps_the_work_its_cut_would_drop():
    """Cut after the matmul, XNNPACK would drop it (nobody reads its result) and its time would move to the sum: the
    prefix makes what later operators read an output, so the matmul's time stays with the matmul."""
    model = convert(_Heavy(), tf)
    n = len(tp.op_times(model, "train", threads=1, budget_s=0.0, least=1))
    matmul = [o.op for o in tp.op_times(model, "train", threads=1, budget_s=0.0, least=1)].index("BATCH_MATMUL")
    t = tp.prefix_seconds(model, "train", [0, matmul + 1, n], threads=1, clock=time.thread_time)
    assert t[0] < 0.2 * t[2] and t[1] > 0.6 * t[2], t


@pytest.mark.slow  # converting a training model: over 20 s
def test_the_training_ops_are_named_after_their_layers():
    net = training_copy(tiny_mobilenet())
    model = convert(TrainingModule(Lowering(net), 2, 64, OptimizerSpec("adamw", lr=1e-2)), tf)
    tree = _load(model)
    graph = _Graph(tree, _subgraphs(tree, ("train",))["train"])
    ops = [(graph.names[k], graph.graph.tensors[graph.outs[k][0]].name.decode()) for k in range(len(graph.ops))
           if graph.outs[k] and graph.names[k] != "VAR_HANDLE"]
    keys = [(op, tp.layer_of(name)) for op, name in ops]
    layers = {name for name, _ in net.named_modules()} | {"model", "loss", "optimizer"}
    assert all(key[0] in layers for _, key in keys if key), {key for _, key in keys if key and key[0] not in layers}
    assert sum(key is not None for _, key in keys) >= 0.95 * len(keys), [n for (_, n), (_, k) in zip(ops, keys) if not k]
    assert {"forward", "backward", "optimizer", "running statistics"} <= {key[1] for _, key in keys if key}
    # a trained conv's and the linear layer's products forward and backward are matmuls XNNPACK runs
    assert ("BATCH_MATMUL", ("classifier.1", "backward")) in keys and ("BATCH_MATMUL", ("classifier.1", "forward")) in keys
    assert tp.layer_of("features.1.0/grad/depthwise;features.1.0/grad/Pad") == ("features.1.0", "backward")
    assert tp.layer_of("gradient_tape/classifier.1/MatMul") == ("classifier.1", "backward")
    assert tp.layer_of("features/0/0/weight") is None  # a variable's handle: no layer of its own


@pytest.mark.parametrize("kind,threshold", [("relu", 0.0), ("relu6", 0.0), ("hardswish", 0.0)])
def test_a_mask_from_the_output_is_the_mask_from_the_input(kind, threshold):
    """ReLU's, ReLU6's and MobileTL's Hard-Swish gradient read from the output equal the one read from the input,
    kinks included (inputs at exactly 0 and 6, and around -3)."""
    rng = np.random.default_rng(1)
    x = tf.constant(np.concatenate([rng.uniform(-8, 8, 4000), [0.0, 6.0, -3.0, 3.0, 1e-30, -1e-30]]), tf.float32)
    dy = tf.constant(rng.standard_normal(x.shape[0]), tf.float32)
    grads = []
    for kept in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x, kind, masked=kind == "hardswish", threshold=threshold, output_kept=kept)
        grads.append(tape.gradient(y, x, output_gradients=dy).numpy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_the_depthwise_weight_gradient_in_chunks_matches_tensorflow():
    """More channels times images than the depthwise kernel holds: the images go into the conv in chunks."""
    n, c = 3, DEPTHWISE_MAX_CHANNELS // 2 + 10  # two chunks of images
    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((n, 6, 6, c)), tf.float32)
    w = tf.constant(rng.standard_normal((3, 3, c, 1)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(w)
        y = tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), w, [1, 2, 2, 1], "VALID")
    dy = tf.constant(rng.standard_normal(y.shape), tf.float32)
    ref = tape.gradient(y, w, output_gradients=dy)
    np.testing.assert_allclose(_depthwise_weight_grad(x, dy, 3, 2, 1).numpy(), ref.numpy(), atol=1e-4)
