"""Build torchvision MobileNets with a new head, load weights, and find their inverted-residual blocks.

    model = create_model("mobilenet_v3_small", num_classes=10, weights=None)   # or "imagenet", or a path
    blocks = inverted_residual_blocks(model)     # [(index in model.features, InvertedResidual), ...]

Weights:

- ``"imagenet"``: torchvision's ImageNet-1k weights, read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``) when present, downloaded there when online, else a
  :class:`~edgetl.errors.WeightsError` naming the file to place. ``EDGETL_OFFLINE=1`` skips the
  download attempt.
- a path: a torchvision state_dict, an edgetl checkpoint, or a run directory. A head of another size
  (ImageNet's 1000 classes) is replaced by a new one. An edgetl run trained on other classes (other names,
  ``class_names``, whether or not their count is the same) gives a new head too, said in one line: chained
  transfer keeps the backbone. ``keep_head=True`` keeps the run's head (same count only).
- ``None`` / ``"none"``: random initialisation.

Models are registered in ``MODELS``; adding one is one :class:`ModelSpec` entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

from .checkpoint import UnsafeFile, is_checkpoint, load_checkpoint, load_tensors
from .errors import ConfigError, WeightsError

log = logging.getLogger("edgetl")
IRB_TYPES = (mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual)
DOWNLOAD_TIMEOUT_S = 15


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mobilenet_v2", torchvision.models.mobilenet_v2, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1),
        ModelSpec(
            "mobilenet_v3_small",
            torchvision.models.mobilenet_v3_small,
            torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
        ),
        ModelSpec(
            "mobilenet_v3_large",
            torchvision.models.mobilenet_v3_large,
            torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def head(model: nn.Module) -> nn.Linear:
    """The classifier's final Linear layer (the layer sized to the target classes)."""
    return model.classifier[-1]


def num_classes_of(model: nn.Module) -> int:
    return head(model).out_features


def inverted_residual_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """``(N, block)`` for every ``features.N`` that is an InvertedResidual, bottom to top."""
    return [(i, m) for i, m in enumerate(model.features) if isinstance(m, IRB_TYPES)]


def create_model(name: str, num_classes: int = 1000, weights: str | os.PathLike | None = None,
                 class_names: list[str] | None = None, keep_head: bool = False) -> nn.Module:
    """A torchvision MobileNet with a head of ``num_classes``, loaded with ``weights``. With an edgetl run as
    ``weights``, ``class_names`` (the new data's) decide whether its head is kept: only for the same classes,
    unless ``keep_head``."""
    spec = model_spec(name)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    model = spec.builder(weights=None)
    model.edgetl_model = name  # the registered name: a run directory records it
    if weights is None or str(weights).lower() == "none":
        _replace_head(model, num_classes)
        return model
    meta = None
    if str(weights).lower() == "imagenet":
        state = _imagenet_state_dict(spec)
        source = "ImageNet weights"
    else:
        state, meta = read_weights(weights, name)
        source = str(weights)
    _load_backbone_and_head(model, state, num_classes, name, source,
                            new_head=meta is not None and _new_head(meta, source, num_classes, class_names, keep_head))
    return model


def _classes(names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)}: {shown}"


def _new_head(meta: dict, source: str, num_classes: int, class_names: list[str] | None, keep_head: bool) -> bool:
    """Whether an edgetl run's head gives way to a new one: when it was trained for other classes (by name when
    both runs name them, else by count), unless ``keep_head``. Says which in one line."""
    old_names, old_count = meta.get("class_names"), meta.get("num_classes")
    if keep_head:
        if old_count != num_classes:
            raise ConfigError(f"--keep-head keeps the head of {source}, which has {old_count} classes, but the data "
                              f"has {num_classes}: drop --keep-head (a new head starts)")
        if class_names is not None and old_names is not None and list(old_names) != list(class_names):
            log.warning(f"--keep-head: keeping the head of {source}, trained for other classes ({_classes(old_names)}) "
                        f"than these ({_classes(class_names)})")
        return False
    if class_names is not None and old_names is not None:
        if list(old_names) == list(class_names):
            return False
        same = " (the same number: --keep-head keeps the old head)" if len(old_names) == len(class_names) else ""
        log.warning(f"{source} was trained for other classes ({_classes(old_names)}) than these "
                    f"({_classes(class_names)}){same}: keeping its backbone, starting a new head")
        return True
    if old_count != num_classes:
        log.warning(f"{source} was trained for {old_count} classes and the new head has {num_classes}: keeping its "
                    f"backbone, starting a new head")
    return old_count != num_classes


