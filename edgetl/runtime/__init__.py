"""The on-device runners: each trains an export with its runtime and numpy only (Pillow to decode images on the
device; no torch, no edgetl).

    python artifacts/tflite/tflite_runner.py --artifacts artifacts/tflite --data shard.npz --steps 200
    from edgetl.runtime import tflite_runner; tflite_runner.Session("artifacts/tflite").step(images, labels)

``runner_common.py`` holds what they share (the command line, the parity check), ``runner_fit.py`` the training
loop (schedule, validation, checkpoints and resume), ``runner_io.py`` the one-line error and atomic writes, and
``runner_data.py`` their data (images on the device, decoded with Pillow; pushed shards), ``runner_prefix.py``
the frozen prefix of a split export (micro-batches, the feature cache), ``runner_eval.py`` evaluation and
prediction (what ``--evaluate``, ``--predict``, ``--eval-data`` and the laptop's ``edgetl evaluate`` compute).
Exports copy a runner and these beside the artifacts, deploy puts the current ones in its bundles, and a
device runs them as scripts. This package imports nothing of edgetl, and edgetl imports it, never the reverse.
"""

import importlib

#: the files every runner imports, copied beside it
SHARED_FILES = ("runner_common.py", "runner_data.py", "runner_eval.py", "runner_fit.py", "runner_io.py",
                "runner_prefix.py")


def runner_module(name: str):
    """The runner module ``name`` of this package (a format's ``Format.runner``: which runner runs an export's
    runtime is the format registry's, :func:`edgetl.formats.runners`)."""
    return importlib.import_module(f"{__name__}.{name}")
