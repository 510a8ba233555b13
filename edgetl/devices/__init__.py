"""Devices and the self-contained runners that train on them.

``runner/`` holds scripts that run on a device with nothing but their runtime and numpy installed
(no torch, no edgetl): ``runner/ort_runner.py`` trains an ONNX Runtime artifact set.
"""
