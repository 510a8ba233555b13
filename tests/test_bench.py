"""The benchmark scripts run, and their figures hold together (small settings, real subprocesses)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetl.optim import OptimizerSpec
from edgetl.profile.analytic import analyze

from .bounds import model_bytes, numpy_process_rss

ROOT = Path(__file__).resolve().parents[1]


def _bench(script, *args, tmp_path):
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def _timed_bench(script, *args, tmp_path):
    """``_bench`` and the seconds its process took: no time it measured inside can be longer."""
    start = time.perf_counter()
    data, table = _bench(script, *args, tmp_path=tmp_path)
    return data, table, time.perf_counter() - start


def test_irb_memory_bench(tmp_path):
    data, table = _bench("irb_memory.py", "--channels", "8", "--size", "8", "--batch-size", "2", tmp_path=tmp_path)
    assert "mobilenet_v2" in table and "paper" in table
    for name in ("mobilenet_v2", "mobilenet_v3"):
        d = data[name]
        assert d["vanilla_analytic_bytes"] == d["vanilla_bytes"] and d["mobiletl_analytic_bytes"] == d["mobiletl_bytes"]
        assert d["reduction"] == 1 - d["mobiletl_bytes"] / d["vanilla_bytes"]
    # V3 vanilla keeps no ReLU6 copies; V2's in-place ReLU6 keeps one per activation
    assert data["mobilenet_v3"]["vanilla_without_relu6_copies_bytes"] == data["mobilenet_v3"]["vanilla_bytes"]
    assert data["mobilenet_v2"]["vanilla_without_relu6_copies_bytes"] < data["mobilenet_v2"]["vanilla_bytes"]


def test_flops_bench(tmp_path):
    data, _ = _bench("flops.py", "--model", "mobilenet_v3_small", "--resolution", "64", tmp_path=tmp_path)
    rows = data["mobilenet_v3_small"]
    assert len([k for k in rows if k.startswith("mobiletl:")]) == 11
    for k in range(1, 12):
        assert rows[f"mobiletl:{k}"]["training_flops"] <= rows[f"ft:{k}"]["training_flops"] < rows["full"]["training_flops"]
    assert rows["ft:1"]["training_flops"] < rows["ft:5"]["training_flops"] < rows["ft:11"]["training_flops"]


@pytest.mark.slow
def test_runners_bench(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnxruntime.training")
    data, table, wall = _timed_bench("runners.py", "--model", "mobilenet_v3_small", "--resolution", "64", "--batch-size",
                                     "2", "--steps", "2", "--rounds", "1", "--policy", "mobiletl:2", tmp_path=tmp_path)
    rows = {r["runtime"]: r for r in data["mobilenet_v3_small"]["rows"]}
    assert "TFLite" in table and "ONNX Runtime" in table and "PyTorch" in table
    for side in ("onnx", "tflite", "pytorch"):
        assert 0 < rows[side]["step_seconds"] <= wall and rows[side]["peak_rss_bytes"] > 50 * 2**20
        assert numpy_process_rss() <= rows[side]["baseline_rss_bytes"] < rows[side]["peak_rss_bytes"]


@pytest.mark.slow  # over 9 s: the second stage of .ci/run
def test_parity_bench(tmp_path):
    import pytest
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    data, table = _bench("parity.py", "--models", "mobilenet_v3_small", "--policies", "last", "--formats", "tflite",
                         "--resolution", "64", "--batch-size", "2", "--steps", "1", tmp_path=tmp_path)
    (cell,) = data["cells"]
    assert (cell["model"], cell["policy"], cell["format"], cell["ok"]) == ("mobilenet_v3_small", "last", "tflite", True)
    assert {c["name"].split(",")[0] for c in cell["checks"]} >= {"inference logits", "training losses"}
    assert data["resolution"] == 64 and data["batch_size"] == 2
    assert "mobilenet_v3_small" in table and "✓" in table and "✗" not in table
    # the same matrix again resumes from its JSON: no cell is exported twice
    again, table = _bench("parity.py", "--models", "mobilenet_v3_small", "--policies", "last", "--formats", "tflite",
                          "--resolution", "64", "--batch-size", "2", "--steps", "1", tmp_path=tmp_path)
    assert again == data and "(from " in table
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "parity.py"), "--models", "mobilenet_v3_small",
                           "--steps", "2", "--resolution", "64", "--json", str(tmp_path / "parity.py.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "holds a matrix with other settings" in proc.stderr


@pytest.mark.slow
def test_runner_memory_bench(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgetl.benchmark import random_run
    from edgetl.exporters import export

    art = tmp_path / "art"
    export(random_run(tmp_path / "run", "mobilenet_v3_small", "mobiletl:2", 32), "tflite", art, validate=False,
           batch_size=2)
    rows, table, wall = _timed_bench("runner_memory.py", "--artifacts", str(art), "--artifacts", str(art),
                                     "--batch-size", "2", "--steps", "2", tmp_path=tmp_path)
    assert [r["artifacts"] for r in rows] == [str(art)] * 2 and "mobiletl:2" in table
    manifest = json.loads((art / "manifest.json").read_text())
    expected = analyze("mobilenet_v3_small", "mobiletl:2", 32, len(manifest["class_names"])).totals(
        2, OptimizerSpec.from_dict(manifest["optimizer"]))
    for r in rows:
        # the runner holds numpy, then its models; its steps were timed within the bench's run
        assert numpy_process_rss() <= r["baseline_rss_bytes"] < r["peak_rss_bytes"]
        assert r["peak_rss_bytes"] >= numpy_process_rss() + model_bytes(art)
        assert 0 < r["step_seconds"] <= wall and 0 < r["cached_step_seconds"] <= wall
        # TFLite's plan: the step's intermediates hold the gradients and what the backward reads, its variables the
        # trained parameters and the optimizer's state (the profiler's analytic figures)
        assert manifest["train_intermediates_bytes"] >= expected["gradient_bytes"] + expected["saved_activation_bytes"]
        assert r["planned_bytes"] >= (manifest["train_intermediates_bytes"] + expected["trainable_param_bytes"]
                                      + expected["optimizer_state_bytes"])


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_step_ops_bench(tmp_path, runtime):
    """Every operator of the trained region's step is listed with a layer and a part; TFLite's times in the step
    add up to its prefixes' (monotone) fit, and the layers carry the profiler's FLOPs."""
    pytest.importorskip("ai_edge_litert" if runtime == "tflite" else "onnxruntime.training")
    data, table, wall = _timed_bench("step_ops.py", "--runtime", runtime, "--model", "mobilenet_v3_small", "--policy",
                                     "mobiletl:2", "--resolution", "64", "--batch-size", "2", "--threads", "1",
                                     "--segments", "12", "--steps", "3", tmp_path=tmp_path)
    ops = data["ops"]
    assert "Per layer" in table and "Per operator type" in table and "features.11.block.3.0" in table
    assert ops and all(o["layer"] and o["part"] for o in ops) and 0 < data["step_s"] <= wall
    assert {"forward", "backward"} <= {o["part"] for o in ops}
    if runtime == "tflite":
        fit = data["prefix_fit_s"]
        assert all(a <= b for a, b in zip(fit, fit[1:])) and len(fit) == len(data["cuts"]) <= 13
        assert sum(o["in_step_s"] for o in ops) == pytest.approx(fit[-1] - fit[0], rel=1e-6)
        assert "optimizer" in {o["part"] for o in ops} and any(o["op"] == "BATCH_MATMUL" and o["xnnpack"] for o in ops)
    else:
        assert any(o["op"] == "ConvGrad" for o in ops) and all(o["in_step_s"] >= 0 for o in ops)
