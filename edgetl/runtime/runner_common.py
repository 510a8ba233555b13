"""What the device runners share; copied beside them onto devices, so it imports only numpy (and Pillow, in
``runner_data.py``, only to decode images).

    import runner_common as common          # beside the runner on a device; edgetl.runtime.runner_common here
    sys.exit(common.main(argv, "ONNX Runtime", make_trainer, infer, save_outputs))

A runtime's runner provides a ``Trainer`` (``step``, ``gradients``, ``trainable``, ``lr``, ``logits`` or
``predictor()``, and ``batch_size`` when the model fixes it), an ``infer`` function and ``save_outputs``; this
module gives it the training loop (epochs or steps, seeded shuffling, a validation split evaluated each epoch,
augmentation, checkpoints and resume), the on-device parity check, atomic writes, peak-RSS measurement and
the command line. The data (``runner_data.py``) streams: memory does not grow with the number of images.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

if __package__:  # edgetl.runtime.runner_common
    from . import runner_data as data
    from . import runner_prefix as prefix
else:  # beside the runner on a device
    import runner_data as data
    import runner_prefix as prefix

REFERENCE, MANIFEST = "reference.npz", "manifest.json"
PROGRESS, CHECKPOINTS = "progress.json", "checkpoints"
#: errors of a full disk (EFBIG: a file-size limit, which reads the same to a person)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class RunnerError(Exception):
    """A problem the runner explains in one line (bad data, wrong batch, missing runtime); the command line
    prints it and exits with status 2, a caller in Python catches it."""


prefix.bind(RunnerError)


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


def lean_heap() -> bool:
    """Have glibc's malloc map every block over 128 KiB on its own and give it back to the system when freed.

    By default glibc raises that threshold as large blocks are freed, so later ones come from a heap that only
    grows: ONNX Runtime allocates each step's buffers anew (its arena is off, see ``ort_runner``), and the heap
    kept MobileNetV2 mobiletl:5's peak 10 MiB above what a step holds at once. The price is the page faults of
    fresh buffers: about 10 % of that ONNX Runtime step (a TFLite step allocates nothing). Returns False where
    the C library has no such setting (bionic, musl): nothing changes there."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(m_mmap_threshold, 128 << 10) == 1 and mallopt(m_trim_threshold, 4 << 20) == 1


def release_file_pages(path: str) -> int:
    """Drop this process's resident pages of every memory mapping of the file ``path`` (Linux, Android): what is
    read again is paged back in from the file, so nothing changes but RSS. Returns the bytes of mappings released
    (0 where the platform offers no madvise or /proc/self/maps)."""
    import ctypes

    madv_dontneed, released = 4, 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        real = os.path.realpath(path)
        with open("/proc/self/maps") as f:
            spans = [line.split(None, 5) for line in f]
        for parts in spans:
            if len(parts) == 6 and parts[5].rstrip("\n") == real:
                start, end = (int(v, 16) for v in parts[0].split("-"))
                if madvise(start, end - start, madv_dontneed) == 0:
                    released += end - start
    except (OSError, AttributeError, ValueError):
        return 0
    return released


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


# -- training on a data set: epochs or steps, validation, checkpoints ------------------------------------

def evaluate(trainer, split, batch_size: int) -> dict:
    """Accuracy and cross-entropy of the current weights on ``split`` (a fixed-batch model gets its last batch
    padded; only the real images count)."""
    predict = trainer.predictor() if hasattr(trainer, "predictor") else trainer.logits
    correct, total, loss = 0, 0, 0.0
    for x, y, real in data.batches(split, range(len(split)), getattr(trainer, "batch_size", None) or batch_size,
                                   pad=True):
        logits = np.asarray(predict(x), np.float64)[:real]
        y = y[:real]
        z = logits - logits.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss -= float(log_p[np.arange(real), y].sum())
        correct += int((logits.argmax(axis=1) == y).sum())
        total += real
    return {"val_acc": correct / total if total else None, "val_loss": loss / total if total else None,
            "val_images": total}


def new_state() -> dict:
    """Where a training run stands; JSON, so ``progress.json`` can hold it for a resume."""
    return {"epoch": 0, "steps": 0, "losses": [], "step_seconds": [], "history": [], "bad": {}}


