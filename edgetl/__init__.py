"""edgetl: on-device transfer learning for MobileNets with MobileTL.

    import edgetl
    model = edgetl.create_model("mobilenet_v3_large", num_classes=5, weights="imagenet")   # or None, a path, a run
    policy = edgetl.MobileTL(k=5, hardswish_threshold=0.0)           # or edgetl.parse_policy("mobiletl:5")
    edgetl.apply_policy(model, policy)
    trainer = edgetl.Trainer(model, train_data=my_dataset, val_data=my_val,   # any torch Dataset or DataLoader
                             optimizer=edgetl.OptimizerSpec("adamw", lr=1e-3), epochs=5,  # or options=TrainerOptions(...)
                             callbacks=[edgetl.ProgressBar()])        # UI is a callback
    result = trainer.fit()                                            # writes nothing unless given out_dir=...
    run = edgetl.Run.save(model, policy, result, "runs/flowers")     # the run directory
    artifacts = edgetl.export(model, "tflite", out="artifacts/tflite", batch_size=8)   # or export(run, ...)
    print(artifacts.validation)
    edgetl.evaluate("runs/flowers", "./test").top1                   # any model source: run, checkpoint, deploy, export
    edgetl.predict("artifacts/tflite", ["photo.jpg"], top_k=3).rows  # top classes with probabilities

    result = edgetl.train(model="mobilenet_v3_small", policy="mobiletl:5", epochs=3)  # the `edgetl train` job

Importing edgetl loads neither TensorFlow nor ONNX Runtime: an export loads its format's backend. Nor does it
load the console UI (:mod:`edgetl.ui`, rich's consoles): ``edgetl.ProgressBar`` and ``edgetl.ui`` import it on
first use.
"""

import importlib

from .errors import ConfigError, DataError, EdgeTLError, PolicyError, WeightsError
from .evaluate import EvalResult, Predictions, evaluate, predict
from .exporters import Artifacts, ExportResult, export
from .job import TrainConfig, train
from .models import MODELS, create_model, inverted_residual_blocks
from .optim import OptimizerSpec
from .policies import POLICIES, Bias, BnLast, FineTune, Full, Last, MobileTL, Policy, parse_policy
from .run import Run, import_weights
from .sources import ModelSource, open_source
from .surgery import apply_policy, trainable_parameters
from .trainer import Callback, Trainer, TrainerOptions, TrainResult, calibrate_batchnorm
from .version import __version__


def __getattr__(name: str):
    """The console UI on first use: ``edgetl.ProgressBar`` and the module ``edgetl.ui``."""
    if name in ("ProgressBar", "ui"):
        ui = importlib.import_module("edgetl.ui")  # `from . import ui` would call this function again
        return ui if name == "ui" else ui.ProgressBar
    raise AttributeError(f"module 'edgetl' has no attribute {name!r}")

__all__ = [
    "MODELS", "POLICIES", "Artifacts", "Bias", "BnLast", "Callback", "ConfigError", "DataError", "EdgeTLError",
    "EvalResult", "ExportResult", "FineTune", "Full", "Last", "MobileTL", "ModelSource", "OptimizerSpec", "Policy",
    "PolicyError", "Predictions", "ProgressBar", "Run", "TrainConfig", "TrainResult", "Trainer", "TrainerOptions",
    "WeightsError", "__version__",
    "apply_policy", "calibrate_batchnorm", "create_model", "evaluate", "export", "import_weights",
    "inverted_residual_blocks", "open_source", "parse_policy", "predict", "train", "trainable_parameters",
]
