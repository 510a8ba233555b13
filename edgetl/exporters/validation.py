"""Validate an export against the PyTorch reference, check by check, for any runtime.

    validation = validate_with_runner(tflite_runner, "artifacts/tflite", run, images, labels, logits, steps, spec)
    print(validation); assert validation.ok

A runner's ``Session`` is what validation drives: ``params()``, ``set_params(d)``,
``gradients(x, y) -> (loss, grads)``, ``step_with_gradients``, ``running_stats()`` and ``logits``.

What is checked, and why these tolerances (fp32; figures measured on this stack):

- inference logits: ``LOGIT_ATOL`` = 1e-4 absolute, relative to max(1, |logit|). Another runtime sums
  convolutions in another order; rounding over ~50 layers stays near 1e-6 (measured 3e-8 to 5e-6).
- K training steps, teacher-forced: before each step PyTorch takes the export's current parameters, then
  both compute the loss and the gradients on the same batch, and the export steps on (plain SGD, done on
  its own gradients). So every step is checked from the same point and nothing compounds.
  * losses: ``LOSS_RTOL`` = 1e-4 relative (the forward in training mode; measured ~1e-6);
  * gradients, against PyTorch in float64 (the exact gradient of the same model, masks included) as
    ||g_export - g_64|| / ||g_64|| over all trainable tensors, allowed ``GRAD_RTOL`` = 2e-2 or
    ``GRAD_FACTOR`` = 4 times PyTorch's own float32 error at that step, whichever is larger. Masks (ReLU6
    at 0 and 6, MobileTL's Hard-Swish step at t) flip for the odd element whose input lies within rounding
    of a threshold, changing that element's gradient by |dY|; typical steps measure 1e-6, a step with a
    flip up to 7.6e-3 (MobileNetV2 at 64 px: 2 x 2 maps, so a depthwise weight's gradient sums only 16
    terms). Gradients through batch-statistic norms on small maps are ill-conditioned (three large terms
    cancel): on a random MobileNetV2 at 128 px PyTorch's own float32 gradient is 1.7e-2 from float64 and
    another runtime's sums land within 4.4e-2, hence the factor. A wrong backward formula measures 0.6 to
    1.1 (the exact Hard-Swish derivative in place of MobileTL's step). The factor is no licence for a
    runtime that sums worse than PyTorch: batch statistics summed in one float32 accumulator over 8 x 112 x
    112 elements (TFLite's MEAN) put MobileNetV2's forward 200 times further from float64 than PyTorch's,
    turned 12359 mask elements instead of 54, and measured 0.2 at 224 px; the lowering sums axis by axis
    instead (``edgetl.formats.tflite.ops.channel_sum``). A failed export runs :mod:`.layerdiff` and names the layer where
    it departs.
- running statistics of the fully trained norms after those K steps (the runtime updates them from the
  batch statistics, as PyTorch does in training mode): ``STATS_RTOL`` = 1e-3 of max(1, |value|); both
  sides see the same batches from the same parameters, so only rounding separates them.
- the export's optimizer: one step of its optimizer graph against PyTorch's optimizer applied to the very
  same gradients, so no gradient noise enters: ``OPT_RTOL`` = 1e-3 of the learning rate per element
  (measured 1e-7 of it).
- reported, not checked: K free-running steps with the export's own optimizer against PyTorch's. The rare
  mask flips above, and AdamW's ±lr step on gradients at rounding level (its first step is lr·sign(g)),
  make two correct trajectories drift apart; the drift is measured and stored.

A failed check fails the export, naming the largest differences.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..optim import OptimizerSpec
from ..run import Run
from .reference import eval_logits, torch_step, trainable, training_copy

LOGIT_ATOL = 1e-4
LOSS_RTOL = 1e-4
GRAD_RTOL = 2e-2
GRAD_FACTOR = 4.0
OPT_RTOL = 1e-3
STATS_RTOL = 1e-3
TOLERANCES = {"logit_atol": LOGIT_ATOL, "loss_rtol": LOSS_RTOL, "grad_rtol": GRAD_RTOL, "grad_factor": GRAD_FACTOR,
              "opt_rtol": OPT_RTOL, "stats_rtol": STATS_RTOL}
PARITY_SGD_LR = 0.01  # the learning rate of the teacher-forced steps when the run used another optimizer


class Session(Protocol):
    """What validation needs from an exported model's runtime (a device runner's ``Session``)."""

    def params(self) -> dict[str, np.ndarray]: ...

    def set_params(self, params: dict[str, np.ndarray]) -> None: ...

    def gradients(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]: ...

    def running_stats(self) -> dict[str, np.ndarray]: ...


@dataclass
class Check:
    name: str
    ok: bool
    max_diff: float
    tolerance: float
    detail: str = ""

    def __post_init__(self):  # numpy comparisons give numpy scalars, which JSON cannot hold
        self.ok, self.max_diff, self.tolerance = bool(self.ok), float(self.max_diff), float(self.tolerance)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{'✓' if self.ok else '✗'} {self.name}: max |diff| {self.max_diff:.3g} "
                f"(tolerance {self.tolerance:.3g}); {self.detail}")


@dataclass
class Validation:
    """An export's checks against PyTorch, and the free-running drift (reported, not checked)."""

    checks: list[Check]
    free_running: dict | None = None
    extra: dict = field(default_factory=dict)  # e.g. the runtime's step time

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @classmethod
    def from_dict(cls, d: dict) -> Validation | None:
        """What :meth:`as_dict` wrote (an export's manifest), or None when the export was not validated."""
        if not d.get("validated"):
            return None
        extra = {k: v for k, v in d.items() if k not in ("validated", "ok", "checks", "free_running")}
        return cls([Check(**c) for c in d.get("checks", [])], d.get("free_running"), extra)

    def as_dict(self) -> dict:
        return {"validated": True, "ok": self.ok, "checks": [c.as_dict() for c in self.checks],
                "free_running": self.free_running, **self.extra}

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.checks)


