"""edgetl: on-device transfer learning for MobileNets with MobileTL.

    import edgetl
    model = edgetl.create_model("mobilenet_v3_small", num_classes=10, weights=None)   # or "imagenet", or a path
    model = edgetl.apply_policy(model, "mobiletl:5")                                  # in place, returns the model
    result = edgetl.train(model="mobilenet_v3_small", policy="mobiletl:5", epochs=3)  # the `edgetl train` job
"""

__version__ = "0.1.0"

from .errors import ConfigError, DataError, EdgeTLError, PolicyError, WeightsError  # noqa: E402
from .models import MODELS, create_model, inverted_residual_blocks  # noqa: E402
from .policies import POLICIES, parse_policy  # noqa: E402
from .surgery import apply_policy, trainable_parameters  # noqa: E402
from .trainer import TrainConfig, Trainer, train  # noqa: E402

__all__ = [
    "MODELS", "POLICIES", "ConfigError", "DataError", "EdgeTLError", "PolicyError", "TrainConfig", "Trainer",
    "WeightsError", "__version__", "apply_policy", "create_model", "inverted_residual_blocks", "parse_policy",
    "trainable_parameters", "train",
]
