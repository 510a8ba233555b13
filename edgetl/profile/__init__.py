"""Memory and FLOPs profiling: what each policy costs, analytic and measured side by side.

    from edgetl.profile import measure_saved
    saved = measure_saved(model, torch.randn(8, 3, 224, 224))   # bytes autograd keeps for backward
"""

from .saved import SavedTensors, measure_saved

__all__ = ["SavedTensors", "measure_saved"]
