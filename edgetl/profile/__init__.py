"""Memory and FLOPs profiling: what each policy costs, analytic and measured side by side.

    from edgetl.profile import analyze, build_report, print_report, measure_saved
    analyze("mobilenet_v2", "mobiletl:5", resolution=224).totals(batch=8)      # analytic, per step
    measure_saved(model, torch.randn(8, 3, 224, 224)).activation_bytes         # what autograd keeps
    report = build_report("mobilenet_v2", ["full", "ft:5", "mobiletl:5"], measure=True)

Modules: :mod:`.rules` (per-layer cost rules), :mod:`.analytic` (trace + totals), :mod:`.saved`
(saved-tensor measurement), :mod:`.step` (peak RSS and step time in a fresh process),
:mod:`.budget` (device profiles, what fits), :mod:`.report` (tables, JSON, CSV, PNG).
"""

from .analytic import ModelProfile, analyze, profile_model
from .budget import DEVICE_PROFILES, fit_policies, largest_batch, parse_size
from .report import build_report, plot, print_report, write_csv, write_json
from .saved import SavedTensors, measure_saved

__all__ = [
    "DEVICE_PROFILES", "ModelProfile", "SavedTensors", "analyze", "build_report", "fit_policies", "largest_batch",
    "measure_saved", "parse_size", "plot", "print_report", "profile_model", "write_csv", "write_json",
]
