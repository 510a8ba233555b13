#!/usr/bin/env python3
"""Train an edgetl TFLite export on a device: ai-edge-litert (or tflite-runtime) and numpy only.

    python tflite_runner.py --artifacts DIR --device-data ~/captures --epochs 5 --val-split 0.1 --out trained/
    python tflite_runner.py --artifacts DIR --data shard/ --steps 200 --out trained/   # a pushed uint8 shard
    python tflite_runner.py --artifacts DIR --verify            # repeat the export's parity check here

The data (``runner_data.py``): an ImageFolder on this device (decoded with Pillow, preprocessed as the manifest
says, streamed), a shard directory of uint8 ``.npy`` (memory-mapped), or a ``.npz`` with ``images`` (N, 3, H, W
float32, preprocessed) and ``labels``; the model trains at the batch size fixed at export. The runner writes,
each atomically: ``metrics.json`` (loss per step and per epoch, validation accuracy, step time, peak RSS,
the data used), ``params.npz`` (trained parameters and running
statistics by torchvision name, in PyTorch layout: ``edgetl import-weights`` loads them) and
``checkpoint.npz`` (every variable, optimizer state included: ``--resume`` continues from it).

The model's signatures do the work (``train``, ``gradients``, ``infer``, ``get_weights``,
``set_weights``, ``step_count``); weights go in and out through them, so no TensorFlow Save/Restore op is needed. This
file, ``runner_common.py`` and ``runner_data.py`` are copied to devices as they are: no TensorFlow, no
torch, no edgetl.

An export with a frozen prefix (``manifest["split"]``) trains only the region after it: ``prefix.tflite`` computes
its input, ``--prefix-batch`` images at a time, and ``--cache-features`` keeps those features for later epochs
(``runner_prefix.py``). ``--baseline`` loads everything a step uses, prints ``{"baseline_rss_bytes": N}`` and exits.
"""

from __future__ import annotations

import os
import sys

import numpy as np

if __package__:  # imported as edgetl.runtime.<runner>
    from . import runner_common as common
    from .runner_fit import train_loop
    from .runner_io import release_file_pages, write_bytes
else:  # run as a script on a device: runner_common.py lies beside this file, which Python puts on sys.path
    # no __pycache__ is written into the bundle: its directory holds exactly the files that were verified
    _bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    import runner_common as common
    from runner_fit import train_loop
    from runner_io import release_file_pages, write_bytes

    sys.dont_write_bytecode = _bytecode

MODEL, CHECKPOINT = "model.tflite", "checkpoint.npz"


