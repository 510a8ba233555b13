#!/usr/bin/env python3
"""Train an edgetl ONNX Runtime artifact set on a device: onnxruntime-training and numpy only.

    python ort_runner.py --artifacts DIR --data shard.npz --steps 200 --out trained/
    python ort_runner.py --artifacts DIR --device-data ~/captures --epochs 5 --out trained/
    python ort_runner.py --artifacts DIR --verify            # repeat the export's parity check here

The data is an ImageFolder on this device (``--device-data``), a pushed shard directory of uint8 ``.npy``, or
a ``.npz`` with ``images`` (N, 3, H, W float32, preprocessed as the manifest says) and ``labels`` (N, int64);
without either the artifact's reference batches are used (see ``runner_data.py``). The runner writes, each
atomically: ``metrics.json`` (loss per step, step time, peak RSS), ``checkpoint`` (ONNX Runtime),
``params.npz`` (trained parameters and updated running statistics by torchvision name;
``edgetl import-weights`` loads them), and ``inference.onnx`` with the trained weights when the ``onnx``
package is present. ``--resume OUT/checkpoint`` continues from a previous run.

This file, ``runner_common.py`` and ``runner_data.py`` are copied to devices as they are: they import nothing from edgetl,
and never torch (``onnxruntime.training``'s package init does, through an optional module; see
``training_api``).

An export with a frozen prefix (``manifest["split"]``) trains only the region after it: ``prefix.onnx`` computes
its input, ``--prefix-batch`` images at a time, and ``--cache-features`` keeps those features for later epochs
(``runner_prefix.py``). ``--baseline`` loads everything a step uses, prints ``{"baseline_rss_bytes": N}`` and exits.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np

if __package__:  # imported as edgetl.runtime.<runner>
    from . import runner_common as common
    from .runner_fit import train_loop
    from .runner_io import atomic
else:  # run as a script on a device: runner_common.py lies beside this file, which Python puts on sys.path
    # no __pycache__ is written into the bundle: its directory holds exactly the files that were verified
    _bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    import runner_common as common
    from runner_fit import train_loop
    from runner_io import atomic

    sys.dont_write_bytecode = _bytecode

TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT = (
    "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
INFERENCE_MODEL, RUNNING_STATS = "inference.onnx", "running_stats.npz"


def training_api():
    """``onnxruntime.training.api`` without torch.

    ``onnxruntime/training/__init__.py`` imports ``onnxruntime.training.optim``, and onnxruntime's own version
    check imports ``onnxruntime.training.ortmodule``: both import torch. A device without torch would fail,
    and one with torch would pay ~350 MB of RSS for nothing. A bare package object with the right
    ``__path__`` lets ``api`` (which needs neither) import alone, and ``ortmodule`` reads as absent.
    """
    if "onnxruntime.training.api" in sys.modules:
        return sys.modules["onnxruntime.training.api"]
    onnxruntime()
    import onnxruntime.training.api as api

    return api


def onnxruntime():
    """The ``onnxruntime`` package, imported without its training package's torch (see ``training_api``)."""
    import importlib.util

    if "onnxruntime.training" not in sys.modules:
        # before onnxruntime itself: its own __init__ imports onnxruntime.training, and through it torch
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None:
            raise common.RunnerError(f"no onnxruntime-training in {sys.executable}: run `edgetl devices setup DEVICE "
                                     f"--runtime onnx` from your computer (a virtual environment here with "
                                     f"onnxruntime-training-cpu==1.19.2), or install onnxruntime-training-cpu==1.19.2 numpy "
                                     f"into a virtual environment")
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = [os.path.join(spec.submodule_search_locations[0], "training")]
        sys.modules["onnxruntime.training"] = pkg
        # onnxruntime's version check imports ORTModule (torch) and tolerates its ImportError: let it skip
        sys.modules.setdefault("onnxruntime.training.ortmodule", None)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only
    return ort


