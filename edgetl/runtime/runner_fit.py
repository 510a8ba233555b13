"""The runners' training loop: epochs or steps over a split with seeded shuffling and augmentation, the
learning-rate schedule (the trainer's, step for step), validation after each epoch, and the checkpoints a resume
trusts. Copied beside the runners onto devices; it imports numpy and the other runner files only.

    state = fit(session, train, val, epochs=5, batch_size=8, seed=0, schedule="cosine", on_epoch=save)
    write_epoch(session, artifacts, out, state, config, save_outputs)   # then resumable(out, config)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np

if __package__:  # edgetl.runtime.runner_fit
    from . import runner_data as data
    from . import runner_eval as evaluation
    from . import runner_prefix as prefix
    from .runner_io import RunnerError, write_bytes
else:  # beside the runner on a device
    import runner_data as data
    import runner_eval as evaluation
    import runner_prefix as prefix
    from runner_io import RunnerError, write_bytes

PROGRESS, CHECKPOINTS = "progress.json", "checkpoints"


def predictor_of(session):
    """``images -> logits`` with the weights trained so far (one inference session for many batches)."""
    return session.predictor() if hasattr(session, "predictor") else session.logits


def evaluate(session, split, batch_size: int, class_names: list[str] | None = None) -> dict:
    """The current weights on ``split`` (a fixed-batch model gets its last batch padded; only the real images
    count): with ``class_names`` the whole evaluation (``runner_eval``), else the validation record (accuracy,
    cross-entropy, images)."""
    size = getattr(session, "batch_size", None) or batch_size
    result = evaluation.evaluate(predictor_of(session), split, size, class_names)
    if class_names is not None:
        return result
    return {"val_acc": result["top1"], "val_loss": result["loss"], "val_images": result["images"]}


# -- the learning-rate schedule: the trainer's, step for step ----------------------------------------------

SCHEDULES = ("cosine", "constant")


def learning_rate(base: float, step: int, total: int, schedule: str) -> float:
    """The learning rate of step ``step`` (0-based) of a run of ``total`` planned steps: ``cosine`` anneals from
    ``base`` towards 0 as the trainer's ``CosineAnnealingLR(T_max=total)`` does (stepped after every optimizer
    step), ``constant`` keeps ``base``."""
    if schedule == "constant" or total <= 0:
        return base
    return base * (1.0 + math.cos(math.pi * min(step, total) / total)) / 2.0


def planned_steps(train, size: int, epochs: int | None, steps: int | None) -> int:
    """The steps a run plans: ``steps``, or ``epochs`` times the batches of the training split. Unreadable images
    are not subtracted (they are found while training), so a resumed run plans what the first one did."""
    return steps if epochs is None else epochs * (len(train) // size)


def new_state() -> dict:
    """Where a training run stands; JSON, so ``progress.json`` can hold it for a resume."""
    return {"epoch": 0, "steps": 0, "losses": [], "lrs": [], "step_seconds": [], "history": [], "bad": {},
            "eval_before": None}


def fit(session, train, val=None, epochs: int | None = None, steps: int | None = None, batch_size: int = 8,
        seed: int = 0, augment: str = "none", state: dict | None = None, on_epoch=None, progress=None,
        cache=None, schedule: str = "constant") -> dict:
    """Train on the ``train`` split for ``epochs`` epochs or ``steps`` steps (whichever is given), evaluating
    ``val`` after every epoch. Epoch ``e`` visits the images in the order ``default_rng([seed, e])`` draws (and
    flips with ``default_rng([seed, e, 1])``), so a run resumed from ``state`` at an epoch boundary trains
    exactly as an uninterrupted one. The learning rate follows ``schedule`` (:func:`learning_rate`) over the
    planned steps from the session's ``lr``. ``on_epoch(state, last)`` follows every epoch (checkpoints);
    ``progress(step, total, loss)`` every step. With ``cache`` (a :class:`runner_prefix.FeatureCache`; fixed
    inputs only) the prefix's features of each image are computed once and read back in later epochs.
    Returns ``state``."""
    if epochs is None and steps is None:
        raise ValueError("fit needs epochs or steps")
    if schedule not in SCHEDULES:
        raise RunnerError(f"unknown --schedule {schedule!r}: choose {' or '.join(SCHEDULES)}")
    fixed = getattr(session, "batch_size", None)
    size = fixed or max(1, min(batch_size, len(train)))
    state = state or new_state()
    base_lr, planned = session.lr, planned_steps(train, size, epochs, steps)
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
        t0, losses, lrs = time.perf_counter(), [], []
        feed = (prefix.cached_batches(train, order, size, cache, session.features) if cache is not None
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
                x = session.features(x)
            lrs.append(learning_rate(base_lr, state["steps"], planned, schedule))
            session.set_lr(lrs[-1])
            losses.append(session.step_features(x, y))
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
        state["lrs"] = state.get("lrs", []) + lrs
        record = {"epoch": epoch, "steps": len(losses), "train_loss": float(np.mean(losses))}
        if val is not None:
            record.update(evaluate(session, val, size))
        record["skipped_unreadable"] = len(train.bad) + (len(val.bad) if val is not None else 0)
        record["seconds"] = time.perf_counter() - t0
        state["history"].append(record)
        state["epoch"] = epoch
        state["bad"] = {s.name: s.bad_state() for s in (train, val) if s is not None}
        if on_epoch:
            on_epoch(state, finished())
    session.set_lr(base_lr)
    return state


def train_loop(session, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int | None = None,
               seed: int = 0, progress=None) -> dict:
    """``steps`` optimizer steps on arrays: (N, 3, H, W) images sliced into batches, or (K, B, 3, H, W) batches
    cycled in order (the reference batches validation replays)."""
    if images.ndim == 5:
        batches = [(images[i], labels[i]) for i in range(len(images))]
    else:
        batch_size = min(getattr(session, "batch_size", None) or batch_size or 8, len(images))
        order = np.random.default_rng(seed).permutation(len(images))
        batches = [(images[order[i:i + batch_size]], labels[order[i:i + batch_size]])
                   for i in range(0, len(images) - batch_size + 1, batch_size)]
    losses, seconds = [], []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        losses.append(session.step(x, y))
        seconds.append(time.perf_counter() - t0)
        if progress:
            progress(i + 1, steps, losses[-1])
    return {"session": session, "losses": losses, "step_seconds": seconds}


# -- checkpoints: what a resume may trust ---------------------------------------------------------------

def write_epoch(session, artifacts: str, out: str, state: dict, config: dict, save_outputs) -> None:
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
        trained, extra = save_outputs(session, artifacts, folder)
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
