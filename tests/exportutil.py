"""Helpers for export tests: runs made without training (fast), saved as run directories by edgetl.Run."""

import subprocess
import sys

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from edgetl.benchmark import blocked_env, random_run

PATTERN_CLASSES = ["stripes_horizontal", "stripes_vertical", "checkerboard", "dots", "rings"]


def make_run(root, model="mobilenet_v3_small", policy="mobiletl:3", resolution=64, optimizer="adamw", lr=1e-3,
             seed=0, class_names=PATTERN_CLASSES):
    """A run directory holding a random model with batch-norm statistics from data (reference batches come
    from the built-in patterns)."""
    return random_run(root, model, policy, resolution, optimizer, lr, seed, class_names)


def decisive_run(root, resolution=64, model="mobilenet_v3_small", policy="mobiletl:3"):
    """A random run whose head is scaled up: logits far apart, so no image sits within rounding of a tie and two
    correct computations (PyTorch, a device runtime) agree on every argmax."""
    from edgetl.run import Run

    make_run(root, model, policy, resolution)
    run = Run.load(root)
    with torch.no_grad():
        run.model.classifier[-1].weight.mul_(40.0)
    run.write(root)
    return root


def exact_hardswish(model):
    """``model`` with every MobileTL Hard-Swish swapped for torch's exact one (a wrong backward, for the export)."""
    from torch import nn

    from edgetl.ops import MaskedHardswish

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaskedHardswish):
                parent._modules[name] = nn.Hardswish()
    return model


def run_runner(art, script, tmp_path, *args):
    """Run a device runner from the artifact directory as a device would (torch, TensorFlow and edgetl
    blocked); asserts that it succeeded and returns the finished process."""
    proc = subprocess.run([sys.executable, str(art / script), "--artifacts", str(art), *map(str, args)],
                          env=blocked_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-2000:]
    return proc


def reference_shard(art, tmp_path):
    """The export's reference batches as one data shard (N, 3, H, W) a runner trains on; returns its path."""
    import numpy as np

    data = np.load(art / "reference.npz")
    shard = tmp_path / "shard.npz"
    np.savez(shard, images=data["images"].reshape(-1, *data["images"].shape[2:]), labels=data["labels"].reshape(-1))
    return shard


def tiny_mobilenet(width: int = 16) -> nn.Module:
    """A MobileNetV2 whose features are its stem (3x3, stride 2) and one depthwise 3x3: 112 x 112 maps."""
    torch.manual_seed(0)
    net = torchvision.models.MobileNetV2(num_classes=5)
    net.features = nn.Sequential(Conv2dNormActivation(3, width, stride=2, activation_layer=nn.ReLU6),
                                 Conv2dNormActivation(width, width, groups=width, activation_layer=nn.ReLU6))
    net.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(width, 5))
    return net.train()
