"""TFLite: a training graph of builtin ops with ``train``/``infer``/``save`` signatures, run by LiteRT.

    from edgetl.formats.tflite import FORMAT     # what the registry lists: runtime pins, runner, self-test

Its parts: :mod:`.exporter` (the :class:`~edgetl.exporters.base.Exporter`), :mod:`.graph` (PyTorch layers
lowered to TensorFlow, one ``@lowers`` per layer type) with :mod:`.ops` (the builtin-op gradients and masks),
:mod:`.schedule` (the step's operator order), :mod:`.profile` (operators timed alone), :mod:`.probe` (the layer
probe), :mod:`.selftest` (setup's device check, with ``micro.tflite``). The device runner is
``edgetl/runtime/tflite_runner.py``. This ``__init__`` is plain data: it loads no TensorFlow.
"""

from ..spec import Format, Runtime

NAME = "tflite"
FORMAT = Format(
    name=NAME, display="TFLite", exporter="edgetl.formats.tflite.exporter:TfliteExporter", extra="tflite",
    summary="one .tflite with train/infer signatures",
    runtime=Runtime(
        name="ai-edge-litert", option=NAME, requirement="ai-edge-litert==2.3.0",
        dists=("ai-edge-litert", "tflite-runtime"), module="ai_edge_litert",
        platforms=(("Linux", "x86_64"), ("Linux", "aarch64"), ("Darwin", "arm64")), python=((3, 10), (3, 14)),
        where="Linux x86_64 and aarch64 (64-bit Raspberry Pi OS, glibc 2.27 or newer) and macOS arm64"),
    runner="tflite_runner", inference_runtime="ai-edge-litert", selftest=("selftest.py", "micro.tflite"))