class Session:
    """A training session of ONNX Runtime on the device over one artifact set (the runner's; edgetl's own Trainer
    trains in PyTorch)."""

    def __init__(self, artifacts: str, lr: float | None = None, checkpoint: str | None = None,
                 threads: int | None = None, prefix_batch: int | str | None = "auto"):
        api = training_api()
        ort = onnxruntime()

        manifest = common.load_manifest(artifacts)
        self.artifacts = artifacts
        self.trainable = manifest["trainable"]
        self.state = api.CheckpointState.load_checkpoint(checkpoint or os.path.join(artifacts, CHECKPOINT))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per physical core
        # no arena and no memory pattern: ONNX Runtime's CPU arena grows by doubling and keeps what it took, so a
        # training step on MobileNetV2 (batch 8, 224 px) peaked at 417 MB instead of 227 MB, and kept growing for
        # two steps; freed buffers go back to the allocator instead (same numbers, one step ~10 % slower)
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        # no eval session: inference (validation, logits) runs the inference model with the trained weights, so
        # eval_model.onnx (for apps that call Module.eval) would only hold memory here
        self.module = api.Module(os.path.join(artifacts, TRAINING_MODEL), self.state, session_options=options)
        self.optimizer = api.Optimizer(os.path.join(artifacts, OPTIMIZER_MODEL), self.module)
        # an export with a frozen prefix: the training model is the region after it, fed the features that
        # the prefix's inference session computes, micro-batch by micro-batch
        self.split = manifest.get("split")
        self.batch_size = None  # any batch
        self.prefix_batch = None
        self.prefix_value = prefix_batch
        if self.split:
            self.prefix = ort.InferenceSession(os.path.join(artifacts, self.split["prefix"]), options,
                                                       providers=["CPUExecutionProvider"])
            self.prefix_input = self.prefix.get_inputs()[0].name
        self.lr = lr if lr is not None else manifest["optimizer"]["lr"]
        self.optimizer.set_learning_rate(self.lr)
        # running statistics of the fully trained norms, updated from each training forward's batch statistics
        self.norms = manifest.get("running_stats", [])
        path = os.path.join(artifacts, RUNNING_STATS)
        self.running = {k: v.astype(np.float32) for k, v in np.load(path, allow_pickle=False).items()} if self.norms else {}
        # ONNX Runtime's checkpoint holds no running statistics: a resume takes them from the params.npz the
        # runner wrote beside the checkpoint
        beside = os.path.join(os.path.dirname(checkpoint or ""), "params.npz")
        if checkpoint and self.running and os.path.exists(beside):
            with np.load(beside, allow_pickle=False) as saved:
                self.running.update({k: saved[k].astype(np.float32) for k in self.running if k in saved})

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next optimizer steps."""
        if lr != self.lr:
            self.lr = lr
            self.optimizer.set_learning_rate(lr)

    def allocate(self) -> None:
        """Every session the training step uses is loaded in ``__init__`` (``--baseline``)."""

    def features(self, images: np.ndarray) -> np.ndarray:
        """The frozen prefix's output for ``images``, ``prefix_batch`` at a time (the images without a prefix)."""
        if not self.split:
            return np.ascontiguousarray(images, dtype=np.float32)
        micro = common.prefix.prefix_batch(self.prefix_value, len(images), self.split)
        self.prefix_batch = micro
        return common.prefix.stream(lambda x: self.prefix.run(None, {self.prefix_input: x})[0], images, micro)

    def _forward(self, images: np.ndarray, labels: np.ndarray, features: bool = False) -> float:
        """A training-mode forward and backward: returns the loss, updates the running statistics."""
        x = np.ascontiguousarray(images, dtype=np.float32) if features else self.features(images)
        self.module.train()
        outputs = self.module(x, np.ascontiguousarray(labels, dtype=np.int64))
        if not self.norms:
            return float(outputs if np.ndim(outputs) == 0 else outputs[0])
        loss, stats = outputs[0], outputs[1:]
        for i, norm in enumerate(self.norms):
            m, n = norm["momentum"], len(labels) * norm["spatial"]
            mean, var = stats[2 * i], stats[2 * i + 1] * (n / max(n - 1, 1))  # PyTorch keeps the unbiased variance
            for key, batch in (("running_mean", mean), ("running_var", var)):
                name = f"{norm['name']}.{key}"
                self.running[name] = ((1 - m) * self.running[name] + m * batch).astype(np.float32)
        return float(loss)

    def step(self, images: np.ndarray, labels: np.ndarray) -> float:
        loss = self._forward(images, labels)
        self.optimizer_step()
        return loss

    def step_features(self, features: np.ndarray, labels: np.ndarray) -> float:
        """One step from the prefix's features (a feature cache's): the trained region only."""
        loss = self._forward(features, labels, features=True)
        self.optimizer_step()
        return loss

    def gradients(self, images: np.ndarray, labels: np.ndarray, keep: bool = False) -> tuple[float, dict]:
        """(loss, gradients by parameter name) of one forward/backward pass; no optimizer step.

        With ``keep`` the gradients stay accumulated, so an optimizer step can follow.
        """
        loss = self._forward(images, labels)
        grads = {name: np.array(self.state.parameters[name].grad) for name in self.trainable}
        if not keep:
            self.module.lazy_reset_grad()
        return loss, grads

    def step_with_gradients(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict]:
        """One optimizer step that also returns the gradients it applied (validation checks the step)."""
        loss, grads = self.gradients(images, labels, keep=True)
        self.optimizer_step()
        return loss, grads

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Inference logits with the weights and running statistics trained so far."""
        return infer(self.artifacts, images, self.trained())

    def predictor(self):
        """``images -> logits`` with the weights trained so far, one inference session for many batches."""
        session = inference_session(self.artifacts, self.trained())
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    def optimizer_step(self) -> None:
        """Apply the artifact's optimizer to the accumulated gradients, then clear them."""
        self.optimizer.step()
        self.module.lazy_reset_grad()

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        for name, value in params.items():
            self.state.parameters[name].data = np.ascontiguousarray(value, dtype=np.float32)

    def params(self) -> dict[str, np.ndarray]:
        return {name: np.array(self.state.parameters[name].data) for name in self.trainable}

    def running_stats(self) -> dict[str, np.ndarray]:
        return dict(self.running)

    def trained(self) -> dict[str, np.ndarray]:
        """Everything training changed: parameters and running statistics, by torchvision name."""
        return {**self.params(), **self.running}

    def save_checkpoint(self, path: str) -> None:
        api = training_api()
        # with the optimizer's state (AdamW's moments), so a resumed run steps as an uninterrupted one
        atomic(path, lambda tmp: api.CheckpointState.save_checkpoint(self.state, tmp, include_optimizer_state=True))


