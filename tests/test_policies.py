"""Policies: which parameters receive gradients, what changes after optimizer steps, state_dict layout."""

import copy

import pytest
import torch
import torchvision
from torch import nn

import edgetl
from edgetl import PolicyError, apply_policy, calibrate_batchnorm, create_model, parse_policy
from edgetl.profile import measure_saved

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
POLICIES = ["full", "last", "bn+last", "bias", "ft:3", "mobiletl:3"]
K = 3


def _reference_names(name: str):
    """Parameter-name sets computed from a plain torchvision model, independently of edgetl's code."""
    model = getattr(torchvision.models, name)(num_classes=4)
    irb_types = (torchvision.models.mobilenetv2.InvertedResidual, torchvision.models.mobilenetv3.InvertedResidual)
    blocks = [i for i, m in enumerate(model.features) if isinstance(m, irb_types)]
    first = blocks[-K]
    head = f"classifier.{len(model.classifier) - 1}."
    bn_params, internal_bn_weights = set(), set()
    for mname, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            bn_params |= {f"{mname}.weight", f"{mname}.bias"}
    for i in blocks[-K:]:
        norms = [n for n, m in model.features[i].named_modules() if isinstance(m, nn.BatchNorm2d)]
        internal_bn_weights |= {f"features.{i}.{n}.weight" for n in norms[:-1]}
    names = [n for n, _ in model.named_parameters()]
    top = {n for n in names if n.startswith("classifier.") or (n.startswith("features.") and int(n.split(".")[1]) >= first)}
    return {
        "full": set(names),
        "last": {n for n in names if n.startswith(head)},
        "bn+last": bn_params | {n for n in names if n.startswith(head)},
        "bias": {n for n in names if n.endswith(".bias")} | {n for n in names if n.startswith(head)},
        f"ft:{K}": top,
        f"mobiletl:{K}": top - internal_bn_weights,
    }, first


def _step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", POLICIES)
def test_gradients_and_updates_follow_policy(name, policy):
    expected, first = _reference_names(name)
    model = create_model(name, num_classes=4)
    # as the trainer does for random weights: without data statistics the frozen prefix shrinks
    # activations to ~1e-6 and gradients round away in fp32 updates
    calibrate_batchnorm(model, [(torch.randn(8, 3, 64, 64), None)])
    before = copy.deepcopy(model.state_dict())
    keys = {k: v.shape for k, v in before.items()}
    apply_policy(model, policy)
    assert {k: v.shape for k, v in model.state_dict().items()} == keys

    # unbalanced labels: with one sample per class the head bias gradient can cancel exactly
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 0, 1, 2])
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == expected[policy]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected[policy]

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(3):
        _step(model, opt, x, y)
    after = model.state_dict()
    for n in before:
        if n in expected[policy]:
            assert not torch.equal(before[n], after[n]), f"{n} should have trained"
        elif n.endswith((".weight", ".bias")):
            assert torch.equal(before[n], after[n]), f"{n} must stay bit-identical"

    # batch-norm statistics: frozen below the trained region and in MobileTL's internal norms
    internal = {n.rsplit(".", 1)[0] for n in expected[f"ft:{K}"] - expected[f"mobiletl:{K}"]}
    for mname, m in model.named_modules():
        if not isinstance(m, nn.BatchNorm2d):
            continue
        stats_moved = not torch.equal(before[f"{mname}.running_mean"], m.running_mean)
        index = int(mname.split(".")[1])
        if policy in ("full", "bn+last"):
            should_move = True
        elif policy in ("last", "bias"):
            should_move = False
        elif policy.startswith("mobiletl"):
            should_move = index >= first and mname not in internal
        else:
            should_move = index >= first
        assert stats_moved == should_move, f"{policy}: {mname} statistics moved={stats_moved}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", POLICIES)