def fit(trainer, train, val=None, epochs: int | None = None, steps: int | None = None, batch_size: int = 8,
        seed: int = 0, augment: str = "none", state: dict | None = None, on_epoch=None, progress=None,
        cache=None) -> dict:
    """Train on the ``train`` split for ``epochs`` epochs or ``steps`` steps (whichever is given), evaluating
    ``val`` after every epoch. Epoch ``e`` visits the images in the order ``default_rng([seed, e])`` draws (and
    flips with ``default_rng([seed, e, 1])``), so a run resumed from ``state`` at an epoch boundary trains
    exactly as an uninterrupted one. ``on_epoch(state, last)`` follows every epoch (checkpoints);
    ``progress(step, total, loss)`` every step. With ``cache`` (a :class:`runner_prefix.FeatureCache`; fixed
    inputs only) the prefix's features of each image are computed once and read back in later epochs.
    Returns ``state``."""
    if epochs is None and steps is None:
        raise ValueError("fit needs epochs or steps")
    fixed = getattr(trainer, "batch_size", None)
    size = fixed or max(1, min(batch_size, len(train)))
    state = state or new_state()
    for split in (train, val):
        if split is not None:
            split.restore_bad(state["bad"].get(split.name, {}))

    def finished() -> bool:
        return (epochs is not None and state["epoch"] >= epochs) or (steps is not None and state["steps"] >= steps)

    while not finished():
        epoch = state["epoch"] + 1
        per_epoch = data.steps_per_epoch(train, size)
        total = (state["steps"] + per_epoch * (epochs - epoch + 1)) if epochs is not None else steps
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        flip = np.random.default_rng([seed, epoch, 1]) if augment == "flip" else None
        t0, losses = time.perf_counter(), []
        feed = (prefix.cached_batches(train, order, size, cache, trainer.features) if cache is not None
                else data.batches(train, order, size, flip=flip))
        stopped = False
        while True:
            t = time.perf_counter()
            try:
                x, y, *_ = next(feed)
            except StopIteration:
                break
            if cache is None:  # a step's time is its compute; with the cache, the prefix runs (or is read) in feed
                t = time.perf_counter()
                # the images are let go once the prefix has made their features (an export without a prefix:
                # the images themselves), so they do not stay in memory through the trained region's step
                x = trainer.features(x)
            losses.append(trainer.step_features(x, y))
            state["step_seconds"].append(time.perf_counter() - t)
            state["steps"] += 1
            if progress:
                progress(state["steps"], total, losses[-1])
            if steps is not None and state["steps"] >= steps:
                stopped = True
                break
        if cache is not None and not stopped:
            cache.seal()  # the first whole epoch filled it
        if not losses:
            readable = len(train) - len(train.bad)
            if not readable:
                first = train.describe_bad()[0]
                data.refuse(f"none of the {len(train)} training images could be read (e.g. {first}): replace or "
                            f"delete the files")
            data.refuse(f"only {readable} readable training image(s), fewer than one batch of {size}: add images, "
                        f"or export with a smaller --batch-size")
        state["losses"] += losses
        record = {"epoch": epoch, "steps": len(losses), "train_loss": float(np.mean(losses))}
        if val is not None:
            record.update(evaluate(trainer, val, size))
        record["skipped_unreadable"] = len(train.bad) + (len(val.bad) if val is not None else 0)
        record["seconds"] = time.perf_counter() - t0
        state["history"].append(record)
        state["epoch"] = epoch
        state["bad"] = {s.name: s.bad_state() for s in (train, val) if s is not None}
        if on_epoch:
            on_epoch(state, finished())
    return state


def train_loop(trainer, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int | None = None,
               seed: int = 0, progress=None) -> dict:
    """``steps`` optimizer steps on arrays: (N, 3, H, W) images sliced into batches, or (K, B, 3, H, W) batches
    cycled in order (the reference batches validation replays)."""
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


# -- checkpoints: what a resume may trust ---------------------------------------------------------------

def write_checkpoint(trainer, artifacts: str, out: str, state: dict, config: dict, save_outputs) -> None:
    """The weights after ``state['epoch']`` into ``out/checkpoints/epoch-N``, then ``progress.json`` naming it.

    ``progress.json`` is written (atomically) only when the checkpoint is whole, and a resume trusts only the
    directory it names: an interruption or a full disk in between leaves the previous checkpoint in force.
    """
    name = f"epoch-{state['epoch']:04d}"
    root = os.path.join(out, CHECKPOINTS)
    folder = os.path.join(root, name)
    shutil.rmtree(folder, ignore_errors=True)  # a leftover of an interrupted write, never named by progress.json
    os.makedirs(folder)
    try:
        trained, extra = save_outputs(trainer, artifacts, folder)
        write_bytes(os.path.join(folder, "params.npz"), lambda f: np.savez(f, **trained))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # give a full disk its space back; the previous checkpoint stands
        raise
    progress = {**state, "config": config, "checkpoint": f"{CHECKPOINTS}/{name}/{extra['checkpoint']}",
                "complete": False}
    write_bytes(os.path.join(out, PROGRESS), lambda f: f.write(json.dumps(progress).encode()))
    for old in os.listdir(root):
        if old != name:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def resumable(out: str, config: dict) -> dict | None:
    """The state of an unfinished run of the same configuration in ``out`` (None: start afresh)."""
    try:
        with open(os.path.join(out, PROGRESS)) as f:
            progress = json.load(f)
    except (OSError, ValueError):
        return None
    if progress.get("complete") or progress.get("config") != config:
        if not progress.get("complete"):
            print(f"note: {out} holds an unfinished run with other settings; starting afresh", flush=True)
        return None
    if not os.path.exists(os.path.join(out, progress["checkpoint"])):
        print(f"note: the checkpoint {progress['checkpoint']} is missing from {out}; starting afresh", flush=True)
        return None
    return progress


