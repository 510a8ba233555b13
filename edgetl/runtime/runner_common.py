"""What the device runners share; copied beside them onto devices, so it imports only numpy.

    import runner_common as common          # beside the runner on a device; edgetl.runtime.runner_common here
    sys.exit(common.main(argv, "ONNX Runtime", make_trainer, infer, save_outputs))

A runtime's runner provides a ``Trainer`` (``step``, ``gradients``, ``trainable``, ``lr``, and
``batch_size`` when the model fixes it), an ``infer`` function and ``save_outputs``; this module gives it
the training loop, the on-device parity check, atomic writes, peak-RSS measurement and the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

REFERENCE, MANIFEST = "reference.npz", "manifest.json"


class RunnerError(Exception):
    """A problem the runner explains in one line (bad data, wrong batch, missing runtime); the command line
    prints it and exits with status 2, a caller in Python catches it."""


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


def atomic(path: str, write) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path), dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str, write) -> None:
    def to_file(tmp):
        with open(tmp, "wb") as f:
            write(f)

    atomic(path, to_file)


def load_manifest(artifacts: str) -> dict:
    with open(os.path.join(artifacts, MANIFEST)) as f:
        return json.load(f)


def train_loop(trainer, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int | None = None,
               seed: int = 0, progress=None) -> dict:
    """``steps`` optimizer steps. ``images`` is (N, 3, H, W) sliced into batches, or (K, B, 3, H, W) cycled."""
    if images.ndim == 5:
        batches = [(images[i], labels[i]) for i in range(len(images))]
    else:
        batch_size = min(getattr(trainer, "batch_size", None) or batch_size or 8, len(images))
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


def verify(artifacts: str, trainer, infer) -> list[dict]:
    """Repeat the export's parity check here against ``reference.npz``: inference logits, and the loss and
    the per-tensor gradient norms of one training step, as PyTorch computed them at export time."""
    tol = load_manifest(artifacts)["validation"]["tolerances"]
    ref = np.load(os.path.join(artifacts, REFERENCE))
    logits = infer(artifacts, ref["images"][0])
    logit_diff = float(np.max(np.abs(logits - ref["logits"])))
    logit_tol = tol["logit_atol"] * max(1.0, float(np.max(np.abs(ref["logits"]))))
    loss, grads = trainer.gradients(ref["images"][0], ref["labels"][0])
    loss_diff = abs(loss - float(ref["loss"])) / max(1.0, abs(float(ref["loss"])))
    norms = np.array([np.linalg.norm(grads[n]) for n in trainer.trainable])
    norm_diff = float(np.linalg.norm(norms - ref["grad_norms"]) / np.linalg.norm(ref["grad_norms"]))
    return [{"name": "inference logits", "ok": logit_diff <= logit_tol, "max_diff": logit_diff, "tolerance": logit_tol},
            {"name": "training loss, one step", "ok": loss_diff <= tol["loss_rtol"], "max_diff": loss_diff,
             "tolerance": tol["loss_rtol"]},
            {"name": "gradient norms per tensor, one step", "ok": norm_diff <= tol["grad_rtol"], "max_diff": norm_diff,
             "tolerance": tol["grad_rtol"]}]


def load_shard(path: str, manifest: dict):
    data = np.load(path)
    expected = tuple(manifest["input"]["shape"][1:])
    if "images" not in data or "labels" not in data or tuple(data["images"].shape[-3:]) != expected:
        shape = tuple(data["images"].shape) if "images" in data else "missing"
        raise RunnerError(f"the data shard's images are {shape}, but the model takes (N, {', '.join(map(str, expected))}) "
                         f"float32 with int64 labels: pack the shard at the model's resolution "
                         f"(`edgetl deploy --data DIR` does)")
    return data


def main(argv, runtime: str, make_trainer, infer, save_outputs) -> int:
    """The runner's command line: train N steps (or ``--verify``), write the outputs atomically; a
    :class:`RunnerError` is printed as one line with exit status 2.

    ``make_trainer(artifacts, lr, args)``; ``save_outputs(trainer, artifacts, out_dir) -> (trained, extra)``
    writes the runtime's own files and returns the trained weights (``params.npz``) and extra metrics.
    """
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    ap = argparse.ArgumentParser(description=f"Train an edgetl {runtime} export on this device.")
    ap.add_argument("--artifacts", default=here)
    ap.add_argument("--data", help="shard .npz with images and labels (default: the reference batches)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--resume", help="a checkpoint a previous run of this runner wrote, to continue from")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of the runtime")
    ap.add_argument("--out", default="trained")
    ap.add_argument("--verify", action="store_true", help="repeat the export's parity check and exit")
    args = ap.parse_args(argv)
    try:
        return _run(args, runtime, make_trainer, infer, save_outputs)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args, runtime: str, make_trainer, infer, save_outputs) -> int:
    manifest = load_manifest(args.artifacts)
    if args.verify:
        checks = verify(args.artifacts, make_trainer(args.artifacts, None, args), infer)
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}: max |diff| {c['max_diff']:.3g} (tolerance {c['tolerance']:.3g})")
        print(json.dumps({"verify": checks}))
        return 0 if all(c["ok"] for c in checks) else 1
    data = load_shard(args.data or os.path.join(args.artifacts, REFERENCE), manifest)
    os.makedirs(args.out, exist_ok=True)
    trainer = make_trainer(args.artifacts, args.lr, args)

    def progress(i, n, loss):
        print(f"step {i}/{n} loss {loss:.4f}", flush=True)

    run = train_loop(trainer, data["images"], data["labels"], args.steps, args.batch_size, progress=progress)
    trained, extra = save_outputs(trainer, args.artifacts, args.out)
    write_bytes(os.path.join(args.out, "params.npz"), lambda f: np.savez(f, **trained))
    metrics = {"steps": args.steps, "lr": trainer.lr, "losses": run["losses"], "step_seconds": run["step_seconds"],
               "median_step_seconds": float(np.median(run["step_seconds"])), "peak_rss_bytes": peak_rss_bytes(),
               "runtime": runtime, "machine": platform.machine(), "torch_imported": "torch" in sys.modules,
               "tensorflow_imported": "tensorflow" in sys.modules, **extra}
    write_bytes(os.path.join(args.out, "metrics.json"), lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("losses", "step_seconds")}))
    return 0
