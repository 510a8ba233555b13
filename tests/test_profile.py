"""Profiler: single-layer rules vs hand-computed values, analytic vs measured, budget, reports, CLI."""

import json
import math
import time

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from edgetl import apply_policy, create_model
from edgetl.cli import main
from edgetl.errors import ConfigError
from edgetl.ops import MaskedHardswish, ShiftOnlyBatchNorm2d
from edgetl.profile import build_report, fit_policies, largest_batch, measure_saved, parse_size, profile_model, rules
from edgetl.profile.analytic import analyze

from .bounds import median_fits, numpy_process_rss

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
POLICIES = ["full", "last", "bn+last", "bias", "ft:4", "mobiletl:4"]


def _run(module, shape, grad=True, input_grad=True):
    x = torch.randn(shape, requires_grad=input_grad)
    return module, x, module(x)


def test_conv_rule_hand_computed():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    m, x, y = _run(conv, (2, 3, 16, 16))
    cost = rules.conv(m, x, y, True)
    # output 8 x 8 x 8 per sample, each a 3 x 3 x 3 dot product: 13,824 multiply-adds
    assert cost.forward_flops == 2 * 8 * 8 * 8 * 3 * 9
    assert cost.input_grad_flops == cost.weight_grad_flops == 2 * 13824
    assert [k.nbytes(2) for k in cost.keeps] == [2 * 3 * 16 * 16 * 4]


def test_depthwise_conv_and_frozen_input_rules():
    dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    dw.weight.requires_grad_(False)
    m, x, y = _run(dw, (1, 6, 5, 5), input_grad=False)
    cost = rules.conv(m, x, y, True)
    assert cost.forward_flops == 2 * 6 * 5 * 5 * 9  # one input channel per group
    assert cost.keeps == [] and not cost.needs_input_grad and not cost.needs_weight_grad
    assert cost.input_grad_flops == cost.weight_grad_flops == 0


def test_linear_batchnorm_and_activation_rules():
    lin = nn.Linear(20, 5)
    m, x, y = _run(lin, (4, 20))
    cost = rules.linear(m, x, y, True)
    assert cost.forward_flops == 2 * 20 * 5 + 5 and [k.nbytes(4) for k in cost.keeps] == [4 * 20 * 4]

    bn = nn.BatchNorm2d(6).train()
    m, x, y = _run(bn, (3, 6, 4, 4))
    assert [k.nbytes(3) for k in rules.batch_norm(m, x, y, True).keeps] == [3 * 6 * 16 * 4 + 2 * 6 * 4]
    shift = ShiftOnlyBatchNorm2d.from_module(nn.BatchNorm2d(6))
    m, x, y = _run(shift, (3, 6, 4, 4))
    assert rules.batch_norm(m, x, y, True).keeps == []

    m, x, y = _run(MaskedHardswish(), (3, 5, 7, 11))
    (keep,) = rules.masked_activation(m, x, y, True).keeps
    assert keep.bits == 1 and keep.nbytes(3) == math.ceil(3 * 5 * 7 * 11 / 8)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", POLICIES)
def test_analytic_matches_measured_saved_bytes(name, policy):
    model = apply_policy(create_model(name, num_classes=5), policy)
    prof = profile_model(model, 64)
    measured = measure_saved(model, torch.randn(3, 3, 64, 64))
    analytic = prof.totals(3)["saved_activation_bytes"]
    assert abs(analytic - measured.activation_bytes) <= 0.02 * measured.activation_bytes
    # per layer, too: each storage is attributed to the layer that first keeps it, on both sides
    per_layer = {layer.name: layer.saved_bytes(3) for layer in prof.layers if layer.saved_bytes(3)}
    assert per_layer == measured.by_layer


def test_profile_leaves_model_untouched_and_rejects_unknown_layers():
    model = apply_policy(create_model("mobilenet_v3_small", num_classes=5), "full")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, 64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.classifier.append(nn.GELU())
    with pytest.raises(ConfigError, match=r"cannot profile layer classifier.4 \(GELU\)"):
        profile_model(model, 64)


def test_cached_step_flops_are_the_trained_regions():
    """With the feature cache a step skips the frozen prefix's forward pass: the FLOPs left are the step's minus the
    forward FLOPs of features[:split], counted here on ft:5's profile (the same frozen prefix, in inference mode)."""
    prof, ft, full = (analyze("mobilenet_v2", p, 64, 5) for p in ("mobiletl:5", "ft:5", "full"))
    assert prof.split == ft.split == 13 and full.split == 0
    prefix = sum(layer.cost.forward_flops for layer in ft.layers
                 if layer.name.startswith("features.") and int(layer.name.split(".")[1]) < 13)
    assert prof.training_flops(8) == prof.totals(8)["training_flops"]
    assert prof.training_flops(8, cached=True) == pytest.approx(prof.training_flops(8) - 8 * prefix)
    assert full.training_flops(8, cached=True) == full.training_flops(8)  # no prefix, nothing cached


