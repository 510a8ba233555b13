"""Measure the bytes that autograd really saves for backward, with ``saved_tensors_hooks``.

    saved = measure_saved(model, images)     # runs forward (+ loss) once under the hooks
    saved.activation_bytes                   # activations kept alive for backward, deduplicated by storage
    saved.parameter_bytes                    # parameters/buffers referenced by the graph (exist anyway)

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


class SavedTensorCounter:
    """Context manager that records every tensor autograd saves while it is active."""

    def __init__(self, model: nn.Module | None = None):
        owned = list(model.parameters()) + list(model.buffers()) if model is not None else []
        self._param_ptrs = {t.untyped_storage().data_ptr() for t in owned}
        self.result = SavedTensors()
        self._params_seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

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
        return t

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


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
