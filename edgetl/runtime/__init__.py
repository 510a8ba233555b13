"""The on-device runners: each trains an export with its runtime and numpy only (Pillow to decode images on the
device; no torch, no edgetl).

    python artifacts/tflite/tflite_runner.py --artifacts artifacts/tflite --data shard.npz --steps 200
    from edgetl.runtime import tflite_runner; tflite_runner.Trainer("artifacts/tflite").step(images, labels)

``runner_common.py`` holds what they share (the training loop, checkpoints, the command line) and
``runner_data.py`` their data (images on the device, decoded with Pillow; pushed shards), ``runner_prefix.py``
the frozen prefix of a split export (micro-batches, the feature cache). Exports copy a runner and these
beside the artifacts, deploy puts the current ones in its bundles, and a device runs them as scripts.
This package imports nothing of edgetl, and edgetl's exporters and devices import it, never the reverse.
"""
