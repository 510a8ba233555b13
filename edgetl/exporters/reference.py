"""The PyTorch side of every export: reference batches and what PyTorch computes on them.

    images, labels = reference_batches(run, batch_size=4, count=2)       # the run's validation data, or random
    images, labels, logits = write_reference(run, out, batch_size, steps, trainable)   # reference.npz
    loss, grads = torch_step(training_copy(run.model), images[0], labels[0])

Validation compares an export against these; ``reference.npz`` lets a device repeat the check (``--verify``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..data import load_datasets
from ..errors import EdgeTLError
from ..run import Run

REFERENCE = "reference.npz"


def training_copy(model: nn.Module) -> nn.Module:
    """The model as exported graphs train it: same policy, but no dropout (its random stream cannot match)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model.train()


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def eval_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(images)).numpy()
    model.train(was)
    return out


def torch_step(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    params = trainable(model)
    for p in params.values():
        p.grad = None
    loss = nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
    loss.backward()
    return loss.item(), {n: p.grad.numpy().copy() for n, p in params.items()}


def reference_batches(run: Run, batch_size: int = 4, count: int = 2, seed: int = 0,
                      dataset=None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` batches of preprocessed images and labels, shaped (count, B, 3, R, R) and (count, B).

    Taken from ``dataset``, else the run's validation data when it is still readable; otherwise random
    images (said in the run's notes).
    """
    n = batch_size * count
    try:
        if dataset is None:
            if not run.data:
                raise EdgeTLError("it names none")
            _, dataset, _ = load_datasets(run.data, run.resolution, run.config.get("seed", 0))
        if len(dataset) < n:
            raise EdgeTLError(f"only {len(dataset)} images")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        items = [dataset[i] for i in order]
        images = torch.stack([torch.as_tensor(x) for x, _ in items]).numpy()
        labels = np.array([int(y) for _, y in items], dtype=np.int64)
    except EdgeTLError as exc:
        run.notes.append(f"reference batches are random images: the run's data could not be used ({exc})")
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(n, 3, run.resolution, run.resolution, generator=g).numpy()
        labels = torch.randint(0, len(run.class_names), (n,), generator=g).numpy()
    shape = (count, batch_size, 3, run.resolution, run.resolution)
    return images.reshape(shape).astype(np.float32), labels.reshape(count, batch_size)


def write_reference(run: Run, out, batch_size: int, steps: int, names: list[str], dataset=None):
    """Reference batches with PyTorch's eval logits, loss and per-tensor gradient norms, in ``reference.npz``
    (a device's ``--verify`` compares against it); returns (images, labels, logits)."""
    images, labels = reference_batches(run, batch_size=batch_size, count=max(1, min(steps, 4)), dataset=dataset)
    logits = eval_logits(training_copy(run.model), images[0])  # before any train-mode forward moves statistics
    loss, grads = torch_step(training_copy(run.model), images[0], labels[0])
    np.savez(out / REFERENCE, images=images, labels=labels, logits=logits, loss=np.float32(loss),
             grad_norms=np.array([np.linalg.norm(grads[n]) for n in names]))
    return images, labels, logits