def infer(artifacts: str, images: np.ndarray, params: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of the inference model, with ``params`` (e.g. trained ones) overriding its initializers."""
    session = inference_session(artifacts, params)
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def predictor(artifacts: str, params: dict[str, np.ndarray] | None = None, threads: int | None = None):
    """``(images -> logits, batch)``: the inference model (``inference.onnx``, or an inference export's own model)
    with ``params`` (trained weights by torchvision name) overriding its initializers; any batch."""
    manifest = common.load_manifest(artifacts)
    if manifest.get("kind") == "inference" and params:
        raise common.RunnerError(f"{artifacts} is an inference export: its weights are baked in, so no other weights "
                                 f"can be set; export the weights you want with `edgetl export SOURCE --inference`")
    session = inference_session(artifacts, params, threads, manifest.get("file", INFERENCE_MODEL))
    name = session.get_inputs()[0].name
    return (lambda images: session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0],
            common.EVAL_BATCH)


def inference_session(artifacts: str, params: dict[str, np.ndarray] | None = None, threads: int | None = None,
                      model: str = INFERENCE_MODEL):
    """An ONNX Runtime session of the inference model, ``params`` overriding its initializers."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    if params:
        # ONNX Runtime folds Conv + BatchNormalization from the graph's own initializer values when it
        # optimises the graph, silently ignoring overrides of the fused tensors (trained conv weights
        # then have no effect): with overrides, run the graph as written
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    keep = []  # OrtValues must outlive the session
    for name, value in (params or {}).items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)))
        options.add_initializer(name, keep[-1])
    session = ort.InferenceSession(os.path.join(artifacts, model), options, providers=["CPUExecutionProvider"])
    session.keep = (options, keep)
    return session


def train(artifacts: str, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int | None = None,
          lr: float | None = None, seed: int = 0, progress=None) -> dict:
    """``steps`` optimizer steps (see ``runner_fit.train_loop``)."""
    return train_loop(Session(artifacts, lr), images, labels, steps, batch_size, seed, progress)


def _bake_inference_model(artifacts: str, params: dict[str, np.ndarray], path: str) -> bool:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return False
    model = onnx.load(os.path.join(artifacts, INFERENCE_MODEL))
    for init in model.graph.initializer:
        if init.name in params:
            init.CopyFrom(numpy_helper.from_array(params[init.name], init.name))
    atomic(path, lambda tmp: onnx.save(model, tmp))
    return True


def save_outputs(session: Session, artifacts: str, out: str) -> tuple[dict, dict]:
    session.save_checkpoint(os.path.join(out, CHECKPOINT))
    trained = session.trained()
    baked = _bake_inference_model(artifacts, trained, os.path.join(out, INFERENCE_MODEL))
    return trained, {"inference_model": INFERENCE_MODEL if baked else None, "checkpoint": CHECKPOINT}


def main(argv=None) -> int:
    def make_session(art, lr, args):
        return Session(art, lr, args.resume, args.threads, args.prefix_batch)

    return common.main(argv, "onnxruntime-training", make_session, infer, save_outputs, predictor)


if __name__ == "__main__":
    sys.exit(main())
