"""The memory-lean ops: exact forwards, the gradients MobileTL specifies, and what they store."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetl.ops import (
    FrozenConv2d,
    FrozenLinear,
    MaskedHardsigmoid,
    MaskedHardswish,
    MaskedReLU,
    MaskedReLU6,
    ShiftOnlyBatchNorm2d,
    pack_bits,
    unpack_bits,
)
from edgetl.profile.saved import SavedTensorCounter

SHAPE = (3, 5, 7, 11)  # 1155 elements: not a multiple of 8, so the padding path is exercised


def _input(shape=SHAPE, scale=5.0):
    x = torch.randn(shape) * scale
    return x.requires_grad_(True)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1155])
def test_bitpack_matches_numpy_packbits(n):
    mask = torch.rand(n) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy(), bitorder="little"))
    assert torch.equal(unpack_bits(packed, (n,)), mask)


@pytest.mark.parametrize("module, reference", [
    (MaskedReLU(), F.relu), (MaskedReLU6(), F.relu6), (MaskedHardsigmoid(), F.hardsigmoid),
])
def test_exact_masked_activations_match_autograd(module, reference):
    x = _input()
    g = torch.randn(SHAPE)
    y = module(x)
    (dx,) = torch.autograd.grad(y, x, g)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = reference(x_ref)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-7)


def test_masked_activation_gradients_against_derivative_formulas():
    x = _input()
    ones = torch.ones(SHAPE)
    for module, derivative in [
        (MaskedReLU(), (x > 0).float()),
        (MaskedReLU6(), ((x > 0) & (x < 6)).float()),
        (MaskedHardsigmoid(), ((x > -3) & (x < 3)).float() / 6),
    ]:
        (dx,) = torch.autograd.grad(module(x), x, ones)
        torch.testing.assert_close(dx, derivative, rtol=0, atol=0)


@pytest.mark.parametrize("threshold", [0.0, -1.5, 2.0])
def test_hardswish_forward_exact_backward_is_step_at_threshold(threshold):
    x = _input()
    act = MaskedHardswish(threshold)
    y = act(x)
    assert torch.equal(y, F.hardswish(x.detach()))
    (dx,) = torch.autograd.grad(y, x, torch.ones(SHAPE))
    assert torch.equal(dx, (x.detach() > threshold).float())


@pytest.mark.parametrize("module", [MaskedReLU(), MaskedReLU6(), MaskedHardsigmoid(), MaskedHardswish()])
def test_masked_activation_keeps_one_bit_per_element(module):
    x = _input()
    with SavedTensorCounter() as c:
        y = module(x)
    assert c.result.activation_bytes == math.ceil(x.numel() / 8)
    ((_, dtype, shape),) = c.result.activations.values()
    assert dtype == torch.uint8 and shape == (math.ceil(x.numel() / 8),)
    # a stock activation keeps the full fp32 map, 32x more
    with SavedTensorCounter() as c_ref:
        module.replaces()(x.clone())
    assert c_ref.result.activation_bytes == x.numel() * 4
    del y


def _bn(channels=5):
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 3.0)
    return bn


def test_shift_only_norm_gradients_match_eval_batchnorm():
    ref = _bn().eval()
    shift = ShiftOnlyBatchNorm2d.from_module(_bn().eval())
    shift.load_state_dict(ref.state_dict())
    x = _input()
    g = torch.randn(SHAPE)
    y_ref = ref(x)
    dx_ref, db_ref = torch.autograd.grad(y_ref, (x, ref.bias), g)
    shift.train()  # mode must not matter: statistics stay frozen
    y = shift(x)
    dx, db = torch.autograd.grad(y, (x, shift.bias), g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(db, db_ref, rtol=1e-6, atol=1e-5)
    assert not shift.weight.requires_grad
    assert torch.equal(shift.running_mean, ref.running_mean) and torch.equal(shift.running_var, ref.running_var)


def test_shift_only_norm_keeps_no_activation():
    bn = ShiftOnlyBatchNorm2d.from_module(_bn())
    x = _input()
    with SavedTensorCounter(bn) as c:
        y = bn(x)
    assert c.result.activation_bytes == 0
    y.sum().backward()
    assert bn.bias.grad is not None and bn.weight.grad is None


@pytest.mark.parametrize("groups, stride, bias", [(1, 1, False), (5, 2, True), (5, 1, False)])
def test_frozen_conv_input_gradient_and_no_saved_input(groups, stride, bias):
    ref = nn.Conv2d(5, 10, 3, stride=stride, padding=1, groups=groups, bias=bias)
    conv = FrozenConv2d.from_module(nn.Conv2d(5, 10, 3, stride=stride, padding=1, groups=groups, bias=bias))
    conv.load_state_dict(ref.state_dict())
    ref.weight.requires_grad_(False)
    if bias:
        conv.bias.requires_grad_(True)
    x = _input((2, 5, 9, 9))
    g_shape = ref(x).shape
    g = torch.randn(g_shape)
    with SavedTensorCounter(conv) as c:
        y = conv(x)
    assert c.result.activation_bytes == 0
    with SavedTensorCounter(ref) as c_ref:
        y_ref = ref(x)
    assert c_ref.result.activation_bytes == x.numel() * 4  # why the frozen op exists
    wrt = (x, conv.bias) if bias else (x,)
    grads = torch.autograd.grad(y, wrt, g)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.bias) if bias else (x,), g)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_linear_input_gradient_and_no_saved_input():
    ref = nn.Linear(6, 4)
    lin = FrozenLinear.from_module(nn.Linear(6, 4))
    lin.load_state_dict(ref.state_dict())
    lin.bias.requires_grad_(True)
    x = _input((3, 6))
    with SavedTensorCounter(lin) as c:
        y = lin(x)
    assert c.result.activation_bytes == 0
    g = torch.randn(3, 4)
    dx, db = torch.autograd.grad(y, (x, lin.bias), g)
    dx_ref, db_ref = torch.autograd.grad(ref(x), (x, ref.bias), g)
    torch.testing.assert_close(dx, dx_ref)
    torch.testing.assert_close(db, db_ref)
