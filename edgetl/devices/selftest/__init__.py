"""The device-side check that ``edgetl devices setup`` runs in a new environment before recording it.

``check.py`` (the runtime and numpy only, like the runners) trains a micro model for a few steps with each
runtime: ``micro.tflite`` (a linear regression with a ``train`` signature whose variables are updated in
place, as an export's are) and ``micro_onnx/`` (ONNX Runtime training artifacts of the same model).
``build.py`` regenerates the micro models on a machine with TensorFlow and onnxruntime-training.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
CHECK = HERE / "check.py"
#: runtime -> the files its check needs, relative to this directory
FILES = {
    "ai-edge-litert": ["micro.tflite"],
    "onnxruntime-training": ["micro_onnx/training_model.onnx", "micro_onnx/eval_model.onnx",
                             "micro_onnx/optimizer_model.onnx", "micro_onnx/checkpoint"],
}
