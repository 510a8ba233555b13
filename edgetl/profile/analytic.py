"""Analytic memory and FLOPs of one training step, per layer and in total, for a model under a policy.

    prof = analyze("mobilenet_v2", "mobiletl:5", resolution=224)      # traces once
    totals = prof.totals(batch=8, optimizer="sgd")                     # bytes and FLOPs, a dict
    for layer in prof.layers: layer.saved_bytes(8)

The model is traced once (batch 2, real tensors on a copy, so the caller's model is untouched) to learn
each layer's shapes, which tensors share storage, and where gradients flow; the rules in
:mod:`.rules` then say what each layer keeps. Byte and FLOP figures scale exactly with the batch, so
one trace serves every batch size (the budget search relies on this).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..models import create_model
from ..optim import OptimizerSpec
from ..policies import Policy, parse_policy
from ..prefix import choose_prefix_batch, prefix_modules, prefix_transient, run_prefix, split_of
from ..surgery import apply_policy
from .rules import FP32_BITS, INT64_BITS, Cost, Keep, rule_for

TRACE_BATCH = 2  # train-mode batch norm needs more than one value per channel


def block_of(name: str) -> str:
    """``features.N`` for anything inside it, else the top-level module name (``classifier``...)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "features" and len(parts) > 1 else parts[0]


@dataclass
class LayerProfile:
    name: str
    kind: str
    cost: Cost
    #: keeps first claimed by this layer (a storage kept by several layers counts at the first)
    owned: list[Keep] = field(default_factory=list)
    trainable_params: int = 0
    frozen_params: int = 0

    @property
    def block(self) -> str:
        return block_of(self.name)

    def saved_bytes(self, batch: int) -> int:
        return sum(k.nbytes(batch) for k in self.owned)

    def flops(self, batch: int) -> dict[str, float]:
        c = self.cost
        return {"forward_flops": c.forward_flops * batch, "backward_input_flops": c.input_grad_flops * batch,
                "backward_weight_flops": c.weight_grad_flops * batch}


@dataclass
class ModelProfile:
    model: str
    policy: str
    resolution: int
    num_classes: int
    layers: list[LayerProfile]
    #: largest working set of one layer per sample, fp32 bytes: input + output in forward, and in
    #: backward (where a gradient flows) also their gradients
    transient_bytes_per_sample: float
    #: the same, split between the frozen prefix (no gradients) and the trained region; and the prefix's output
    prefix_layer_bytes_per_sample: float = 0.0
    trained_layer_bytes_per_sample: float = 0.0
    prefix_output_bytes_per_sample: float = 0.0
    split: int = 0

    def auto_prefix_batch(self, batch: int) -> int | None:
        """The micro-batch ``--prefix-batch auto`` chooses at ``batch`` (None: no frozen prefix)."""
        if not self.split:
            return None
        return choose_prefix_batch(self.prefix_layer_bytes_per_sample, self.prefix_output_bytes_per_sample,
                                   self.trained_layer_bytes_per_sample, batch)

    def training_flops(self, batch: int, cached: bool = False) -> float:
        """FLOPs of one step at ``batch``; ``cached``: from the frozen prefix's cached output (the trained region's
        forward and the backward, what epochs after the first cost with the feature cache)."""
        flops = sum(sum(layer.flops(batch).values()) for layer in self.layers)
        if cached and self.split:
            flops -= sum(layer.flops(batch)["forward_flops"] for layer in self.layers if self.in_prefix(layer))
        return flops

    def in_prefix(self, layer: LayerProfile) -> bool:
        """``layer`` belongs to the frozen prefix, ``features[:split]``."""
        block = layer.block.split(".")
        return block[0] == "features" and len(block) > 1 and int(block[1]) < self.split

    def transient(self, batch: int, prefix_batch: int | str | None = None) -> int:
        """Bytes of the largest working set at ``batch``, the prefix streamed ``prefix_batch`` samples at a time."""
        if prefix_batch == "auto":
            prefix_batch = self.auto_prefix_batch(batch)
        if not self.split or not prefix_batch:
            return int(self.transient_bytes_per_sample * batch)
        return int(max(prefix_transient(self.prefix_layer_bytes_per_sample, self.prefix_output_bytes_per_sample, batch,
                                        prefix_batch), self.trained_layer_bytes_per_sample * batch))

    def totals(self, batch: int, optimizer: str | OptimizerSpec = "sgd",
               prefix_batch: int | str | None = None) -> dict[str, float]:
        """Bytes and FLOPs of one step at ``batch`` with ``optimizer`` (a spec, or a name such as ``sgd``), the
        frozen prefix streamed ``prefix_batch`` samples at a time (None: the whole batch; "auto")."""
        slots = OptimizerSpec.parse(optimizer).state_slots
        trainable = sum(layer.trainable_params for layer in self.layers) * 4
        frozen = sum(layer.frozen_params for layer in self.layers) * 4
        saved = sum(layer.saved_bytes(batch) for layer in self.layers)
        flops = {k: sum(layer.flops(batch)[k] for layer in self.layers)
                 for k in ("forward_flops", "backward_input_flops", "backward_weight_flops")}
        out = {
            "saved_activation_bytes": saved,
            "trainable_param_bytes": trainable,
            "frozen_param_bytes": frozen,
            "gradient_bytes": trainable,
            "optimizer_state_bytes": trainable * slots,
            "transient_bytes": self.transient(batch, prefix_batch),
            **flops,
        }
        out["training_memory_bytes"] = sum(out[k] for k in (
            "saved_activation_bytes", "trainable_param_bytes", "frozen_param_bytes", "gradient_bytes",
            "optimizer_state_bytes", "transient_bytes"))
        out["training_flops"] = sum(flops.values())
        return out


