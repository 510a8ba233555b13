"""The laptop trainer and a device runner, given the same images and seed, train on the same batches: the same
images in the same order, mirrored at the same places (``--augment flip``), epoch after epoch."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.data import load_datasets, preprocessing
from edgetl.errors import CacheError
from edgetl.models import create_model
from edgetl.order import epoch_flips, epoch_order
from edgetl.runtime import runner_data
from edgetl.runtime.runner_fit import fit
from edgetl.surgery import apply_policy
from edgetl.trainer import Trainer

from .conftest import make_image_folder

CLASSES = ("stripes_horizontal", "stripes_vertical", "checkerboard")
BATCH, RESOLUTION, EPOCHS = 4, 32, 3


class Recording(Trainer):
    """A trainer that keeps each step's batch instead of stepping."""

    def train_step(self, images, labels, features=False):
        self.seen.append((images.numpy().copy(), labels.numpy().copy()))
        return 0.0, 0


class RunnerRecording:
    """What a runner's ``fit`` needs of a trainer, keeping each step's batch."""

    lr, batch_size = 1e-3, BATCH

    def __init__(self):
        self.seen = []

    def set_lr(self, lr):
        pass

    def features(self, x):
        return x

    def step_features(self, x, y):
        self.seen.append((np.asarray(x).copy(), np.asarray(y).copy()))
        return 0.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``train/`` (3 classes x 7 images: 21, so each epoch drops one short batch) and ``val/``, as a device holds them."""
    root = tmp_path_factory.mktemp("order")
    make_image_folder(root / "train", classes=CLASSES, per_class=7, size=40)
    make_image_folder(root / "val", classes=CLASSES, per_class=2, size=40)
    return root


def laptop_batches(folder, seed: int, augment: str):
    train, val, classes = load_datasets(folder, RESOLUTION, seed, augment=augment)
    model = apply_policy(create_model("mobilenet_v3_small", num_classes=len(classes)), "last")
    trainer = Recording(model, train, None, epochs=EPOCHS, batch_size=BATCH, seed=seed, flip=augment == "flip")
    trainer.seen = []
    trainer.fit()
    return trainer.seen, classes


def device_batches(folder, seed: int, augment: str, classes):
    manifest = {"class_names": classes, "preprocessing": preprocessing(RESOLUTION)}
    train, _, _ = runner_data.device_folder(str(folder), manifest, seed=seed)
    runner = RunnerRecording()
    fit(runner, train, None, epochs=EPOCHS, batch_size=BATCH, seed=seed, augment=augment)
    return runner.seen


@pytest.mark.parametrize("seed,augment", [(0, "flip"), (7, "flip"), (3, "none")])
def test_laptop_and_device_see_the_same_batches(folder, seed, augment):
    laptop, classes = laptop_batches(folder, seed, augment)
    device = device_batches(folder, seed, augment, classes)
    assert len(laptop) == len(device) == EPOCHS * (21 // BATCH)
    for step, ((x, y), (dx, dy)) in enumerate(zip(laptop, device)):
        np.testing.assert_array_equal(y, dy, err_msg=f"step {step}: labels")
        np.testing.assert_allclose(x, dx, rtol=0, atol=1e-6, err_msg=f"step {step}: images")
    per = len(laptop) // EPOCHS  # the check has teeth: each epoch draws its own order
    assert not np.array_equal(np.concatenate([y for _, y in laptop[:per]]), np.concatenate([y for _, y in laptop[per:2 * per]]))
    if augment == "flip":
        flips = epoch_flips(seed, 0, 21)[:BATCH]
        order = epoch_order(seed, 0, 21)[:BATCH]
        train, _, _ = load_datasets(folder, RESOLUTION, seed, augment="none")
        for k in range(BATCH):
            image = train[int(order[k])][0].numpy()
            np.testing.assert_array_equal(laptop[0][0][k], image[:, :, ::-1] if flips[k] else image)
        assert 0 < epoch_flips(seed, 0, 400).mean() < 1


def test_order_draws_are_the_runners(folder):
    """The module's draws are numpy's, as written in the runner's loop: order [seed, epoch], flips [seed, epoch, 1]."""
    rng = np.random.default_rng([5, 3, 1])
    np.testing.assert_array_equal(epoch_flips(5, 2, 50), np.array([rng.random() < 0.5 for _ in range(50)]))
    np.testing.assert_array_equal(epoch_order(5, 2, 50), np.random.default_rng([5, 3]).permutation(50))


def test_flip_cannot_use_the_feature_cache(folder):
    train, _, classes = load_datasets(folder, RESOLUTION, 0, augment="flip")
    model = apply_policy(create_model("mobilenet_v3_small", num_classes=len(classes)), "ft:2")
    with pytest.raises(CacheError, match="flip=True"):
        Trainer(model, train, None, batch_size=BATCH, flip=True, cache_features=True)


def test_resumed_epochs_draw_the_same_batches(folder, tmp_path):
    """Each epoch's draws depend on (seed, epoch) only: epochs 2-3 of a run equal those of a run resumed after 1."""
    whole, classes = laptop_batches(folder, 4, "flip")
    train, _, _ = load_datasets(folder, RESOLUTION, 4, augment="flip")
    model = apply_policy(create_model("mobilenet_v3_small", num_classes=len(classes)), "last")
    first = Recording(model, train, None, epochs=1, batch_size=BATCH, seed=4, flip=True, out_dir=tmp_path / "run")
    first.seen = []
    first.fit()
    rest = Recording(model, train, None, epochs=EPOCHS, batch_size=BATCH, seed=4, flip=True, out_dir=tmp_path / "run",
                     resume=True)
    rest.seen = []
    rest.fit()
    assert len(rest.seen) == 2 * (21 // BATCH)
    for (x, y), (wx, wy) in zip(rest.seen, whole[21 // BATCH :]):
        np.testing.assert_array_equal(y, wy)
        np.testing.assert_array_equal(x, wx)
