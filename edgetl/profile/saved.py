"""Measure the bytes that autograd really saves for backward, with ``saved_tensors_hooks``.

    saved = measure_saved(model, images)     # runs forward (+ loss) once under the hooks
    saved.activation_bytes                   # activations kept alive for backward, deduplicated by storage
    saved.parameter_bytes                    # parameters/buffers referenced by the graph (exist anyway)
    saved.by_layer                           # module name -> bytes (the innermost module running when saved)

Tensors are deduplicated by their storage: two views of one buffer are counted once, at the size of the
storage, because that is what stays alive until backward frees the graph. Storages that belong to the
model's parameters or buffers are reported apart, since they are not extra memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SavedTensors:
    activation_bytes: int = 0
    parameter_bytes: int = 0
    #: storage pointer -> (nbytes, dtype, shape of the first tensor that referenced it)
    activations: dict[int, tuple[int, torch.dtype, tuple[int, ...]]] = field(default_factory=dict)
    #: module name -> activation bytes first saved while it ran ("loss" outside the model)
    by_layer: dict[str, int] = field(default_factory=dict)


class SavedTensorCounter:
    """Context manager that records every tensor autograd saves while it is active."""

    def __init__(self, model: nn.Module | None = None, outside: str = "loss"):
        owned = list(model.parameters()) + list(model.buffers()) if model is not None else []
        self._param_ptrs = {t.untyped_storage().data_ptr() for t in owned}
        self.result = SavedTensors()
        self._params_seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        # a stack of running module names, so each saved tensor is attributed to the innermost one
        self._stack = [outside]
        self._handles = []
        for name, module in (model.named_modules() if model is not None else []):
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args) -> None:  # a hook must return None, or it replaces the input
            self._stack.append(name)

        return hook

    def _leave(self, module, args, out) -> None:
        self._stack.pop()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._param_ptrs:
            if ptr not in self._params_seen:
                self._params_seen.add(ptr)
                self.result.parameter_bytes += storage.nbytes()
        elif ptr not in self.result.activations:
            self.result.activations[ptr] = (storage.nbytes(), t.dtype, tuple(t.shape))
            self.result.activation_bytes += storage.nbytes()
            layer = self._stack[-1]
            self.result.by_layer[layer] = self.result.by_layer.get(layer, 0) + storage.nbytes()
        return t

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for h in self._handles:
            h.remove()


def measure_saved(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                  train_mode: bool = True) -> SavedTensors:
    """Bytes saved for backward by one forward pass plus cross-entropy loss (no backward is run)."""
    was_training = model.training
    model.train(train_mode)
    if labels is None:
        labels = torch.zeros(images.shape[0], dtype=torch.long)
    with SavedTensorCounter(model) as counter:
        loss = nn.functional.cross_entropy(model(images), labels)
    del loss
    model.train(was_training)
    return counter.result