def test_eval_output_unchanged(name, policy):
    model = create_model(name, num_classes=7)
    ref = create_model(name, num_classes=7)
    ref.load_state_dict(model.state_dict())
    apply_policy(model, policy).eval()
    ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_policy_state_dict_loads_into_torchvision():
    model = apply_policy(create_model("mobilenet_v3_small", num_classes=3), "mobiletl:4")
    plain = torchvision.models.mobilenet_v3_small(num_classes=3)
    plain.load_state_dict(model.state_dict(), strict=True)


def test_mobiletl_saves_less_than_ft_and_frozen_prefix_saves_nothing():
    x = torch.randn(2, 3, 64, 64)
    saved = {p: measure_saved(apply_policy(create_model("mobilenet_v2", 4), p), x).activation_bytes
             for p in ["full", "ft:3", "mobiletl:3", "last"]}
    assert saved["full"] > saved["ft:3"] > saved["mobiletl:3"] > saved["last"]
    # `last` backpropagates into the head only: it keeps the head's input (N x 1280 fp32) and the
    # loss's own tensors: log-softmax (N x 4 fp32), targets (N int64) and a scalar
    assert saved["last"] == 2 * 1280 * 4 + 2 * 4 * 4 + 2 * 8 + 4


def test_mobiletl_uses_masked_ops_only_in_top_blocks():
    model = apply_policy(create_model("mobilenet_v3_large", 4), edgetl.MobileTL(2, hardswish_threshold=0.5))
    masked = {n.split(".")[1] for n, m in model.named_modules() if isinstance(m, edgetl.ops.MaskedActivation)}
    assert masked == {"14", "15"}
    thresholds = {m.threshold for m in model.modules() if isinstance(m, edgetl.ops.MaskedHardswish)}
    assert thresholds == {0.5}


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown policy"), ("ft", "needs the number"), ("mobiletl:x", "needs the number"),
    ("full:3", "takes no argument"), ("mobiletl:18", "only 17 inverted-residual blocks"),
])
def test_policy_errors(spec, message):
    with pytest.raises(PolicyError, match=message):
        apply_policy(create_model("mobilenet_v2", 4), spec)


def test_policy_cannot_be_applied_twice():
    model = apply_policy(create_model("mobilenet_v2", 4), "ft:2")
    with pytest.raises(PolicyError, match="already has policy ft:2"):
        apply_policy(model, "full")


def test_parse_policy_round_trips():
    for spec in POLICIES:
        assert str(parse_policy(spec)) == spec


def test_policies_are_typed_objects_with_their_options():
    policy = edgetl.MobileTL(k=5, hardswish_threshold=0.25)
    assert str(policy) == "mobiletl:5" and policy.options() == {"hardswish_threshold": 0.25}
    assert parse_policy("mobiletl:5", hardswish_threshold=0.25) == policy
    for p in (policy, parse_policy("ft:3"), parse_policy("bias"), parse_policy("full")):
        assert edgetl.Policy.from_dict(p.as_dict()) == p
    with pytest.raises(PolicyError, match="policy 'ft:3' has no option hardswish_threshold"):
        parse_policy("ft:3", hardswish_threshold=0.5)


def test_run_directory_keeps_the_policy_object(tmp_path):
    """The threshold travels with the policy through the run format, not beside it."""
    model = apply_policy(create_model("mobilenet_v3_small", 3), edgetl.MobileTL(2, hardswish_threshold=-0.5))
    edgetl.Run.save(model, None, None, tmp_path / "run", resolution=64)
    run = edgetl.Run.load(tmp_path / "run")
    assert run.policy == edgetl.MobileTL(2, hardswish_threshold=-0.5) and run.resolution == 64
    assert {m.threshold for m in run.model.modules() if isinstance(m, edgetl.ops.MaskedHardswish)} == {-0.5}
    with pytest.raises(edgetl.run.RunError, match="trained under mobiletl:2, not ft:2"):
        edgetl.Run.save(model, "ft:2", None, tmp_path / "other")