def grad_error(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, str]:
    """(||got - ref|| / ||ref|| over all tensors, the tensor with the largest difference)."""
    diff = np.sqrt(sum(float(np.sum((got[n] - ref[n]) ** 2)) for n in ref))
    norm = np.sqrt(sum(float(np.sum(ref[n] ** 2)) for n in ref))
    worst = max(ref, key=lambda n: float(np.max(np.abs(got[n] - ref[n]))))
    return (diff / norm if norm else diff), worst


def compare_logits(reference: np.ndarray, got: np.ndarray, what: str = "inference logits") -> Check:
    diff = float(np.max(np.abs(reference - got)))
    tol = LOGIT_ATOL * max(1.0, float(np.max(np.abs(reference))))
    agree = float(np.mean(reference.argmax(1) == got.argmax(1)))
    return Check(what, diff <= tol, diff, tol, f"{reference.shape[0]} images, top-1 agreement {agree:.0%}")


def teacher_forced(run: Run, session: Session, images: np.ndarray, labels: np.ndarray, steps: int,
                   lr: float) -> list[Check]:
    """Losses and gradients of ``steps`` steps, each from the export's current parameters on both sides."""
    model = training_copy(run.model)
    params = trainable(model)
    missing = sorted(set(params) - set(session.params()))
    if missing:
        return [Check("trainable parameters present in the export", False, float("inf"), 0.0,
                      f"missing: {', '.join(missing[:5])}")]
    model64 = copy.deepcopy(model).double()  # the exact gradient the float32 ones approximate
    params64 = trainable(model64)
    loss_diffs, margins, worst = [], [], None
    for i in range(steps):
        current = session.params()
        with torch.no_grad():
            for n, value in current.items():
                params[n].copy_(torch.from_numpy(value))
                params64[n].copy_(torch.from_numpy(value))
        x, y = images[i % len(images)], labels[i % len(labels)]
        loss_ref, grads_ref = torch_step(model, x, y)
        _, grads64 = torch_step(model64, x.astype(np.float64), y)
        loss, grads = session.gradients(x, y)
        loss_diffs.append(abs(loss - loss_ref) / max(1.0, abs(loss_ref)))
        err, tensor = grad_error(grads, grads64)
        torch_err, _ = grad_error(grads_ref, grads64)
        tol = max(GRAD_RTOL, GRAD_FACTOR * torch_err)
        margins.append(err / tol)
        if margins[-1] >= max(margins):
            worst = (err, tol, f"step {i + 1}: PyTorch float32's own error {torch_err:.2g}; largest element "
                               f"difference in {tensor}")
        session.set_params({n: current[n] - np.float32(lr) * grads[n] for n in grads})
    checks = [Check(f"training losses, {steps} steps from the same parameters", max(loss_diffs) <= LOSS_RTOL,
                    max(loss_diffs), LOSS_RTOL, f"per step: {', '.join(f'{d:.1e}' for d in loss_diffs)}"),
              Check(f"gradients of {len(params)} tensors, {steps} steps, ||diff|| / ||grad|| against float64",
                    max(margins) <= 1.0, worst[0], worst[1], worst[2])]
    running = session.running_stats()
    if running:
        buffers = dict(model.named_buffers())
        name, worst = max(((n, float(np.max(np.abs(v - buffers[n].numpy()) / np.maximum(1.0, np.abs(v)))))
                           for n, v in running.items()), key=lambda t: t[1])
        checks.append(Check(f"running statistics of {len(running) // 2} trained norms after {steps} steps",
                            worst <= STATS_RTOL, worst, STATS_RTOL, f"largest at {name}"))
    return checks


