"""bench/transfer.py on a small setting: the table is complete, and its numbers are the runs' own."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("transfer_bench", ROOT / "bench" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_transfer_bench_on_a_small_setting(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    bench = load_bench()
    if not bench.CIFAR_TAR.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{bench.CIFAR_TAR} is absent")
        pytest.skip(f"{bench.CIFAR_TAR} is absent")
    s = bench.Settings(resolution=32, policies=["ft:5", "mobiletl:5"], device_policies=["mobiletl:5"], seeds=1,
                       epochs=2, source_epochs=1, batch_size=8, train_per_class=24)
    work, out = tmp_path / "work", tmp_path / "transfer.json"
    result = bench.run_bench(s, work, out, log=lambda line: None)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    cells = {(c["policy"], c["leg"]): c for c in result["cells"]}
    assert set(cells) == {("ft:5", "laptop"), ("mobiletl:5", "laptop"), ("mobiletl:5", "device")}
    for (policy, leg), c in cells.items():
        assert c["test_images"] == 5 * 300  # every test photograph of the five target classes
        if leg == "laptop":  # the number is the run's own: its metrics after the last epoch
            metrics = json.loads((Path(c["run"]) / "metrics.json").read_text())
            assert len(metrics["epochs"]) == 2 and c["accuracy"] == metrics["epochs"][-1]["val_acc"]
            assert metrics["policy"] == policy
            assert abs(c["evaluate_top1"] - c["accuracy"]) <= 2 / 1500  # edgetl evaluate agrees, image for image
        else:  # the device trained; its weights were evaluated here, and the device judged them the same
            report = json.loads((Path(c["run"]) / "report.json").read_text())
            assert report["steps"] == 2 * (5 * 24 // 8) and report["schedule"] == "cosine"
            assert abs(c["device_top1"] - c["accuracy"]) <= 2 / 1500
    rows = bench.summary(result)
    assert [(r["policy"], r["leg"]) for r in rows] == [("ft:5", "laptop"), ("mobiletl:5", "laptop"),
                                                       ("mobiletl:5", "device")]
    assert rows[1]["training_memory_bytes"] < rows[0]["training_memory_bytes"]  # MobileTL keeps less
    bench.print_table(result)
    assert "mobiletl:5" in capsys.readouterr().out
    # a rerun trains nothing: every cell is in the JSON already
    said = []
    again = bench.run_bench(s, work, out, log=said.append)
    assert again["cells"] == result["cells"] and not [line for line in said if " seed " in line]