def _replace_head(model: nn.Module, num_classes: int) -> None:
    old = head(model)
    if old.out_features != num_classes:
        new = nn.Linear(old.in_features, num_classes)
        # torchvision's MobileNet init for the classifier
        nn.init.normal_(new.weight, 0, 0.01)
        nn.init.zeros_(new.bias)
        model.classifier[-1] = new


def _load_backbone_and_head(model: nn.Module, state: dict, num_classes: int, name: str, source: str,
                            new_head: bool = False) -> None:
    head_key = f"classifier.{len(model.classifier) - 1}"
    head_w = state.get(f"{head_key}.weight")
    expected = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(head_key + ".")}
    missing = [k for k in expected if not k.startswith(head_key + ".") and k not in backbone]
    unexpected = [k for k in backbone if k not in expected]
    mismatched = [k for k, v in backbone.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched or head_w is None:
        detail = (missing or unexpected or mismatched or [f"{head_key}.weight"])[:3]
        raise WeightsError(
            f"{source} do not fit {name}: {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(mismatched)} mismatched tensors (e.g. {', '.join(detail)}). Pass weights saved from {name}, "
            f"or choose the matching --model."
        )
    model.load_state_dict(backbone, strict=False)
    _replace_head(model, num_classes)
    # a head of the right size is kept (unless trained for other classes); one of another size (e.g. ImageNet's
    # 1000) starts fresh
    if head_w.shape[0] == num_classes and not new_head:
        model.classifier[-1].load_state_dict({"weight": head_w, "bias": state[f"{head_key}.bias"]})


def load_weights_file(path: str | os.PathLike, name: str | None = None) -> dict:
    """The torchvision-layout state_dict in a weights file: a torchvision state_dict, an edgetl checkpoint or an
    edgetl run directory (whose model must be ``name``)."""
    return read_weights(path, name)[0]


def read_weights(path: str | os.PathLike, name: str | None = None) -> tuple[dict, dict | None]:
    """(state_dict, the edgetl run's metadata or None) of a weights file, checkpoint or run directory; read with
    ``weights_only=True``, so a file that would run code is refused."""
    path = Path(path)
    if path.is_dir():
        obj = load_checkpoint(path)
    elif not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; pass --weights imagenet, --weights none, or the path of a .pth file"
        )
    else:
        try:
            obj = load_tensors(path)
        except UnsafeFile:
            raise
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise WeightsError(
                f"weights file {path} is corrupt or not a PyTorch file ({type(exc).__name__}); re-download or "
                f"re-export it"
            ) from None
    meta = None
    if is_checkpoint(obj):
        meta = obj["edgetl"]
        if name is not None and meta.get("model") != name:
            raise WeightsError(
                f"{path} is an edgetl checkpoint of {meta.get('model')}, not {name}; pass --model {meta.get('model')}"
            )
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state_dict of tensors; pass a torchvision .pth or an edgetl checkpoint")
    return obj, meta


def imagenet_weights_path(name: str) -> Path:
    """Where the ImageNet weights of ``name`` are expected in the torch hub cache."""
    url = model_spec(name).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict(spec: ModelSpec) -> dict:
    path = imagenet_weights_path(spec.name)
    if not path.is_file():
        _download(spec.weights.url, path)
    return load_weights_file(path)


def _download(url: str, dst: Path) -> None:
    hint = (
        f"ImageNet weights for this model are not in the cache and could not be downloaded ({{why}}). "
        f"Download {url} on a machine that is online and place it at {dst}, or pass --weights PATH / --weights none"
    )
    if os.environ.get("EDGETL_OFFLINE"):
        raise WeightsError(hint.format(why="EDGETL_OFFLINE is set"))
    tmp = dst.with_name(dst.name + ".part")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
            sha = hashlib.sha256()
            while chunk := resp.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(hint.format(why=f"offline? {getattr(exc, 'reason', exc)}")) from None
    # torchvision file names end in the first hex digits of the file's sha256
    prefix = dst.stem.rsplit("-", 1)[-1]
    if not sha.hexdigest().startswith(prefix):
        tmp.unlink(missing_ok=True)
        raise WeightsError(hint.format(why="the download was corrupt (checksum mismatch)"))
    os.replace(tmp, dst)
