"""Which tensors travel in a fleet round, as named numpy arrays, read from an export's manifest.

    names = travelling(manifest)                 # the policy's trainable tensors + trained running statistics
    arrays = initial_arrays(state_dict, names)   # float32, PyTorch layout, by torchvision name
    model_bytes(state_dict), arrays_bytes(arrays)

Only what the device trains changes between rounds: the policy's trainable parameters, and the running
statistics of the norms trained fully (TFLite lists them as variables of kind ``stat``; ONNX Runtime names the
norms under ``running_stats``). Everything else is frozen and identical on every device, so it never travels.
"""

from __future__ import annotations

import numpy as np

from ..exporters.manifest import Manifest


def travelling(manifest: Manifest | dict) -> list[str]:
    """Names (torchvision's) of the tensors a round exchanges, in a fixed order (the manifest's own list)."""
    return Manifest.of(manifest).travelling()


def initial_arrays(state_dict: dict, names: list[str]) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in state_dict]
    if missing:
        raise KeyError(f"the model has no tensor {missing[0]} that the export trains: the artifacts were exported "
                       f"from another model; pass the run they came from")
    return {n: state_dict[n].detach().cpu().numpy().astype(np.float32) for n in names}


def model_bytes(state_dict: dict) -> int:
    """Bytes of the whole model as float tensors (parameters and buffers, step counters left out)."""
    return int(sum(t.numel() * t.element_size() for t in state_dict.values() if t.is_floating_point()))


def arrays_bytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))
