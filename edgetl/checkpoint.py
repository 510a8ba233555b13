"""The checkpoint file of a run directory as a file: its name and layout, reading it without running code, and
writing it atomically. :mod:`edgetl.run` gives it meaning (the metadata's schema, the model it holds);
:mod:`edgetl.models` reads weights files through it. It imports nothing of edgetl but the errors and io.

    ckpt = load_checkpoint("runs/last")       # {"edgetl": meta, "state_dict", ...}, the metadata as written
    state = load_tensors("weights.pth")       # any PyTorch file, tensors and plain values only (else UnsafeFile)
    write_checkpoint(out, meta, model.state_dict(), history, optimizer.state_dict())
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .errors import EdgeTLError
from .io import atomic_save

CHECKPOINT = "checkpoint.pt"


class RunError(EdgeTLError):
    """A run directory that is missing, damaged, or does not fit what is asked of it."""


def is_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and "state_dict" in obj and "edgetl" in obj


#: pickle opcodes that name or build objects (GLOBAL, STACK_GLOBAL, INST, OBJ): what weights_only refuses to run
CALLING_OPCODES = {ord("c"), 0x93, ord("i"), ord("o")}


class UnsafeFile(RunError):
    """A checkpoint or weights file that would run code when loaded."""


def load_tensors(path: str | os.PathLike):
    """What a PyTorch file holds, read with ``weights_only=True``: tensors and plain values, never code. A file
    whose pickle names anything else (a class or function, which loading would call) is refused in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        operand = re.search(r"Unsupported operand (\d+)", str(exc))
        if not named and not (operand and int(operand.group(1)) in CALLING_OPCODES):
            raise  # not a pickle of anything that runs (garbage, a truncated file): the caller calls it corrupt
        what = f"it names {named.group(1)}, which loading would call" if named else "it builds pickled objects"
        raise UnsafeFile(f"{path} holds more than tensors and plain values ({what}), so edgetl does not open it: "
                         f"checkpoints hold weights and metadata only; use one written by edgetl, or ask its sender "
                         f"for one") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint of a run directory (or a checkpoint file) as written, its metadata in the schema it was
    written with (:func:`edgetl.run.read_checkpoint` upgrades it).
    Loaded with ``weights_only=True``: a file that would run code is refused (:class:`UnsafeFile`)."""
    path = Path(path)
    ckpt_path = path / CHECKPOINT if path.is_dir() else path
    if not ckpt_path.is_file():
        raise RunError(f"no {CHECKPOINT} in {path}; pass the directory of an `edgetl train` run (e.g. runs/last)")
    try:
        ckpt = load_tensors(ckpt_path)
    except UnsafeFile:
        raise
    except Exception:  # torch raises several types for truncated or foreign files
        ckpt = None
    if not is_checkpoint(ckpt):
        raise RunError(f"{ckpt_path} is not an edgetl checkpoint (corrupt, or not written by edgetl)")
    return ckpt


def write_checkpoint(out: Path, meta: dict, state_dict: dict, history: list[dict], optimizer: dict | None = None,
                     scheduler: dict | None = None) -> None:
    ckpt = {"edgetl": meta, "state_dict": state_dict, "history": history}
    ckpt.update({k: v for k, v in (("optimizer", optimizer), ("scheduler", scheduler)) if v is not None})
    atomic_save(ckpt, Path(out) / CHECKPOINT)