def compare_optimizer_step(before: dict[str, np.ndarray], grads: dict[str, np.ndarray], after: dict[str, np.ndarray],
                           optimizer: OptimizerSpec) -> Check:
    """The export's optimizer step vs PyTorch's optimizer on the same parameters and the same gradients."""
    params = {n: nn.Parameter(torch.from_numpy(before[n].copy())) for n in before}
    for n, p in params.items():
        p.grad = torch.from_numpy(grads[n].copy())
    optimizer.build(list(params.values())).step()
    name, worst = max(((n, float(np.max(np.abs(params[n].detach().numpy() - after[n])))) for n in params),
                      key=lambda t: t[1])
    tol = OPT_RTOL * optimizer.lr
    return Check(f"one {optimizer.name} step of the exported optimizer, same gradients", worst <= tol, worst, tol,
                 f"largest at {name}")


def free_running(run: Run, images: np.ndarray, labels: np.ndarray, steps: int, optimizer: OptimizerSpec,
                 losses: list[float], params: dict[str, np.ndarray], eval_after: np.ndarray) -> dict:
    """How far the export's own K steps drift from PyTorch's (reported), eval logits included (with the running
    statistics each side updated), and how much those statistics move eval logits."""
    model = training_copy(run.model)
    start = {n: p.detach().numpy().copy() for n, p in trainable(model).items()}
    frozen_stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    opt = optimizer.build(list(trainable(model).values()))
    ref_losses = []
    for i in range(steps):
        loss, _ = torch_step(model, images[i % len(images)], labels[i % len(labels)])
        opt.step()
        ref_losses.append(loss)
    ref = {n: p.detach().numpy() for n, p in trainable(model).items()}
    updated_logits = eval_logits(model, images[0])
    model.load_state_dict(frozen_stats, strict=False)
    frozen_logits = eval_logits(model, images[0])
    apart = np.sqrt(sum(float(np.sum((params[n] - ref[n]) ** 2)) for n in ref))
    moved = np.sqrt(sum(float(np.sum((ref[n] - start[n]) ** 2)) for n in ref))
    return {"optimizer": optimizer.name, "lr": optimizer.lr, "steps": steps,
            "losses_torch": ref_losses, "losses_export": list(losses),
            "max_loss_diff": max(abs(a - b) for a, b in zip(ref_losses, losses)),
            "param_distance_over_moved": apart / moved if moved else apart,
            "max_param_diff": max(float(np.max(np.abs(params[n] - ref[n]))) for n in ref),
            "max_eval_logit_diff": float(np.max(np.abs(eval_after - updated_logits))),
            # what updating the running statistics changes in eval (the export's runner updates them)
            "running_statistics_eval_logit_effect": float(np.max(np.abs(frozen_logits - updated_logits)))}


def validate_with_runner(runner, artifacts: str, run: Run, images: np.ndarray, labels: np.ndarray,
                         ref_logits: np.ndarray, steps: int, spec: OptimizerSpec) -> Validation:
    """Every check of this module, run through a device runner's own code (its ``Session``, ``infer``, ``train``)."""
    sgd_lr = spec.lr if spec.name == "sgd" and not spec.momentum else PARITY_SGD_LR
    stepper = runner.Session(artifacts)
    before = stepper.params()
    _, grads = stepper.step_with_gradients(images[0], labels[0])
    checks = [compare_logits(ref_logits, runner.infer(artifacts, images[0])),
              *teacher_forced(run, runner.Session(artifacts), images, labels, steps, sgd_lr),
              compare_optimizer_step(before, grads, stepper.params(), spec)]
    trained = runner.train(artifacts, images, labels, steps)
    session = trained["session"]
    drift = free_running(run, images, labels, steps, spec, trained["losses"], session.params(),
                         session.logits(images[0]))
    return Validation(checks, drift, {"runtime_step_seconds": float(np.median(trained["step_seconds"]))})
