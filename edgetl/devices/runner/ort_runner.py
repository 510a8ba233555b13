#!/usr/bin/env python3
"""Train an edgetl ONNX Runtime artifact set on a device: onnxruntime-training and numpy only.

    python ort_runner.py --artifacts DIR --data shard.npz --steps 200 --out trained/
    python ort_runner.py --artifacts DIR --verify            # repeat the export's parity check here

``shard.npz`` holds ``images`` (N, 3, H, W float32, preprocessed as the manifest says) and ``labels``
(N, int64); without ``--data`` the artifact's reference batches are used. The runner writes, each
atomically: ``metrics.json`` (loss per step, step time, peak RSS), ``checkpoint`` (ONNX Runtime),
``params.npz`` (trained parameters and updated running statistics by torchvision name;
``edgetl import-weights`` loads them), and
``inference.onnx`` with the trained weights when the ``onnx`` package is present.

This file is copied to devices as it is: it imports nothing from edgetl, and it never imports torch
(``onnxruntime.training``'s package init does, through an optional module; see ``training_api``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types

import numpy as np

TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT = (
    "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
INFERENCE_MODEL, REFERENCE, MANIFEST = "inference.onnx", "reference.npz", "manifest.json"
RUNNING_STATS = "running_stats.npz"


def training_api():
    """``onnxruntime.training.api`` without torch.

    ``onnxruntime/training/__init__.py`` imports ``onnxruntime.training.optim``, and onnxruntime's own version
    check imports ``onnxruntime.training.ortmodule``: both import torch. A device without torch would fail,
    and one with torch would pay ~350 MB of RSS for nothing. A bare package object with the right
    ``__path__`` lets ``api`` (which needs neither) import alone, and ``ortmodule`` reads as absent.
    """
    if "onnxruntime.training.api" in sys.modules:
        return sys.modules["onnxruntime.training.api"]
    import importlib.util

    if "onnxruntime.training" not in sys.modules:
        # before onnxruntime itself: its own __init__ imports onnxruntime.training, and through it torch
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None:
            raise SystemExit("onnxruntime-training is not installed: pip install onnxruntime-training-cpu==1.19.2 numpy")
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = [os.path.join(spec.submodule_search_locations[0], "training")]
        sys.modules["onnxruntime.training"] = pkg
        # onnxruntime's version check imports ORTModule (torch) and tolerates its ImportError: let it skip
        sys.modules.setdefault("onnxruntime.training.ortmodule", None)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only
    import onnxruntime.training.api as api

    return api


def peak_rss_bytes() -> int:
    """VmHWM: this process's peak resident memory (Linux, Android)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def _atomic(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path), dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_bytes(path: str, write) -> None:
    def to_file(tmp):
        with open(tmp, "wb") as f:
            write(f)

    _atomic(path, to_file)


def load_manifest(artifacts: str) -> dict:
    with open(os.path.join(artifacts, MANIFEST)) as f:
        return json.load(f)


class Trainer:
    """ONNX Runtime on-device training of one artifact set."""

    def __init__(self, artifacts: str, lr: float | None = None):
        api = training_api()
        manifest = load_manifest(artifacts)
        self.trainable = manifest["trainable"]
        self.state = api.CheckpointState.load_checkpoint(os.path.join(artifacts, CHECKPOINT))
        self.module = api.Module(os.path.join(artifacts, TRAINING_MODEL), self.state, os.path.join(artifacts, EVAL_MODEL))
        self.optimizer = api.Optimizer(os.path.join(artifacts, OPTIMIZER_MODEL), self.module)
        self.lr = lr if lr is not None else manifest["optimizer"]["lr"]
        self.optimizer.set_learning_rate(self.lr)
        # running statistics of the fully trained norms, updated from each training forward's batch statistics
        self.norms = manifest.get("running_stats", [])
        path = os.path.join(artifacts, RUNNING_STATS)
        self.running = {k: v.astype(np.float32) for k, v in np.load(path).items()} if self.norms else {}

    def _forward(self, images: np.ndarray, labels: np.ndarray) -> float:
        """A training-mode forward and backward: returns the loss, updates the running statistics."""
        self.module.train()
        outputs = self.module(np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.int64))
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

    def gradients(self, images: np.ndarray, labels: np.ndarray, keep: bool = False) -> tuple[float, dict]:
        """(loss, gradients by parameter name) of one forward/backward pass; no optimizer step.

        With ``keep`` the gradients stay accumulated, so an optimizer step can follow.
        """
        loss = self._forward(images, labels)
        grads = {name: np.array(self.state.parameters[name].grad) for name in self.trainable}
        if not keep:
            self.module.lazy_reset_grad()
        return loss, grads

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
        _atomic(path, lambda tmp: api.CheckpointState.save_checkpoint(self.state, tmp))


