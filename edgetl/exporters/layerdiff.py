"""Layer by layer: where an export departs from PyTorch, so that a failed export names the layer.

    probe = exporter("tflite").probe(model, batch_size=8, resolution=224)   # its runtime, every layer tapped
    report = compare(model, images, labels, probe)             # one training-mode step on one batch
    report.summary()     # "forward departs first at features.1.conv.0.1 (BatchNorm2d): ..."
    report.as_dict()     # every layer, for the manifest or a bug report

A failed parity check says *that* an export differs; this says *where*. One batch runs through three
models in training mode: PyTorch in float64 (the reference), PyTorch in float32, and the export's runtime
through a probe that outputs every layer's activation and the loss gradient with respect to it. Per layer
(its module name, as PyTorch names it):

- forward: ||a - a64|| / ||a64|| of the layer's output, for the export and for PyTorch float32;
- backward: the same for dL/d(output), where a gradient reaches the layer;
- turned (activations only): elements whose local slope dL/d(input) / dL/d(output) jumped to another value
  than float64's: a ReLU6 or MobileTL mask that turned, Hard-Swish's or Hardsigmoid's derivative on the
  other side of +-3. The input lay within the forward error of a kink, and that element's gradient changes
  by a large fraction of |dY|. It is rounding meeting a discontinuity, not a wrong formula; but the less
  accurate a forward, the more elements turn, and on small maps a handful moves a weight's gradient by
  percents. (The slope is read from the tapped input, which feeds only the activation in these models.)

The comparison is generic: each format brings its probe (:class:`Probe`, :meth:`.base.Exporter.probe`), which
lowers the model as that format's export does (its package's ``probe``: :mod:`edgetl.formats.onnx.probe`,
:mod:`edgetl.formats.tflite.probe`).

A layer departs when the export's error there exceeds ``FACTOR`` times PyTorch float32's own error and a
floor (``FORWARD_FLOOR``, ``BACKWARD_FLOOR``; below them both are rounding). Errors carry on along the
network, so the forward departure is the *first* such layer from the input and the backward departure the
first from the loss: where the difference enters. A wrong formula departs by orders of magnitude at its own
layer; a less accurate kernel by a factor that grows layer after layer (and turns many more elements).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..ops import MaskedActivation

FACTOR = 4.0  # as validation's GRAD_FACTOR: a correct runtime sums in another order, within a few times PyTorch
FORWARD_FLOOR = 1e-6  # float32 rounding over a few layers (PyTorch measures 1e-7 to 4e-5 on MobileNets)
BACKWARD_FLOOR = 1e-4  # PyTorch float32's dL/d(output) measures 1e-6 to 3e-5 where no element turned
SLOPE_JUMP = 1e-2  # a kink's jump is 1/6 or more; a slope moving with its input moves by |dx| / 3
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, MaskedActivation)


class Probe(Protocol):
    """A format's runtime with every layer tapped, on one training-mode step."""

    def names(self) -> list[str]:
        """The layers it taps (module names), in forward order."""

    def run(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(loss, outputs, gradients) by layer name, NCHW as PyTorch."""


@dataclass
class LayerDiff:
    name: str
    kind: str  # the module's class name
    forward: float  # the export's ||a - a64|| / ||a64||
    forward_torch: float  # PyTorch float32's
    backward: float | None = None  # the same for dL/d(output); None where no gradient reaches the layer
    backward_torch: float | None = None
    turned: int = 0  # activation elements whose slope jumped (see the module docstring)
    turned_torch: int = 0

    def departs(self, which: str) -> bool:
        got, own = (self.forward, self.forward_torch) if which == "forward" else (self.backward, self.backward_torch)
        floor = FORWARD_FLOOR if which == "forward" else BACKWARD_FLOOR
        return got is not None and got > max(floor, FACTOR * own)


@dataclass
class Report:
    layers: list[LayerDiff]
    loss: float  # the export's |loss - loss64| / |loss64|
    loss_torch: float
    first_forward: str | None = None
    first_backward: str | None = None
    notes: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerDiff:
        return next(d for d in self.layers if d.name == name)

    @property
    def turned(self) -> tuple[int, int]:
        """Activation elements turned in all: (the export's, PyTorch float32's)."""
        return sum(d.turned for d in self.layers), sum(d.turned_torch for d in self.layers)

    def summary(self) -> str:
        """One sentence for an error message: where the export departs, with the figures."""
        parts = []
        if self.first_forward:
            d = self.layer(self.first_forward)
            parts.append(f"forward departs first at {d.name} ({d.kind}): output error {d.forward:.2g} against "
                         f"float64, PyTorch float32's {d.forward_torch:.2g}")
        if self.first_backward:
            d = self.layer(self.first_backward)
            parts.append(f"gradients depart first (from the loss) at {d.name} ({d.kind}): dL/d(output) error "
                         f"{d.backward:.2g}, PyTorch float32's {d.backward_torch:.2g}")
        turned, own = self.turned
        if turned or own:
            first = next(d for d in reversed(self.layers) if d.turned or d.turned_torch)
            parts.append(f"{turned} activation elements turned at a kink (PyTorch float32: {own}), the first from "
                         f"the loss at {first.name}")
        if not (self.first_forward or self.first_backward):
            parts.insert(0, "no layer departs from PyTorch by more than its own float32 rounding")
        return "layer by layer: " + "; ".join(parts)

    def as_dict(self) -> dict:
        return {"summary": self.summary(), "loss": self.loss, "loss_torch": self.loss_torch,
                "first_forward": self.first_forward, "first_backward": self.first_backward, "notes": self.notes,
                "factor": FACTOR, "forward_floor": FORWARD_FLOOR, "backward_floor": BACKWARD_FLOOR,
                "layers": [asdict(d) for d in self.layers]}


def torch_layers(model: nn.Module, images: np.ndarray, labels: np.ndarray, names: list[str],
                 dtype: torch.dtype = torch.float32) -> tuple[float, dict, dict, dict[str, str]]:
    """(loss, outputs, gradients, inputs) of one training-mode step of ``model`` in ``dtype``, for the layers
    ``names``; ``inputs`` names, for each layer, the tapped layer whose output it reads (when one does).

    Arrays are kept as float32 whatever ``dtype`` (a float64 reference rounded to float32 moves by 3e-8, far
    below what is compared), so that the copies compared fit in memory at 224 x 224.
    """
    model = copy.deepcopy(model).to(dtype)
    for m in model.modules():
        if getattr(m, "inplace", False):  # an in-place activation would overwrite the tapped output of the layer before
            m.inplace = False
    outputs, grads, inputs, produced = {}, {}, {}, {}

    def tap(name):
        def hook(module, args, out):
            if args and id(args[0]) in produced:
                inputs[name] = produced[id(args[0])][0]
            produced.setdefault(id(out), (name, out))  # the tensor is held, so its id is not reused meanwhile
            outputs[name] = out.detach().to(torch.float32).numpy().copy()
            if out.requires_grad:
                out.register_hook(lambda g: grads.__setitem__(name, g.detach().to(torch.float32).numpy().copy()))
        return hook

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(tap(n)) for n in names if n in modules]
    try:
        x = torch.from_numpy(images).to(dtype)
        loss = nn.functional.cross_entropy(model(x), torch.from_numpy(labels).long())
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    return loss.item(), outputs, grads, inputs


def memory_estimate(model: nn.Module, batch_size: int, resolution: int) -> int:
    """Bytes the comparison holds at its peak, about: every layer's output and its gradient (float32) six times
    over (the float64 reference kept, PyTorch's float64 autograd graph, the PyTorch float32 copies while they
    are measured, the probe's outputs and its interpreter's arena). MobileNetV2 at 224, batch 8: 7.0 GiB
    estimated, 7.1 GiB peak resident measured."""
    count = 0

    def hook(module, args, out):
        nonlocal count
        count += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            copy.deepcopy(model).eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in handles:
            h.remove()
    return 6 * 2 * 4 * count * batch_size


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    norm = float(np.linalg.norm(ref.ravel().astype(np.float64)))
    diff = float(np.linalg.norm((got.astype(np.float64) - ref).ravel()))
    return diff / norm if norm else diff


def _turned(g_in, g_out, ref_in, ref_out) -> int:
    """Elements whose slope dL/d(input) / dL/d(output) differs from the reference's by a jump."""
    both = (g_out != 0) & (ref_out != 0)
    slope, ref = g_in[both] / g_out[both], ref_in[both].astype(np.float64) / ref_out[both]
    return int(np.count_nonzero(np.abs(slope - ref) > SLOPE_JUMP * np.maximum(1.0, np.abs(ref))))


def _measure(out: dict, grad: dict, out64: dict, grad64: dict, inputs: dict[str, str], activations: set[str]) -> dict:
    """name -> (forward error, backward error or None, turned) of one side against float64; frees ``out``."""
    result = {}
    for n in list(out):
        if n not in out64:
            continue
        backward, turned = None, 0
        if n in grad and n in grad64:
            backward = _rel(grad[n], grad64[n])
            src = inputs.get(n)
            if n in activations and src in grad and src in grad64 and grad[src].shape == grad[n].shape:
                turned = _turned(grad[src], grad[n], grad64[src], grad64[n])
        result[n] = (_rel(out.pop(n), out64[n]), backward, turned)  # freed as it goes: hundreds of MiB at 224
    return result


def compare(model: nn.Module, images: np.ndarray, labels: np.ndarray, probe: Probe) -> Report:
    """Every layer the probe taps, the export and PyTorch float32 against PyTorch float64, on one batch.

    ``model`` is the policy-applied model in training mode (dropout off: validation's ``training_copy``) that
    the probe was made from.
    """
    names = probe.names()
    modules = dict(model.named_modules())
    activations = {n for n in names if isinstance(modules.get(n), ACTIVATIONS)}
    loss64, out64, grad64, inputs = torch_layers(model, images, labels, names, torch.float64)
    loss32, out32, grad32, _ = torch_layers(model, images, labels, names, torch.float32)
    own = _measure(out32, grad32, out64, grad64, inputs, activations)
    del out32, grad32
    loss, out, grad = probe.run(images, labels)
    got = _measure(out, grad, out64, grad64, inputs, activations)
    layers = []
    for n in names:
        if n in got and n in own:
            (fwd, bwd, turned), (fwd_t, bwd_t, turned_t) = got[n], own[n]
            layers.append(LayerDiff(n, type(modules[n]).__name__ if n in modules else "?", fwd, fwd_t,
                                    bwd if bwd_t is not None else None, bwd_t if bwd is not None else None,
                                    turned, turned_t))
    report = Report(layers, abs(loss - loss64) / abs(loss64), abs(loss32 - loss64) / abs(loss64))
    report.first_forward = next((d.name for d in layers if d.departs("forward")), None)
    report.first_backward = next((d.name for d in reversed(layers) if d.departs("backward")), None)
    return report
