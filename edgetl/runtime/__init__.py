"""The on-device runners: each trains an export with its runtime and numpy only (no torch, no edgetl).

    python artifacts/tflite/tflite_runner.py --artifacts artifacts/tflite --data shard.npz --steps 200
    from edgetl.runtime import tflite_runner; tflite_runner.Trainer("artifacts/tflite").step(images, labels)

``runner_common.py`` holds what they share. Exports copy a runner and ``runner_common.py`` beside the
artifacts, and a device runs them as scripts. This package imports nothing of edgetl, and edgetl's
exporters and devices import it, never the reverse.
"""