def infer(artifacts: str, images: np.ndarray, params: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of the inference model, with ``params`` (e.g. trained ones) overriding its initializers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if params:
        # ONNX Runtime folds Conv + BatchNormalization from the graph's own initializer values when it
        # optimises the graph, silently ignoring overrides of the fused tensors (trained conv weights
        # then have no effect): with overrides, run the graph as written
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    keep = []  # OrtValues must outlive the session
    for name, value in (params or {}).items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)))
        options.add_initializer(name, keep[-1])
    session = ort.InferenceSession(os.path.join(artifacts, INFERENCE_MODEL), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def train(artifacts: str, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int | None = None,
          lr: float | None = None, seed: int = 0, progress=None) -> dict:
    """``steps`` optimizer steps. ``images`` is (N, 3, H, W) sliced into batches, or (K, B, 3, H, W) cycled."""
    trainer = Trainer(artifacts, lr)
    if images.ndim == 5:
        batches = [(images[i], labels[i]) for i in range(len(images))]
    else:
        batch_size = min(batch_size or 8, len(images))
        order = np.random.default_rng(seed).permutation(len(images))
        batches = [(images[order[i:i + batch_size]], labels[order[i:i + batch_size]])
                   for i in range(0, len(images) - batch_size + 1, batch_size)]
    losses, seconds = [], []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        losses.append(trainer.step(x, y))
        seconds.append(time.perf_counter() - t0)
        if progress:
            progress(i + 1, steps, losses[-1])
    return {"trainer": trainer, "losses": losses, "step_seconds": seconds}


def verify(artifacts: str, tolerance: dict | None = None) -> list[dict]:
    """Repeat the export's parity check here against ``reference.npz``: inference logits, and the loss and
    the per-tensor gradient norms of one training step, as PyTorch computed them at export time."""
    manifest = load_manifest(artifacts)
    tol = tolerance or manifest["validation"]["tolerances"]
    ref = np.load(os.path.join(artifacts, REFERENCE))
    logits = infer(artifacts, ref["images"][0])
    logit_diff = float(np.max(np.abs(logits - ref["logits"])))
    logit_tol = tol["logit_atol"] * max(1.0, float(np.max(np.abs(ref["logits"]))))
    trainer = Trainer(artifacts)
    loss, grads = trainer.gradients(ref["images"][0], ref["labels"][0])
    loss_diff = abs(loss - float(ref["loss"])) / max(1.0, abs(float(ref["loss"])))
    norms = np.array([np.linalg.norm(grads[n]) for n in trainer.trainable])
    norm_diff = float(np.linalg.norm(norms - ref["grad_norms"]) / np.linalg.norm(ref["grad_norms"]))
    return [{"name": "inference logits", "ok": logit_diff <= logit_tol, "max_diff": logit_diff, "tolerance": logit_tol},
            {"name": "training loss, one step", "ok": loss_diff <= tol["loss_rtol"], "max_diff": loss_diff,
             "tolerance": tol["loss_rtol"]},
            {"name": "gradient norms per tensor, one step", "ok": norm_diff <= tol["grad_rtol"], "max_diff": norm_diff,
             "tolerance": tol["grad_rtol"]}]


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
    _atomic(path, lambda tmp: onnx.save(model, tmp))
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train an edgetl ONNX Runtime artifact set on this device.")
    ap.add_argument("--artifacts", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--data", help="shard .npz with images and labels (default: the reference batches)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--out", default="trained")
    ap.add_argument("--verify", action="store_true", help="repeat the export's parity check and exit")
    args = ap.parse_args(argv)
    if args.verify:
        checks = verify(args.artifacts)
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}: max |diff| {c['max_diff']:.3g} (tolerance {c['tolerance']:.3g})")
        print(json.dumps({"verify": checks}))
        return 0 if all(c["ok"] for c in checks) else 1
    data = np.load(args.data or os.path.join(args.artifacts, REFERENCE))
    expected = tuple(load_manifest(args.artifacts)["input"]["shape"][1:])
    if "images" not in data or "labels" not in data or tuple(data["images"].shape[-3:]) != expected:
        shape = tuple(data["images"].shape) if "images" in data else "missing"
        raise SystemExit(f"the data shard's images are {shape}, but the model takes (N, {', '.join(map(str, expected))}) "
                         f"float32 with int64 labels: pack the shard at the model's resolution "
                         f"(`edgetl deploy --data DIR` does)")
    os.makedirs(args.out, exist_ok=True)

    def progress(i, n, loss):
        print(f"step {i}/{n} loss {loss:.4f}", flush=True)

    run = train(args.artifacts, data["images"], data["labels"], args.steps, args.batch_size, args.lr, progress=progress)
    trainer = run["trainer"]
    params = trainer.trained()
    trainer.save_checkpoint(os.path.join(args.out, CHECKPOINT))
    _write_bytes(os.path.join(args.out, "params.npz"), lambda f: np.savez(f, **params))
    baked = _bake_inference_model(args.artifacts, params, os.path.join(args.out, INFERENCE_MODEL))
    metrics = {"steps": args.steps, "lr": trainer.lr, "losses": run["losses"], "step_seconds": run["step_seconds"],
               "median_step_seconds": float(np.median(run["step_seconds"])), "peak_rss_bytes": peak_rss_bytes(),
               "inference_model": INFERENCE_MODEL if baked else None, "torch_imported": "torch" in sys.modules}
    _write_bytes(os.path.join(args.out, "metrics.json"), lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("losses", "step_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
