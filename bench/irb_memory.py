"""Reproduce MobileTL's Figure 1: activations stored for backward by one inverted residual block.

    python bench/irb_memory.py                       # table
    python bench/irb_memory.py --json irb.json       # {"mobilenet_v2": {"vanilla_bytes", "mobiletl_bytes", "reduction"}, ...}

One block, expansion 6, stride 1, fp32, in the middle of the trained region (its input needs a gradient):
a MobileNetV2 block (ReLU6) and a MobileNetV3 block (squeeze-excitation, Hard-Swish). "Vanilla" is
fine-tuning as PyTorch does it (all weights, train-mode norms, torchvision's in-place activations);
"MobileTL" is the same block after ``edgetl.policies.mobiletl_block``. Each figure is computed
analytically (edgetl's rules) and measured (saved-tensor hooks), side by side.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

from edgetl.policies import mobiletl_block
from edgetl.profile.analytic import trace_layers
from edgetl.profile.saved import SavedTensorCounter


def v2_block(channels: int) -> nn.Module:
    return mobilenetv2.InvertedResidual(channels, channels, stride=1, expand_ratio=6)


def v3_block(channels: int) -> nn.Module:
    cnf = mobilenetv3.InvertedResidualConfig(channels, 5, 6 * channels, channels, True, "HS", 1, 1, 1.0)
    return mobilenetv3.InvertedResidual(cnf, partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))


def stored_bytes(block: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(analytic, measured, ReLU6 copies) bytes kept for backward by one forward of ``block``.

    The last figure is what PyTorch's in-place ReLU6 keeps as its own copy of the input: a ReLU6's
    gradient can be taken from its output (which the next conv keeps anyway), as the paper counts.
    """
    block.train()
    layers, _, _ = trace_layers(block, x)
    n = x.shape[0]
    analytic = sum(layer.saved_bytes(n) for layer in layers)
    relu6_copies = sum(k.nbytes(n) for layer in layers if layer.kind == "ReLU6" for k in layer.owned
                       if k.what.startswith("copy"))
    with SavedTensorCounter(block) as counter:
        block(x)
    return analytic, counter.result.activation_bytes, relu6_copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--size", type=int, default=28, help="feature map height and width")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, args.channels, args.size, args.size, requires_grad=True)
    result = {}
    table = Table(title=f"one inverted residual block, expansion 6, stride 1, {args.channels} channels, "
                        f"{args.size}x{args.size}, batch {args.batch_size}, fp32 (KiB stored for backward)")
    for col in ("block", "vanilla analytic", "vanilla measured", "MobileTL analytic", "MobileTL measured",
                "reduction", "vanilla w/o ReLU6 copies", "reduction", "paper"):
        table.add_column(col, justify="left" if col == "block" else "right")
    for name, build, paper in (("mobilenet_v2", v2_block, 0.463), ("mobilenet_v3", v3_block, 0.533)):
        vanilla_a, vanilla_m, copies = stored_bytes(build(args.channels), x)
        mtl_a, mtl_m, _ = stored_bytes(mobiletl_block(build(args.channels)), x)
        reduction = 1 - mtl_m / vanilla_m
        lean = vanilla_m - copies
        result[name] = {"vanilla_bytes": vanilla_m, "mobiletl_bytes": mtl_m, "reduction": reduction,
                        "vanilla_analytic_bytes": vanilla_a, "mobiletl_analytic_bytes": mtl_a,
                        "vanilla_without_relu6_copies_bytes": lean, "reduction_without_relu6_copies": 1 - mtl_m / lean,
                        "paper_reduction": paper}
        table.add_row(name, f"{vanilla_a / 1024:,.0f}", f"{vanilla_m / 1024:,.0f}", f"{mtl_a / 1024:,.0f}",
                      f"{mtl_m / 1024:,.0f}", f"-{100 * reduction:.1f}%", f"{lean / 1024:,.0f}",
                      f"-{100 * (1 - mtl_m / lean):.1f}%", f"-{100 * paper:.1f}%")
    Console(width=max(Console().width, 150)).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
