#!/usr/bin/env python3
"""Check a device's Python environment: import each runtime and train a micro model a few steps with it.

    python check.py DIR RUNTIME=MODULE=DIST [...]

``DIR`` holds the micro models and each format's self-test ``MODULE`` (its ``check(folder, x, y, steps, lr)``
returns the losses); ``DIST`` is the distribution whose version is reported. Prints one JSON line: ``{"ok": true,
"python": ..., "runtimes": {RUNTIME: {"version", "losses"}}}``; exits 1 when a runtime is missing, fails, or does
not lower the loss. Like the runners, this file imports nothing but its runtimes and numpy: it runs in the
environment under test.
"""

from __future__ import annotations

import importlib
import json
import sys

STEPS, LR = 5, 0.1


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype(np.float32)


def main(argv: list[str]) -> int:
    from importlib import metadata

    folder, checks = argv[0], [arg.split("=") for arg in argv[1:]]
    report = {"ok": True, "python": sys.version.split()[0], "prefix": sys.prefix, "runtimes": {}}
    sys.path.insert(0, folder)
    for name, module, dist in checks:
        entry = report["runtimes"][name] = {}
        try:
            entry["version"] = metadata.version(dist)
            entry["losses"] = losses = importlib.import_module(module).check(folder, *_batch(), STEPS, LR)
            if not losses[-1] < losses[0]:
                raise RuntimeError(f"training did not lower the loss ({losses[0]:.4g} -> {losses[-1]:.4g})")
        except Exception as exc:  # reported, not raised: the caller reads one JSON line
            entry["error"] = f"{type(exc).__name__}: {exc}"
            report["ok"] = False
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
