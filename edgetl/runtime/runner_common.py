"""What the device runners share; copied beside them onto devices, so it imports only numpy (and Pillow, in
``runner_data.py``, only to decode images).

    import runner_common as common          # beside the runner on a device; edgetl.runtime.runner_common here
    sys.exit(common.main(argv, "ONNX Runtime", make_session, infer, save_outputs))

A runtime's runner provides a ``Session`` (``step``, ``gradients``, ``trainable``, ``lr``, ``logits`` or
``predictor()``, and ``batch_size`` when the model fixes it), an ``infer`` function and ``save_outputs``; this
module gives it the command line, which runs the training loop (``runner_fit.py``: epochs or steps, seeded
shuffling, the schedule, validation each epoch, checkpoints and resume), the on-device parity check, and the
``--predict`` / ``--evaluate`` modes (``runner_eval.py``). The data (``runner_data.py``) streams: memory does not
grow with the number of images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

if __package__:  # edgetl.runtime.runner_common
    from . import runner_data as data
    from . import runner_eval as evaluation
    from . import runner_prefix as prefix
    from .runner_fit import CHECKPOINTS, PROGRESS, SCHEDULES, evaluate, fit, hold_lock, new_state, resumable, write_epoch
    from .runner_io import DISK_FULL, RunnerError, atomic_json, lean_heap, peak_rss_bytes, write_bytes
else:  # beside the runner on a device
    import runner_data as data
    import runner_eval as evaluation
    import runner_prefix as prefix
    from runner_fit import CHECKPOINTS, PROGRESS, SCHEDULES, evaluate, fit, hold_lock, new_state, resumable, write_epoch
    from runner_io import DISK_FULL, RunnerError, atomic_json, lean_heap, peak_rss_bytes, write_bytes

REFERENCE, MANIFEST = "reference.npz", "manifest.json"
#: the batch an inference of any batch size runs at when evaluating or predicting many images
EVAL_BATCH = 16


def load_manifest(artifacts: str) -> dict:
    with open(os.path.join(artifacts, MANIFEST)) as f:
        return json.load(f)


def verify(artifacts: str, session, infer) -> list[dict]:
    """Repeat the export's parity check here against ``reference.npz``: inference logits, and the loss and
    the per-tensor gradient norms of one training step, as PyTorch computed them at export time."""
    tol = load_manifest(artifacts)["validation"]["tolerances"]
    ref = np.load(os.path.join(artifacts, REFERENCE))
    logits = infer(artifacts, ref["images"][0])
    logit_diff = float(np.max(np.abs(logits - ref["logits"])))
    logit_tol = tol["logit_atol"] * max(1.0, float(np.max(np.abs(ref["logits"]))))
    loss, grads = session.gradients(ref["images"][0], ref["labels"][0])
    loss_diff = abs(loss - float(ref["loss"])) / max(1.0, abs(float(ref["loss"])))
    norms = np.array([np.linalg.norm(grads[n]) for n in session.trainable])
    norm_diff = float(np.linalg.norm(norms - ref["grad_norms"]) / np.linalg.norm(ref["grad_norms"]))
    return [{"name": "inference logits", "ok": logit_diff <= logit_tol, "max_diff": logit_diff, "tolerance": logit_tol},
            {"name": "training loss, one step", "ok": loss_diff <= tol["loss_rtol"], "max_diff": loss_diff,
             "tolerance": tol["loss_rtol"]},
            {"name": "gradient norms per tensor, one step", "ok": norm_diff <= tol["grad_rtol"], "max_diff": norm_diff,
             "tolerance": tol["grad_rtol"]}]


def run_config(args, manifest_path: str) -> dict:
    """What must be the same for a run in ``--out`` to be continued."""
    with open(manifest_path, "rb") as f:
        manifest = hashlib.sha256(f.read()).hexdigest()
    keys = ("data", "device_data", "val_split", "epochs", "steps", "batch_size", "lr", "seed", "augment", "resume",
            "cache_features", "cache_dtype", "schedule", "eval_data")
    return {"manifest": manifest, **{k: getattr(args, k) for k in keys}}


# -- the command line -------------------------------------------------------------------------------------

def main(argv, runtime: str, make_session, infer, save_outputs, make_predictor=None) -> int:
    """The runner's command line: train (or ``--verify``), write the outputs atomically; a :class:`RunnerError`
    is printed as one line with exit status 2.

    ``make_session(artifacts, lr, args)`` (``args.resume``: a checkpoint to start from);
    ``save_outputs(session, artifacts, out_dir) -> (trained, extra)`` writes the runtime's own files (its
    checkpoint named by ``extra['checkpoint']``) and returns the trained weights (``params.npz``) and extra
    metrics; ``make_predictor(artifacts, params, threads) -> (images -> logits, batch)`` serves ``--predict`` and
    ``--evaluate``.
    """
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    ap = argparse.ArgumentParser(description=f"Train an edgetl {runtime} export on this device.")
    ap.add_argument("--artifacts", default=here)
    ap.add_argument("--data", help="a shard: a directory `edgetl deploy --data` pushed (uint8 .npy, memory-mapped), "
                                   "or .npz with images and labels (default: the reference batches)")
    ap.add_argument("--device-data", help="an ImageFolder on this device: PATH/<class>/*.jpg, or PATH/train and "
                                          "PATH/val; decoded here, as the manifest's preprocessing says")
    ap.add_argument("--val-split", type=float, help="fraction of a flat ImageFolder held out for validation")
    ap.add_argument("--epochs", type=int, help="passes over the training images")
    ap.add_argument("--steps", type=int, help="optimizer steps (default 10 when --epochs is not given)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int, default=0, help="shuffling, the validation split and augmentation")
    ap.add_argument("--augment", choices=("none", "flip"), default="none")
    ap.add_argument("--checkpoint-every", type=float, default=30.0,
                    help="seconds between checkpoints, taken at epoch ends (0: every epoch)")
    ap.add_argument("--resume", help="a checkpoint a previous run of this runner wrote, to continue from")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of the runtime")
    ap.add_argument("--out", default="trained", help="results; an unfinished run of the same settings there continues")
    ap.add_argument("--verify", action="store_true", help="repeat the export's parity check and exit")
    ap.add_argument("--prefix-batch", default="auto",
                    help="micro-batch of the frozen prefix (1..batch), or auto: the largest whose working set stays "
                         "within what one image costs the trained region")
    ap.add_argument("--cache-features", action="store_true",
                    help="compute the frozen prefix's features once (first epoch) and reuse them (needs --augment none)")
    ap.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--cache-budget-mb", type=float, default=256.0,
                    help="a larger cache goes to a memory-mapped file in --cache-dir")
    ap.add_argument("--cache-dir", help="where a disk cache lives (default: --out)")
    ap.add_argument("--heap", choices=("lean", "fast"), default="lean",
                    help="lean: large buffers go back to the system when freed (a lower peak; ONNX Runtime ~10%% slower)")
    ap.add_argument("--baseline", action="store_true",
                    help="load the runtime and every model the step uses, print {\"baseline_rss_bytes\": N}, exit")
    ap.add_argument("--schedule", choices=SCHEDULES,
                    help="learning rate over the planned steps: cosine (as the trainer) or constant [default: the "
                         "manifest's; constant for exports that record none]")
    ap.add_argument("--eval-data", metavar="PATH",
                    help="an ImageFolder here (PATH/<class>/*) evaluated before and after training: accuracy and "
                         "confusion matrix in the metrics")
    ap.add_argument("--predict", nargs="+", metavar="PATH",
                    help="classify these images (files or folders) with --weights, write OUT/predictions.json, exit")
    ap.add_argument("--evaluate", metavar="PATH",
                    help="evaluate --weights on an ImageFolder here, write OUT/evaluation.json, exit")
    ap.add_argument("--weights", default="latest",
                    help="for --predict and --evaluate: a params.npz, latest (the newest finished training of this "
                         "export on this device, else the export's own), or export (the export's own weights)")
    ap.add_argument("--top-k", type=int, default=3, help="classes per image for --predict")
    args = ap.parse_args(argv)
    try:
        return _run(args, runtime, make_session, infer, save_outputs, make_predictor)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args, runtime: str, make_session, infer, save_outputs, make_predictor) -> int:
    if args.heap == "lean":
        lean_heap()
    manifest = load_manifest(args.artifacts)
    if args.predict or args.evaluate:  # use what was learned: classify or evaluate images here, then exit
        return evaluation.use(args, manifest, make_predictor, atomic_json)
    if args.baseline:  # what the runtime and the loaded models cost before any step: the benchmark's baseline
        make_session(args.artifacts, None, args).allocate()
        print(json.dumps({"baseline_rss_bytes": peak_rss_bytes()}), flush=True)
        return 0
    if args.verify:
        checks = verify(args.artifacts, make_session(args.artifacts, None, args), infer)
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}: max |diff| {c['max_diff']:.3g} (tolerance {c['tolerance']:.3g})")
        print(json.dumps({"verify": checks}))
        return 0 if all(c["ok"] for c in checks) else 1
    if args.epochs is not None and args.steps is not None:
        raise RunnerError("give --epochs or --steps, not both")
    if args.data and args.device_data:
        raise RunnerError("give --data (a pushed shard) or --device-data (images on this device), not both")
    steps = 10 if args.epochs is None and args.steps is None else args.steps
    if args.cache_features and args.augment != "none":
        raise RunnerError(f"--cache-features needs fixed inputs, but --augment {args.augment} changes every image each "
                          f"epoch: use --augment none with the cache, or drop --cache-features")
    if args.cache_features and not manifest.get("split"):
        raise RunnerError(f"--cache-features: this export ({manifest['policy']}) has no frozen prefix, so there are no "
                          f"fixed features to cache: drop --cache-features (or export a policy such as mobiletl:K)")
    # a bad --prefix-batch is refused before any data is read
    prefix.prefix_batch(args.prefix_batch, manifest["input"]["shape"][0] or args.batch_size, manifest.get("split"))
    schedule = args.schedule or manifest.get("schedule", {}).get("name", "constant")
    train, val, info = data.open_data(manifest, args.data or os.path.join(args.artifacts, REFERENCE),
                                      args.device_data, args.val_split, args.seed)
    held_out = None
    if args.eval_data:  # a held-out folder judged before and after training, whole
        held_out, notes = data.labelled_folder(args.eval_data, manifest["class_names"], manifest["preprocessing"])
        info.setdefault("notes", []).extend(notes)
    print(f"data {info['source']} train {info['train_images']} val {info['val_images']}", flush=True)
    for note in info.get("notes", []):
        print(f"note: {note}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    lock = hold_lock(args.out)  # noqa: F841 - held until the process ends
    config = run_config(args, os.path.join(args.artifacts, MANIFEST))
    state = resumable(args.out, config)
    if state:
        args.resume = os.path.join(args.out, state["checkpoint"])
        print(f"resume epoch {state['epoch']} step {state['steps']}", flush=True)
    resumed = state["epoch"] if state else None
    session = make_session(args.artifacts, args.lr, args)
    cache = None
    if args.cache_features:
        size = getattr(session, "batch_size", None) or max(1, min(args.batch_size, len(train)))
        cache = prefix.FeatureCache.open(len(train), manifest["split"]["feature_shape"], args.cache_dtype,
                                         int(args.cache_budget_mb * 2**20), args.cache_dir or args.out,
                                         prefix.cache_key(manifest, train, args.cache_dtype),
                                         log=lambda line: print(line, flush=True))
        print(f"cache {cache.where} {cache.dtype} {cache.bytes} bytes for {len(train)} images, batch {size}", flush=True)
    saved = [time.monotonic(), resumed]  # when, and which epoch, the last checkpoint was written

    def progress(i, n, loss):
        print(f"step {i}/{n} loss {loss:.4f}", flush=True)

    def judge(when: str) -> dict:
        result = evaluate(session, held_out, args.batch_size, manifest["class_names"])
        print(f"eval {when} top1 {result['top1']:.4f} images {result['images']}", flush=True)
        return result

    before = (state or {}).get("eval_before")
    if held_out is not None and before is None:
        before = judge("before")

    def on_epoch(state, last):
        r = state["history"][-1]
        val_part = (f" val_acc {r['val_acc']:.4f} val_loss {r['val_loss']:.4f} val_n {r['val_images']}"
                    if r.get("val_acc") is not None else "")
        print(f"epoch {r['epoch']}/{args.epochs or '-'} loss {r['train_loss']:.4f}{val_part} "
              f"skipped {r['skipped_unreadable']}", flush=True)
        if not last and time.monotonic() - saved[0] >= args.checkpoint_every:
            write_epoch(session, args.artifacts, args.out, state, config, save_outputs)
            saved[:] = [time.monotonic(), state["epoch"]]

    try:
        try:
            state = fit(session, train, val, args.epochs, steps, args.batch_size, args.seed, args.augment,
                        {**new_state(), **{k: state[k] for k in new_state() if k in state}} if state else
                        {**new_state(), "eval_before": before}, on_epoch, progress, cache, schedule)
        except BaseException:
            if cache is not None:
                cache.discard()  # nothing half-built stays behind for a later run
            raise
        if cache is not None:
            cache.discard()  # a cache never sealed (a --steps run that ended inside the first epoch) is not kept
        train_peak = peak_rss_bytes()  # before the outputs: reading every variable back costs memory of its own
        trained, extra = save_outputs(session, args.artifacts, args.out)
        write_bytes(os.path.join(args.out, "params.npz"), lambda f: np.savez(f, **trained))
        skipped, named = data.unreadable(train, val)
        after = judge("after") if held_out is not None else None
        metrics = {"steps": state["steps"], "epochs": state["history"], "lr": session.lr, "schedule": schedule,
                   "lrs": state["lrs"],
                   "eval": {"path": os.path.abspath(os.path.expanduser(args.eval_data)), "before": before,
                            "after": after} if held_out is not None else None, "losses": state["losses"],
                   "step_seconds": state["step_seconds"], "median_step_seconds": float(np.median(state["step_seconds"])),
                   "peak_rss_bytes": peak_rss_bytes(), "train_peak_rss_bytes": train_peak, "runtime": runtime,
                   "machine": platform.machine(), "threads": args.threads,
                   "data": {**info, "skipped_unreadable": skipped, "unreadable": named},
                   "prefix_batch": getattr(session, "prefix_batch", None),
                   "cache": cache.describe() if cache is not None else None,
                   "resumed_from_epoch": resumed, "torch_imported": "torch" in sys.modules,
                   "tensorflow_imported": "tensorflow" in sys.modules, **extra}
        write_bytes(os.path.join(args.out, "metrics.json"), lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        write_bytes(os.path.join(args.out, PROGRESS),
                    lambda f: f.write(json.dumps({"config": config, "complete": True}).encode()))
        shutil.rmtree(os.path.join(args.out, CHECKPOINTS), ignore_errors=True)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        where = f"epoch {saved[1]}, the last complete checkpoint" if saved[1] else "the start: no checkpoint was complete"
        raise RunnerError(f"the disk filled while writing results in {os.path.abspath(args.out)} ({exc.strerror}): "
                          f"free space there and run the same command again; it resumes from {where}") from None
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("losses", "lrs", "step_seconds", "epochs")}))
    return 0