def _loss_layer(num_classes: int) -> LayerProfile:
    keeps = [Keep(-10**9, num_classes, FP32_BITS, "log-softmax"), Keep(-10**9 - 1, 1, INT64_BITS, "targets"),
             Keep(-10**9 - 2, 0, FP32_BITS, "mean weight", fixed_bytes=4)]
    cost = Cost(keeps, 3 * num_classes, 2 * num_classes, 0, True, False)
    return LayerProfile("loss", "CrossEntropyLoss", cost, owned=list(keeps))


def trace_layers(module: nn.Module, x: torch.Tensor) -> tuple[list[LayerProfile], list[float], torch.Tensor]:
    """Run ``module`` (in its current mode) on ``x`` once and apply the cost rules to every layer.

    Returns the layers in execution order, the largest per-sample working set (overall, of the layers that ran
    without grad -- the frozen prefix --, and of the others), and the output.
    """
    records: list[tuple[str, nn.Module, Cost]] = []
    alive: list[torch.Tensor] = []  # keep traced tensors alive so no storage address is reused
    transient = [0.0, 0.0, 0.0]  # overall, frozen prefix (runs without grad), trained region
    handles = []
    for mname, sub in module.named_modules():
        rule = rule_for(sub)
        if rule is None:
            if not list(sub.children()):
                raise ConfigError(f"cannot profile layer {mname} ({type(sub).__name__}): no cost rule for it")
            continue

        def hook(m, args, out, mname=mname, rule=rule):
            inp = args[0]
            alive.extend([inp, out])
            cost = rule(m, inp, out, torch.is_grad_enabled())
            records.append((mname, m, cost))
            grads = 2 if (cost.needs_input_grad or cost.needs_weight_grad) else 1
            working = grads * (inp.numel() + out.numel()) * 4 / inp.shape[0]
            where = 2 if torch.is_grad_enabled() else 1
            transient[0], transient[where] = max(transient[0], working), max(transient[where], working)

        handles.append(sub.register_forward_hook(hook))
    try:
        out = module(x)
    finally:
        for h in handles:
            h.remove()
    layers, claimed = [], set()
    for mname, m, cost in records:
        owned = [k for k in cost.keeps if k.key not in claimed]
        claimed.update(k.key for k in owned)
        own_params = list(m.parameters(recurse=False))
        layers.append(LayerProfile(mname, type(m).__name__, cost, owned,
                                   sum(p.numel() for p in own_params if p.requires_grad),
                                   sum(p.numel() for p in own_params if not p.requires_grad)))
    return layers, transient, out


def profile_model(model: nn.Module, resolution: int, name: str = "") -> ModelProfile:
    """Trace a policy-applied ``model`` (a copy: the model is left untouched) in training mode, with its loss."""
    model = copy.deepcopy(model).train()
    x = torch.randn(TRACE_BATCH, 3, resolution, resolution)
    layers, transient, logits = trace_layers(model, x)
    prefix_out = run_prefix(prefix_modules(model), x)
    num_classes = logits.shape[1]
    layers.append(_loss_layer(num_classes))
    return ModelProfile(name, str(getattr(model, "edgetl_policy", "")), resolution, num_classes, layers, transient[0],
                        transient[1], transient[2], prefix_out[0].numel() * 4 if split_of(model) else 0.0,
                        split_of(model))


def analyze(model: str, policy: str | Policy, resolution: int = 224, num_classes: int = 1000) -> ModelProfile:
    """Profile a fresh ``model`` under ``policy`` (weights do not change the figures)."""
    net = apply_policy(create_model(model, num_classes=num_classes), parse_policy(policy))
    return profile_model(net, resolution, name=model)