def hold_lock(out: str):
    """An exclusive lock on ``out`` for this process's life: a second runner there (a deploy run again while the
    first still trains) would write the same checkpoints. Where ``fcntl`` is missing, nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return None
    f = open(os.path.join(out, ".lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunnerError(f"another runner is training in {os.path.abspath(out)} now: wait until it ends (or stop "
                          f"it), then run the same command to continue from its checkpoint") from None
    return f


def run_config(args, manifest_path: str) -> dict:
    """What must be the same for a run in ``--out`` to be continued."""
    with open(manifest_path, "rb") as f:
        manifest = hashlib.sha256(f.read()).hexdigest()
    keys = ("data", "device_data", "val_split", "epochs", "steps", "batch_size", "lr", "seed", "augment", "resume",
            "cache_features", "cache_dtype")
    return {"manifest": manifest, **{k: getattr(args, k) for k in keys}}


# -- the command line -------------------------------------------------------------------------------------

def main(argv, runtime: str, make_trainer, infer, save_outputs) -> int:
    """The runner's command line: train (or ``--verify``), write the outputs atomically; a :class:`RunnerError`
    is printed as one line with exit status 2.

    ``make_trainer(artifacts, lr, args)`` (``args.resume``: a checkpoint to start from);
    ``save_outputs(trainer, artifacts, out_dir) -> (trained, extra)`` writes the runtime's own files (its
    checkpoint named by ``extra['checkpoint']``) and returns the trained weights (``params.npz``) and extra
    metrics.
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
    args = ap.parse_args(argv)
    try:
        return _run(args, runtime, make_trainer, infer, save_outputs)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args, runtime: str, make_trainer, infer, save_outputs) -> int:
    if args.heap == "lean":
        lean_heap()
    manifest = load_manifest(args.artifacts)
    if args.baseline:  # what the runtime and the loaded models cost before any step: the benchmark's baseline
        make_trainer(args.artifacts, None, args).allocate()
        print(json.dumps({"baseline_rss_bytes": peak_rss_bytes()}), flush=True)
        return 0
    if args.verify:
        checks = verify(args.artifacts, make_trainer(args.artifacts, None, args), infer)
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
    train, val, info = data.open_data(manifest, args.data or os.path.join(args.artifacts, REFERENCE),
                                      args.device_data, args.val_split, args.seed)
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
    trainer = make_trainer(args.artifacts, args.lr, args)
    cache = None
    if args.cache_features:
        size = getattr(trainer, "batch_size", None) or max(1, min(args.batch_size, len(train)))
        cache = prefix.FeatureCache.open(len(train), manifest["split"]["feature_shape"], args.cache_dtype,
                                         int(args.cache_budget_mb * 2**20), args.cache_dir or args.out,
                                         prefix.cache_key(manifest, train, args.cache_dtype),
                                         log=lambda line: print(line, flush=True))
        print(f"cache {cache.where} {cache.dtype} {cache.bytes} bytes for {len(train)} images, batch {size}", flush=True)
    saved = [time.monotonic(), resumed]  # when, and which epoch, the last checkpoint was written

    def progress(i, n, loss):
        print(f"step {i}/{n} loss {loss:.4f}", flush=True)

    def on_epoch(state, last):
        r = state["history"][-1]
        val_part = (f" val_acc {r['val_acc']:.4f} val_loss {r['val_loss']:.4f} val_n {r['val_images']}"
                    if r.get("val_acc") is not None else "")
        print(f"epoch {r['epoch']}/{args.epochs or '-'} loss {r['train_loss']:.4f}{val_part} "
              f"skipped {r['skipped_unreadable']}", flush=True)
        if not last and time.monotonic() - saved[0] >= args.checkpoint_every:
            write_checkpoint(trainer, args.artifacts, args.out, state, config, save_outputs)
            saved[:] = [time.monotonic(), state["epoch"]]

    try:
        try:
            state = fit(trainer, train, val, args.epochs, steps, args.batch_size, args.seed, args.augment,
                        {k: state[k] for k in new_state()} if state else None, on_epoch, progress, cache)
        except BaseException:
            if cache is not None:
                cache.discard()  # nothing half-built stays behind for a later run
            raise
        if cache is not None:
            cache.discard()  # a cache never sealed (a --steps run that ended inside the first epoch) is not kept
        train_peak = peak_rss_bytes()  # before the outputs: reading every variable back costs memory of its own
        trained, extra = save_outputs(trainer, args.artifacts, args.out)
        write_bytes(os.path.join(args.out, "params.npz"), lambda f: np.savez(f, **trained))
        skipped, named = data.unreadable(train, val)
        metrics = {"steps": state["steps"], "epochs": state["history"], "lr": trainer.lr, "losses": state["losses"],
                   "step_seconds": state["step_seconds"], "median_step_seconds": float(np.median(state["step_seconds"])),
                   "peak_rss_bytes": peak_rss_bytes(), "train_peak_rss_bytes": train_peak, "runtime": runtime,
                   "machine": platform.machine(), "threads": args.threads,
                   "data": {**info, "skipped_unreadable": skipped, "unreadable": named},
                   "prefix_batch": getattr(trainer, "prefix_batch", None),
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
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("losses", "step_seconds", "epochs")}))
    return 0
