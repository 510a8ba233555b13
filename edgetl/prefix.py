"""The frozen prefix ``features[:split]``: streamed in micro-batches, and its outputs cached across epochs.

    set_prefix_batch(model, 2)                      # the prefix now runs 2 samples at a time, same numbers
    batch = auto_prefix_batch(model, batch=8, resolution=224)   # the largest within the trained region's peak
    feats = run_prefix(prefix_modules(model), images, micro_batch=2)
    with features_given(model):                     # model(feats) skips the prefix: feats are its output
        logits = model(feats)

A policy that trains the top of the network (``ft:K``, ``mobiletl:K``, ``last``) runs ``features[:split]``
without an autograd graph, with eval-mode norms (:class:`edgetl.surgery.FrozenPrefix`). Each sample's prefix
output then depends on that sample alone, so the prefix can run in micro-batches (its large early
activations exist for a few samples at a time; the outputs land in one preallocated buffer) and, when the
training inputs are fixed, its outputs can be computed once and reused (:mod:`edgetl.cache`). Policies that
train or backpropagate through the stem (``full``, ``bias``, ``bn+last``) have no prefix (split 0).

The choice of ``auto`` is :func:`choose_prefix_batch`, the one formula the profiler's analytic model uses too:
the prefix's transient memory at micro-batch ``m`` (the output buffer for the whole batch plus ``m`` samples
of its largest layer's input and output) must stay within the trained region's own working set at full batch
(its largest layer's input, output and their gradients).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .errors import ConfigError

FP32 = 4


def split_of(model: nn.Module) -> int:
    """Where the trained region starts: ``model.features[:split]`` is the frozen prefix (0: no prefix)."""
    return int(getattr(getattr(model, "features", None), "split", 0) or 0)


def prefix_modules(model: nn.Module) -> list[nn.Module]:
    return list(model.features)[: split_of(model)]


@torch.no_grad()
def run_prefix(modules: list[nn.Module], x: torch.Tensor, micro_batch: int | None = None) -> torch.Tensor:
    """``modules`` applied to ``x`` without autograd, ``micro_batch`` samples at a time (None: all at once)."""
    n = x.shape[0]
    if not modules:
        return x
    if not micro_batch or micro_batch >= n:
        for m in modules:
            x = m(x)
        return x
    out, start = None, 0
    for size in chunk_sizes(n, micro_batch):
        y = x[start : start + size]
        for m in modules:
            y = m(y)
        if out is None:  # one buffer for the whole batch: no list of chunks and no concatenated copy
            out = y.new_empty((n, *y.shape[1:]))
        out[start : start + size] = y
        start += size
        del y
    return out


def chunk_sizes(n: int, micro_batch: int) -> list[int]:
    """Sizes of the micro-batches of a batch of ``n``: as even as possible, none above ``micro_batch``, none of 1.

    A single sample takes another oneDNN convolution path whose last bits differ from the batched one, so a
    micro-batch of 1 would change numbers: the smallest micro-batch is 2, and 3 where ``n`` is odd.
    """
    k = max(1, min(-(-n // micro_batch), n // 2))
    return [n // k + (i < n % k) for i in range(k)]


@contextmanager
def features_given(model: nn.Module):
    """Inside, ``model(x)`` takes ``x`` as the prefix's output (from a cache) and runs the trained region only."""
    features = model.features
    was = getattr(features, "given", False)
    features.given = True
    try:
        yield model
    finally:
        features.given = was


def check_prefix_batch(prefix_batch, batch: int) -> None:
    if prefix_batch in (None, "auto"):
        return
    if isinstance(prefix_batch, bool) or not isinstance(prefix_batch, int) or not 1 <= prefix_batch <= batch:
        raise ConfigError(f"--prefix-batch must be 'auto' or a number from 1 to the batch size ({batch}), "
                          f"got {prefix_batch!r}")


def set_prefix_batch(model: nn.Module, micro_batch: int | None) -> None:
    """Stream ``model``'s frozen prefix ``micro_batch`` samples at a time (None: the whole batch at once)."""
    if split_of(model):
        model.features.micro_batch = micro_batch


def choose_prefix_batch(prefix_layer_per_sample: float, prefix_out_per_sample: float,
                        trained_per_sample: float, batch: int) -> int:
    """The largest micro-batch whose prefix transient fits within the trained region's transient at ``batch``.

    Prefix transient at ``m``: the output buffer (``batch`` samples) plus ``m`` samples of its largest layer's
    input and output; a whole batch at once needs no separate buffer. At least 2 (see :func:`chunk_sizes`),
    at most ``batch``.
    """
    limit = trained_per_sample * batch
    if prefix_layer_per_sample * batch <= limit:
        return batch
    m = int((limit - prefix_out_per_sample * batch) // max(prefix_layer_per_sample, 1))
    return max(min(2, batch), min(batch, m))


def prefix_transient(prefix_layer_per_sample: float, prefix_out_per_sample: float, batch: int,
                     micro_batch: int | None) -> float:
    """Bytes the prefix holds at once when it runs ``micro_batch`` samples at a time."""
    if not micro_batch or micro_batch >= batch:
        return prefix_layer_per_sample * batch
    return prefix_out_per_sample * batch + prefix_layer_per_sample * max(chunk_sizes(batch, micro_batch))


@torch.no_grad()
def working_sets(model: nn.Module, resolution: int) -> tuple[float, float, float]:
    """(prefix's largest layer input+output, prefix output, trained region's largest layer input+output+grads),
    fp32 bytes per sample, from one eval-mode forward of one sample (shapes only)."""
    prefix_ids = {id(m) for p in prefix_modules(model) for m in p.modules()}
    sizes = {"prefix": 0.0, "trained": 0.0}
    handles = []

    def hook(m, args, out):
        inp = args[0]
        if not (isinstance(inp, torch.Tensor) and isinstance(out, torch.Tensor)):
            return
        per = (inp.numel() + out.numel()) * FP32 / inp.shape[0]
        where = "prefix" if id(m) in prefix_ids else "trained"
        sizes[where] = max(sizes[where], per if where == "prefix" else 2 * per)

    for m in model.modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, resolution, resolution)
        out = run_prefix(prefix_modules(model), x)
        prefix_out = out.numel() * FP32
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return sizes["prefix"], float(prefix_out), sizes["trained"]


def auto_prefix_batch(model: nn.Module, batch: int, resolution: int) -> int | None:
    """:func:`choose_prefix_batch` for ``model`` (None when it has no frozen prefix)."""
    if not split_of(model):
        return None
    return choose_prefix_batch(*working_sets(model, resolution), batch)


def resolve_prefix_batch(model: nn.Module, prefix_batch, batch: int, resolution: int | None) -> int | None:
    """The micro-batch the trainer streams with: validated, ``auto`` resolved, None when there is no prefix."""
    check_prefix_batch(prefix_batch, batch)
    if prefix_batch is None or not split_of(model):
        return None
    if prefix_batch == "auto":
        if not resolution:
            raise ConfigError("--prefix-batch auto needs the input resolution; pass resolution= to the Trainer")
        return auto_prefix_batch(model, batch, resolution)
    return prefix_batch
