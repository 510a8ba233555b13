"""ONNX Runtime against PyTorch layer by layer: the probe taps every layer of the export's own lowering and
gradients, and a failed ONNX export names the layer where it departs (as the TFLite one does)."""

import copy
import json

import numpy as np
import pytest
import torch

from edgetl import MobileTL, Run
from edgetl.exporters import ExportError, export
from edgetl.exporters.reference import training_copy
from edgetl.ops import MaskedHardswish

from .exportutil import make_run, tiny_mobilenet

pytest.importorskip("onnxruntime.training")
BATCH, RES = 8, 224  # the stem's norm sees 8 x 112 x 112 elements per channel, as MobileNetV2's does
from edgetl.exporters import layerdiff  # noqa: E402
from edgetl.formats.onnx import graph as onnx_graph  # noqa: E402
from edgetl.formats.onnx.exporter import OnnxExporter  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((BATCH, 3, RES, RES), dtype=np.float32)
    return tiny_mobilenet(), images, (np.arange(BATCH) % 5).astype(np.int64)


def test_onnx_runtime_tracks_pytorch_layer_by_layer(tiny):
    """Every conv, norm, activation and the head: ONNX Runtime's output and dL/d(output) are as close to float64
    as PyTorch float32's own, at batch 8 and 112 x 112 maps."""
    model, images, labels = tiny
    probe = OnnxExporter().probe(model, BATCH, RES)
    assert probe.names() == ["features.0.0", "features.0.1", "features.0.2", "features.1.0", "features.1.1",
                             "features.1.2", "classifier.1"]
    report = layerdiff.compare(model, images, labels, probe)
    assert len(report.layers) == 7 and all(d.backward is not None for d in report.layers)
    assert report.first_forward is None and report.first_backward is None, report.summary()
    assert report.loss <= layerdiff.FACTOR * max(report.loss_torch, 1e-7)


@pytest.mark.slow  # over 9 s: the second stage of .ci/run
def test_a_wrong_onnx_backward_is_named_at_its_layer(tmp_path, monkeypatch):
    """MobileTL's Hard-Swish gradient generated with the wrong threshold (1.0 where the run's is 0.0): the forward
    is untouched, and the gradients depart (from the loss) at the input of the last masked Hard-Swish."""
    run = Run.load(make_run(tmp_path / "run", "mobilenet_v3_small", "mobiletl:2", resolution=32))
    model = training_copy(run.model)
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((4, 3, 32, 32), dtype=np.float32), np.arange(4) % 5
    set_threshold = onnx_graph.set_hardswish_threshold
    monkeypatch.setattr(onnx_graph, "set_hardswish_threshold", lambda proto, t: set_threshold(proto, 1.0))
    report = layerdiff.compare(model, images, labels, OnnxExporter().probe(model, 4, 32))
    masked = [n for n, m in model.named_modules() if isinstance(m, MaskedHardswish)]
    feeding = {n.rsplit(".", 1)[0] + "." + str(int(n.rsplit(".", 1)[1]) - 1) for n in masked}  # the norm before each
    assert report.first_forward is None, report.summary()
    assert report.first_backward in feeding, report.summary()
    # the masks of thresholds 1.0 and 0.0 differ only where 0 < x <= 1 (x: the mask's input, in float64 here; the
    # tolerance covers float32 inputs rounded across 1): at most those elements turned
    band, reference = {}, copy.deepcopy(model).double()
    for n in masked:
        reference.get_submodule(n).register_forward_pre_hook(
            lambda _, args, n=n: band.__setitem__(n, int(((args[0] > 0) & (args[0] <= 1 + 1e-3)).sum())))
    with torch.no_grad():
        reference(torch.from_numpy(images).double())
    assert 0 < report.turned[0] <= sum(band.values()) and report.turned[1] == 0
    assert all(d.turned <= band[d.name] for d in report.layers if d.name in band)


@pytest.mark.slow  # 5 to 9 s: the second stage of .ci/run
def test_each_onnx_export_gets_its_own_hardswish_threshold(tmp_path):
    """ONNX Runtime keeps the first gradient definition registered in a process: the threshold is written into
    each generated training model instead, so two exports in one process train with their own."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    found = {}
    for threshold in (0.0, 0.5):
        run = make_run(tmp_path / f"run{threshold}", "mobilenet_v3_small", MobileTL(2, hardswish_threshold=threshold),
                       resolution=32)
        export(run, "onnx", tmp_path / f"art{threshold}", validate=False, batch_size=2)
        model = onnx.load(str(tmp_path / f"art{threshold}" / "training_model.onnx"))
        found[threshold] = {float(v) for i in model.graph.initializer for v in numpy_helper.to_array(i).ravel()
                            if i.name.endswith("HardSwish_Grad/threshold")}
    assert found == {0.0: {0.0}, 0.5: {0.5}}


@pytest.mark.slow  # 5 to 9 s: the second stage of .ci/run
def test_a_failed_onnx_export_names_the_layer(tmp_path, monkeypatch):
    """An ONNX lowering that gets the training graph's Hard-Swish wrong fails validation, and the error names the
    stem's Hard-Swish, the first layer that departs."""
    monkeypatch.setattr(onnx_graph._HardswishExact, "forward",
                        lambda self, x: 0.95 * x * torch.nn.functional.hardsigmoid(x))
    run = make_run(tmp_path / "run", "mobilenet_v3_small", "last", resolution=64)
    with pytest.raises(ExportError, match=r"training losses.*forward departs first at features\.0\.2 \(Hardswish\)"):
        export(run, "onnx", tmp_path / "art", steps=1, batch_size=2)
    layers = json.loads((tmp_path / "art" / "manifest.json").read_text())["validation"]["layers"]
    assert layers["first_forward"] == "features.0.2" and layers["layers"][0]["name"] == "features.0.0"
    assert all(d["forward"] <= layerdiff.FORWARD_FLOOR for d in layers["layers"][:2])


def test_the_probe_leaves_the_model_alone(tiny):
    model, _, _ = tiny
    before = copy.deepcopy(model.state_dict())
    OnnxExporter().probe(model, 2, 32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