def interpreter_class():
    """The TFLite interpreter: ai-edge-litert's, else tflite-runtime's (older Raspberry Pi OS images)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise common.RunnerError(f"no TFLite runtime in {sys.executable}: run `edgetl devices setup DEVICE` from your "
                                     f"computer (a virtual environment here with ai-edge-litert==2.3.0), or install "
                                     f"ai-edge-litert==2.3.0 numpy into a virtual environment") from None
    return Interpreter


def make_interpreter(threads: int | None = None, **model):
    """An interpreter of ``model_path=`` or ``model_content=`` at ``threads`` (default: every CPU) that runs the
    operators in the model's own order: the export orders them for memory (the weight-only work next to its use),
    and TFLite's delegate clustering, on by default, merges XNNPACK's partitions across that order: MobileNetV2
    ``mobiletl:5`` at batch 8 then peaked 35 MiB higher in its first step (180 against 145 MiB), at the same speed."""
    cls = interpreter_class()
    threads = threads or os.cpu_count()
    try:
        return cls(**model, num_threads=threads, experimental_disable_delegate_clustering=True)
    except TypeError:  # a tflite-runtime without the option
        return cls(**model, num_threads=threads)


class Session:
    """A training session of LiteRT on the device: training through the model's signatures; parameters by torchvision
    name, in PyTorch layout (the runner's; edgetl's own Trainer trains in PyTorch)."""

    def __init__(self, artifacts: str, lr: float | None = None, checkpoint: str | None = None,
                 threads: int | None = None, prefix_batch: int | str | None = "auto"):
        manifest = common.load_manifest(artifacts)
        self.variables = manifest["variables"]  # [{name, key, kind, shape}]
        self.trainable = manifest["trainable"]
        self.grad_keys = {v["name"]: "g" + v["key"][1:] for v in self.variables}  # the gradients signature's outputs
        self.batch_size = manifest["input"]["shape"][0]
        self.lr = lr if lr is not None else manifest["optimizer"]["lr"]
        self.interpreter = make_interpreter(threads, model_path=os.path.join(artifacts, MODEL))
        self._runners = {}
        # an export with a frozen prefix: ``model.tflite`` trains the region after it, on the features that
        # ``prefix.tflite`` computes, micro-batch by micro-batch
        self.split = manifest.get("split")
        self.prefix_batch = common.prefix.prefix_batch(prefix_batch, self.batch_size, self.split)
        self.input_key = "features" if self.split else "images"
        if self.split:
            self.prefix = make_interpreter(threads, model_path=os.path.join(artifacts, self.split["prefix"]))
            # one input shape for the prefix's life: allocated once, here
            detail = self.prefix.get_input_details()[0]
            self.prefix.resize_tensor_input(detail["index"], [self.prefix_batch, *manifest["input"]["shape"][1:]])
            self.prefix.allocate_tensors()
            self._prefix = self.prefix.get_signature_runner("prefix")
        if checkpoint:
            with np.load(checkpoint, allow_pickle=False) as saved:
                self.set_state({v["name"]: saved[v["name"]] for v in self.variables})
        # the variables take their initial values from the model file on the first signature call, and never read
        # them again: make that call now with the cheapest signature, then drop the file's pages from memory
        # (MobileNetV2 mobiletl:5: 11 of the 13 MiB the file held resident through training)
        if "step_count" in self.interpreter.get_signature_list():
            self.run("step_count")
        release_file_pages(os.path.join(artifacts, MODEL))

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (the train signature takes it as an input)."""
        self.lr = lr

    def run(self, signature: str, **inputs) -> dict:
        """Call a signature; its runner (and working memory) is made on first use, so training alone never
        allocates the ``gradients`` or ``infer`` subgraphs."""
        if signature not in self._runners:
            self._runners[signature] = self.interpreter.get_signature_runner(signature)
        return self._runners[signature](**inputs)

    def allocate(self) -> None:
        """Every model and signature the training step uses, loaded and allocated (``--baseline``)."""
        if "train" not in self._runners:
            self._runners["train"] = self.interpreter.get_signature_runner("train")

    def features(self, images: np.ndarray) -> np.ndarray:
        """The frozen prefix's output for ``images``, ``prefix_batch`` at a time (the images without a prefix)."""
        if not self.split:
            return np.ascontiguousarray(images, dtype=np.float32)
        return common.prefix.stream(lambda x: self._prefix(images=x)["features"], images, self.prefix_batch)

    def _inputs(self, images: np.ndarray, labels: np.ndarray | None = None, features: bool = False) -> dict:
        if images.shape[0] != self.batch_size:
            raise common.RunnerError(f"this TFLite model trains at batch {self.batch_size} (fixed at export), not "
                             f"{images.shape[0]}: export again with --batch-size {images.shape[0]}, or use batches "
                             f"of {self.batch_size}")
        inputs = {self.input_key: np.ascontiguousarray(images, dtype=np.float32) if features else self.features(images)}
        if labels is not None:
            inputs["labels"] = np.ascontiguousarray(labels, dtype=np.int32)
        return inputs

    def step(self, images: np.ndarray, labels: np.ndarray) -> float:
        return self._train(self._inputs(images, labels))

    def step_features(self, features: np.ndarray, labels: np.ndarray) -> float:
        """One step from the prefix's features (a feature cache's): the trained region only."""
        return self._train(self._inputs(features, labels, features=True))

    def _train(self, inputs: dict) -> float:
        # lr goes in with shape (1,), not as a scalar: a signature call resizes every input to its value's
        # shape, and ai-edge-litert 2.3.0's aarch64 build crashes resizing to a 0-d shape (it memsets -4
        # bytes), while x86-64's does not. The train graph broadcasts lr, so (1,) computes the same; the
        # 0-d optimizer.step reaches set_weights as (1,) too (np.ascontiguousarray gives ndim >= 1).
        out = self.run("train", **inputs, lr=np.full(1, self.lr, np.float32))
        return float(out["loss"])

    def gradients(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict]:
        """(loss, gradients by parameter name) of one step, running statistics updated, parameters not."""
        out = self.run("gradients", **self._inputs(images, labels))
        return float(out["loss"]), {n: out[self.grad_keys[n]] for n in self.trainable}

    def step_with_gradients(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict]:
        """One optimizer step that also returns the gradients it applied (validation checks the step): the same
        batch from the same parameters gives the same gradients in ``gradients`` and ``train`` (the running
        statistics advance twice, which the parameters' step does not see)."""
        loss, grads = self.gradients(images, labels)
        self.step(images, labels)
        return loss, grads

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.run("infer", **self._inputs(images))["logits"]

    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Every variable by name. ``copy=False`` gives views of the interpreter's output buffers instead of a
        second copy of the whole state (the optimizer's moments included: 21 MiB on MobileNetV2 ``mobiletl:5``);
        they hold until the next signature call, so only for writing the state out at once."""
        out = self._views("get_weights") if not copy else None
        out = out or self.run("get_weights")
        return {v["name"]: out[v["key"]] for v in self.variables}

    def _views(self, signature: str) -> dict | None:
        """Run an input-less signature and return views of its outputs (None where the interpreter offers none:
        ``run`` copies them instead)."""
        if signature not in self._runners:
            self._runners[signature] = self.interpreter.get_signature_runner(signature)
        runner = self._runners[signature]
        try:
            wrapper, index = runner._interpreter_wrapper, runner._subgraph_index
            wrapper.AllocateTensors(index)
            wrapper.Invoke(index)
            return {key: wrapper.tensor(wrapper, i, index) for key, i in runner._outputs}
        except (AttributeError, TypeError):
            return None

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.run("set_weights", **{v["key"]: np.ascontiguousarray(state[v["name"]], dtype=np.float32)
                                       for v in self.variables})

    def _kind(self, *kinds: str, state: dict | None = None) -> dict[str, np.ndarray]:
        state = state or self.state()
        return {v["name"]: state[v["name"]] for v in self.variables if v["kind"] in kinds}

    def params(self) -> dict[str, np.ndarray]:
        return self._kind("param")

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        self.set_state({**self.state(), **params})

    def running_stats(self) -> dict[str, np.ndarray]:
        return self._kind("stat")

    def trained(self, state: dict | None = None) -> dict[str, np.ndarray]:
        """Everything training changed: parameters and running statistics, by torchvision name (taken from
        ``state`` when one was just read)."""
        return self._kind("param", "stat", state=state)


def predictor(artifacts: str, params: dict[str, np.ndarray] | None = None, threads: int | None = None):
    """``(images -> logits, batch)``: inference with ``params`` (trained weights by torchvision name) set, and the
    batch a call takes. A training export runs its ``infer`` signature (the frozen prefix first, where the export is
    split) at the batch fixed at export; an inference export (weights baked in) runs its one model at any batch."""
    manifest = common.load_manifest(artifacts)
    if manifest.get("kind") != "inference":
        session = Session(artifacts, threads=threads)
        if params:
            session.set_params(params)
        return session.logits, session.batch_size
    if params:
        raise common.RunnerError(f"{artifacts} is an inference export: its weights are baked in, so no other weights "
                                 f"can be set; export the weights you want with `edgetl export SOURCE --inference`")
    interpreter = make_interpreter(threads, model_path=os.path.join(artifacts, manifest["file"]))
    run = interpreter.get_signature_runner("infer")  # resizes its input to each call's batch
    return (lambda images: run(images=np.ascontiguousarray(images, dtype=np.float32))["logits"],
            manifest["input"]["shape"][0] or common.EVAL_BATCH)


def infer(artifacts: str, images: np.ndarray, params: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of the ``infer`` signature, with ``params`` (e.g. trained ones) set first."""
    session = Session(artifacts)
    if params:
        session.set_params(params)
    return session.logits(images)


def train(artifacts: str, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int | None = None,
          lr: float | None = None, seed: int = 0, progress=None) -> dict:
    """``steps`` optimizer steps (see ``runner_fit.train_loop``)."""
    return train_loop(Session(artifacts, lr), images, labels, steps, batch_size, seed, progress)


def save_outputs(session: Session, artifacts: str, out: str) -> tuple[dict, dict]:
    state = session.state(copy=False)  # one read of every variable serves the checkpoint and the trained weights
    write_bytes(os.path.join(out, CHECKPOINT), lambda f: np.savez(f, **state))
    return session.trained(state), {"checkpoint": CHECKPOINT}


def main(argv=None) -> int:
    def make_session(art, lr, args):
        return Session(art, lr, args.resume, args.threads, args.prefix_batch)

    return common.main(argv, "ai-edge-litert", make_session, infer, save_outputs, predictor)


if __name__ == "__main__":
    sys.exit(main())
