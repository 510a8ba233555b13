"""ONNX Runtime: training artifacts (training, eval and optimizer models and a checkpoint) for its training API.

    from edgetl.formats.onnx import FORMAT       # what the registry lists: runtime pins, runner, self-test

Its parts: :mod:`.exporter` (the :class:`~edgetl.exporters.base.Exporter`), :mod:`.graph` (what the PyTorch
exporter needs beyond itself: MobileTL's ops, gradients, initializers), :mod:`.probe` (the layer probe),
:mod:`.selftest` (setup's device check, with ``micro_onnx/``). The device runner is
``edgetl/runtime/ort_runner.py``. This ``__init__`` is plain data: it loads no ONNX.
"""

from ..spec import Format, Runtime

NAME = "onnx"
FORMAT = Format(
    name=NAME, display="ONNX Runtime", exporter="edgetl.formats.onnx.exporter:OnnxExporter", extra="onnx",
    summary="ONNX Runtime training artifacts",
    runtime=Runtime(
        name="onnxruntime-training", option=NAME, requirement="onnxruntime-training-cpu==1.19.2",
        dists=("onnxruntime-training", "onnxruntime-training-cpu"), module="onnxruntime",
        platforms=(("Linux", "x86_64"), ("Darwin", "arm64"), ("Darwin", "x86_64"), ("Windows", "AMD64")),
        python=((3, 9), (3, 12)),
        where="Linux x86_64 (glibc 2.27 or newer), macOS and Windows x86_64; no Linux aarch64 wheel (its last "
              "release, 1.19.2): on a Raspberry Pi deploy a TFLite export",
        instead="; export with --format tflite"),
    runner="ort_runner", inference_runtime="onnxruntime",
    selftest=("selftest.py", "micro_onnx/training_model.onnx", "micro_onnx/eval_model.onnx",
              "micro_onnx/optimizer_model.onnx", "micro_onnx/checkpoint"),
    baked="inference.onnx")
