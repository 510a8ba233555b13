"""The TFLite training model's operator order (``tflite_schedule``): weight-only work moved next to its use changes
no result, bit for bit, and lowers the intermediates' peak; the peak itself against a count by hand."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edgetl.exporters.reference import training_copy  # noqa: E402
from edgetl.formats.tflite import schedule as tflite_schedule  # noqa: E402
from edgetl.formats.tflite.exporter import convert, operators  # noqa: E402
from edgetl.formats.tflite.graph import Lowering, TrainingModule  # noqa: E402
from edgetl.optim import OptimizerSpec  # noqa: E402

from .exportutil import tiny_mobilenet  # noqa: E402


class _Chain(tf.Module):
    """x (1, 1000) -> a = 2x -> b = a + 1 -> c = b * b + a: float32 tensors of 4000 bytes each. x (a signature
    input) lives throughout and a until the last op, so four are alive at once: x, a, b, b * b (or x, a, b * b,
    c), 16000 bytes."""

    @tf.function(input_signature=[tf.TensorSpec([1, 1000], tf.float32, name="x")])
    def train(self, x):
        a = x * 2.0
        b = a + 1.0
        return {"c": b * b + a}

    def signatures(self):
        return {"train": self.train.get_concrete_function()}


def test_arena_peak_counts_the_tensors_alive_together():
    model = convert(_Chain(), tf)
    assert tflite_schedule.arena_peak(model, "train") == 4 * 4000
    with pytest.raises(KeyError, match="no signature 'nope'"):
        tflite_schedule.arena_peak(model, "nope")


def _train(model: bytes, steps: int) -> tuple[list[float], list[np.ndarray]]:
    it = Interpreter(model_content=model, num_threads=1)
    train, weights = it.get_signature_runner("train"), it.get_signature_runner("get_weights")
    rng = np.random.default_rng(0)
    losses = [float(train(images=rng.standard_normal((4, 3, 64, 64), dtype=np.float32),
                          labels=rng.integers(0, 5, 4).astype(np.int32), lr=np.float32(1e-2))["loss"])
              for _ in range(steps)]
    return losses, [v for _, v in sorted(weights().items())]


def test_reorder_changes_no_result_and_lowers_the_peak():
    """A tiny MobileNetV2 with AdamW and weight decay: the converter runs the decay and the kernels' transposes
    before the forward pass; moved next to their use they hold less at once, and every number is unchanged."""
    module = TrainingModule(Lowering(training_copy(tiny_mobilenet())), 4, 64, OptimizerSpec("adamw", lr=1e-2))
    converted = convert(module, tf)
    reordered = tflite_schedule.reorder(converted)
    before, after = (operators(m) for m in (converted, reordered))
    assert {k: sorted(v) for k, v in before.items()} == {k: sorted(v) for k, v in after.items()}  # the same ops
    assert before != after  # in another order
    assert tflite_schedule.arena_peak(reordered) < tflite_schedule.arena_peak(converted)
    (loss_a, weights_a), (loss_b, weights_b) = _train(converted, 3), _train(reordered, 3)
    assert loss_a == loss_b
    assert all(np.array_equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))