def test_flops_reduction_and_needed_backward():
    profs = {p: analyze("mobilenet_v3_large", p, 64, 10) for p in ("full", "last", "ft:5")}

    def matmul_forward(prof):  # convs and linears compute the same forward under any policy
        return sum(layer.cost.forward_flops for layer in prof.layers if layer.kind in ("Conv2d", "Linear"))

    assert matmul_forward(profs["full"]) == matmul_forward(profs["ft:5"]) == matmul_forward(profs["last"])
    full, ft, last = profs["full"].totals(1), profs["ft:5"].totals(1), profs["last"]
    assert ft["training_flops"] < full["training_flops"]
    # nothing below the lowest trained layer needs a backward pass
    needed = [layer.name for layer in last.layers if layer.cost.input_grad_flops or layer.cost.weight_grad_flops]
    assert needed == ["classifier.3", "loss"]


def test_budget_search_boundaries():
    batch, res = 4, 96
    ref = fit_policies("mobilenet_v3_small", 1 << 40, batch, res)
    k = 6
    lo = analyze("mobilenet_v3_small", f"mobiletl:{k}", res).totals(batch)["training_memory_bytes"]
    hi = analyze("mobilenet_v3_small", f"mobiletl:{k + 1}", res).totals(batch)["training_memory_bytes"]
    assert lo < hi
    fit = fit_policies("mobilenet_v3_small", (lo + hi) // 2, batch, res)
    assert fit.largest_k == k
    assert fit.fits(f"mobiletl:{k}") and not fit.fits(f"mobiletl:{k + 1}")
    assert ref.largest_k == 11
    budget = 40 * 2**20
    n = largest_batch("mobilenet_v3_small", "mobiletl:3", budget, res)
    prof = analyze("mobilenet_v3_small", "mobiletl:3", res)
    assert prof.totals(n)["training_memory_bytes"] <= budget < prof.totals(n + 1)["training_memory_bytes"]


@pytest.mark.parametrize("text, value", [("64MiB", 64 * 2**20), ("1.5GB", 1_500_000_000), ("512M", 512_000_000),
                                         ("2 GiB", 2 * 2**30), ("1000", 1000)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "64 parsecs", "", "-5MB"])
def test_parse_size_errors(text):
    with pytest.raises(ConfigError, match="write it like 64MiB"):
        parse_size(text)


def test_report_json_csv_and_png(tmp_path):
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["profile", "--model", "mobilenet_v3_small", "--policy", "ft:3", "--policy",
                                       "mobiletl:3", "--batch-size", "2", "--resolution", "64",
                                       "--json", f"{out}.json", "--csv", f"{out}.csv", "--plot", f"{out}.png"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "edgetl.profile/1"
    assert set(report) == {"schema", "model", "batch_size", "resolution", "optimizer", "num_classes", "policies"}
    mtl = report["policies"][1]
    assert set(mtl) == {"policy", "totals", "measured", "blocks", "layers", "reduction"}
    assert set(mtl["reduction"]) == {"vs_full", "vs_ft"} and mtl["measured"] is None
    assert mtl["reduction"]["vs_ft"]["saved_activation_bytes"] > 0.3  # MobileTL saves a third or more
    assert sum(mtl["blocks"].values()) == mtl["totals"]["saved_activation_bytes"]
    assert sum(layer["saved_bytes"] for layer in mtl["layers"]) == mtl["totals"]["saved_activation_bytes"]
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("policy,name,type") and len(rows) == 1 + sum(len(p["layers"]) for p in report["policies"])
    with Image.open(tmp_path / "r.png") as im:
        im.verify()
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300


def test_measure_reports_rss_and_agreement():
    start = time.perf_counter()
    report = build_report("mobilenet_v3_small", ["mobiletl:2"], batch=2, resolution=64, measure=True)
    wall = time.perf_counter() - start
    m = report["policies"][0]["measured"]
    assert m["saved_ratio"] == pytest.approx(1.0, abs=0.02)
    # before the step the process held numpy and the model's float32 weights; the step's growth holds what autograd
    # saved; its median of 3 timed steps (after a warm-up) fits in the time the report took
    weights = 4 * sum(p.numel() for p in create_model("mobilenet_v3_small", num_classes=10).parameters())
    assert m["peak_rss_bytes"] - m["step_rss_bytes"] >= numpy_process_rss() + weights
    assert m["step_rss_bytes"] >= m["saved_activation_bytes"] and median_fits(m["step_seconds"], 3, wall)


def test_budget_cli(tmp_path):
    result = CliRunner().invoke(main, ["profile", "--model", "mobilenet_v3_small", "--budget", "40MiB",
                                       "--batch-size", "4", "--resolution", "96", "--policy", "full",
                                       "--policy", "mobiletl:3"])
    assert result.exit_code == 0, result.output
    assert "largest K that fits: mobiletl:" in result.output and "largest batch size for mobiletl:3:" in result.output
    result = CliRunner().invoke(main, ["profile", "--device-profile", "rpi4-1gb", "--resolution", "96"])
    assert result.exit_code == 0 and "fits" in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50"], "Invalid value for '--model'"),
    (["--policy", "sparse"], "unknown policy 'sparse'"),
    (["--budget", "lots"], "cannot read the size 'lots'"),
    (["--budget", "1GB", "--device-profile", "rpi4-1gb"], "not both"),
])
def test_profile_cli_errors(args, message):
    result = CliRunner().invoke(main, ["profile", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
