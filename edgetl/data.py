"""Data sets for training: an ImageFolder on disk, or the built-in ``patterns`` set that needs no download.

    train_ds, val_ds, classes = load_datasets("patterns", resolution=96, seed=0)
    train_ds, val_ds, classes = load_datasets("./flowers", resolution=224)
    pack_uint8_shard("./flowers", resolution=224, dest="shard/")      # uint8 .npy for a device to memory-map

An ImageFolder directory is either ``DIR/<class>/*.jpg`` (split 90/10 into train/val by ``seed``) or
``DIR/train/<class>/...`` with ``DIR/val/`` (or ``DIR/test/``). It is checked up front: a missing
directory, no class folders, an empty class or an unreadable image each raise a
:class:`~edgetl.errors.DataError` that names it.

``patterns`` draws stripes (horizontal, vertical), checkerboards, dots and rings in random colours,
periods and phases, deterministically from (seed, index): a real, learnable 5-class task for demos and
tests that needs no download.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN = "patterns"
VAL_SPLITS = ("val", "valid", "validation", "test")


def train_transform(resolution: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(resolution, scale=(0.6, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def training_transform(resolution: int, augment: str = "standard"):
    try:
        return AUGMENT[augment](resolution)
    except KeyError:
        raise DataError(f"unknown --augment {augment!r}; choose one of: {', '.join(AUGMENT)}") from None


def eval_transform(resolution: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(int(math.ceil(resolution / 0.875)), antialias=True),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


#: the per-image training transform per ``--augment`` choice: "standard" (random resized crop and flip), "flip"
#: (the inputs as evaluated; the trainer mirrors half of them, ``Trainer(flip=True)``, drawn as a device runner's
#: ``--augment flip`` draws them, so both see the same batches), "none" (the inputs as evaluated: fixed, cacheable)
AUGMENT = {"standard": train_transform, "flip": eval_transform, "none": eval_transform}


def preprocessing(resolution: int) -> dict:
    """:func:`eval_transform` as numbers, for a device (or an app) to preprocess exactly as the laptop evaluates:
    what every manifest records, and what the device runners and ``edgetl evaluate`` follow."""
    resize = eval_transform(resolution).transforms[0].size
    return {"resize_shorter_side": resize, "interpolation": "bilinear, antialiased (PIL)", "center_crop": resolution,
            "scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "layout": "NCHW", "channels": "RGB",
            "convert": "RGB (PIL convert: grayscale, RGBA and palette images too)"}


class Patterns(Dataset):
    """Procedurally drawn patterns, one class per pattern; image ``i`` depends only on (seed, i).

    Each image is two random colours in a pattern of random period and phase, under Gaussian noise.
    Texture and orientation are what any conv net picks up first, so the task is learnable even by
    a network whose lower blocks are frozen at random initialisation (the offline default).
    """

    classes = ["stripes_horizontal", "stripes_vertical", "checkerboard", "dots", "rings"]

    def __init__(self, size: int, seed: int = 0, image_size: int = 64, transform=None):
        self.size, self.seed, self.image_size, self.transform = size, seed, image_size, transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        label = index % len(self.classes)
        image = self.draw(label, np.random.default_rng([self.seed, index]))
        return (self.transform(image) if self.transform else image), label

    def draw(self, label: int, rng: np.random.Generator) -> Image.Image:
        s = self.image_size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        period = rng.uniform(6, 16)
        phase = rng.uniform(0, period, 2)
        y, x = (yy + phase[0]) / period, (xx + phase[1]) / period
        name = self.classes[label]
        if name == "stripes_horizontal":
            on = (y % 1) < 0.5
        elif name == "stripes_vertical":
            on = (x % 1) < 0.5
        elif name == "checkerboard":
            on = ((np.floor(x) + np.floor(y)) % 2) == 0
        elif name == "dots":
            on = ((x % 1 - 0.5) ** 2 + (y % 1 - 0.5) ** 2) < 0.09
        else:  # rings around a random centre
            cy, cx = rng.uniform(0, s, 2)
            on = (np.hypot(yy - cy, xx - cx) / period) % 1 < 0.5
        colours = rng.integers(0, 256, (2, 3)).astype(np.float32)
        colours[1] = (colours[0] + rng.uniform(80, 176, 3)) % 256  # keep the two colours apart
        pixels = np.where(on[..., None], colours[0], colours[1]) + rng.normal(0, 20, (s, s, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


class _Transformed(Dataset):
    """A view of a data set with its own transform (train and val share the underlying files)."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image), label


def _checked_loader(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as exc:
        raise DataError(f"cannot read image {path} ({exc}); delete or replace the file") from None


def _check_image_folder(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; pass --data DIR with one sub-folder per class")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"data directory {root} has no class folders; put images in {root}/<class name>/")
    if len(classes) < 2:
        raise DataError(f"data directory {root} has only the class {classes[0].name!r}; training needs at least 2")
    for d in classes:
        files = [p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        if not files:
            raise DataError(f"class folder {d} holds no images ({', '.join(IMG_EXTENSIONS)}); add images or remove it")
        for p in files:
            try:
                with Image.open(p) as im:
                    im.verify()
            except Exception:
                raise DataError(f"cannot read image {p}: not a valid image file; delete or replace it") from None


def _image_folder(root: Path) -> ImageFolder:
    _check_image_folder(root)
    return ImageFolder(str(root), loader=_checked_loader)


def load_datasets(data: str | os.PathLike, resolution: int, seed: int = 0, val_fraction: float = 0.1,
                  builtin_size: int = 1500, augment: str = "standard"):
    """``(train, val, class_names)`` with train/eval transforms at ``resolution`` (``augment``: see ``AUGMENT``)."""
    train_tf = training_transform(resolution, augment)
    if str(data) == BUILTIN:
        train = Patterns(builtin_size, seed=seed, transform=train_tf)
        val = Patterns(max(builtin_size // 5, len(Patterns.classes)), seed=seed + 10_000, transform=eval_transform(resolution))
        return train, val, list(Patterns.classes)
    root = Path(data)
    if (root / "train").is_dir():
        split = next((root / v for v in VAL_SPLITS if (root / v).is_dir()), None)
        if split is None:
            raise DataError(f"{root}/train exists but no {root}/val (or test); add one, or point --data at a class folder")
        train_base, val_base = _image_folder(root / "train"), _image_folder(split)
        if train_base.classes != val_base.classes:
            raise DataError(f"{root}/train and {split} have different class folders; give both the same classes")
        return (_Transformed(train_base, train_tf), _Transformed(val_base, eval_transform(resolution)),
                train_base.classes)
    base = _image_folder(root)
    order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(len(base) * val_fraction))
    return (_Transformed(Subset(base, order[n_val:]), train_tf),
            _Transformed(Subset(base, order[:n_val]), eval_transform(resolution)), base.classes)


def held_out(data: str | os.PathLike, resolution: int, seed: int = 0, class_names: list[str] | None = None,
             builtin_size: int = 1500):
    """``(dataset, class_names)`` of held-out data, with the eval transform: every image of a folder of class
    folders (a test set is not split), the ``val`` (or ``test``) split of ``DIR/train`` + ``DIR/val``, or the
    validation set of ``patterns``. With ``class_names`` (a model's), its classes are matched to them by name and
    its labels given in the model's order; other classes are refused, naming the difference."""
    root = Path(data)
    if str(data) == BUILTIN or (root / "train").is_dir():
        _, val, classes = load_datasets(data, resolution, seed, builtin_size=builtin_size)
    else:
        base = _image_folder(root)
        val, classes = _Transformed(base, eval_transform(resolution)), base.classes
    if class_names is None or list(classes) == list(class_names):
        return val, list(classes)
    if set(classes) != set(class_names):
        missing, extra = sorted(set(class_names) - set(classes)), sorted(set(classes) - set(class_names))
        raise DataError(f"{data} does not hold the model's classes (missing: {', '.join(missing) or 'none'}; not the "
                        f"model's: {', '.join(extra) or 'none'}): give held-out data of the classes "
                        f"{', '.join(class_names)}")
    return _Relabelled(val, [list(class_names).index(c) for c in classes]), list(class_names)


class _Relabelled(Dataset):
    """A data set whose label ``i`` is given as ``order[i]`` (its classes matched to a model's by name)."""

    def __init__(self, base: Dataset, order: list[int]):
        self.base, self.order = base, order

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return image, self.order[label]


def _split_bases(data: str | os.PathLike, seed: int, val_fraction: float | None):
    """``({"train": base, "val": base or None}, class_names)`` of PIL images and labels, for packing."""
    if str(data) == BUILTIN:
        return {"train": Patterns(10**6, seed=seed), "val": None}, list(Patterns.classes)
    root = Path(data)
    if (root / "train").is_dir():
        train = _image_folder(root / "train")
        split = next((root / v for v in VAL_SPLITS if (root / v).is_dir()), None)
        val = _image_folder(split) if split is not None else None
        if val is not None and val.classes != train.classes:
            raise DataError(f"{root}/train and {split} have different class folders; give both the same classes")
        return {"train": train, "val": val}, train.classes
    base = _image_folder(root)
    if not val_fraction:
        return {"train": base, "val": None}, base.classes
    order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(len(base) * val_fraction)))
    return {"train": Subset(base, order[n_val:]), "val": Subset(base, order[:n_val])}, base.classes


def pack_uint8_shard(data: str | os.PathLike, resolution: int, dest: str | os.PathLike, count: int | None = None,
                     seed: int = 0, val_fraction: float | None = None, class_names: list[str] | None = None) -> dict:
    """Write a device shard: ``dest/{train,val}_images.npy`` (N, R, R, 3) uint8, resized and center-cropped as
    :func:`eval_transform` does (the device normalises, as the manifest says), ``*_labels.npy`` (int64) and
    ``shard.json``. A quarter of the float32 bytes, and ``.npy`` so the device memory-maps it. Images are
    written one at a time into the mapped file: packing holds one image in memory, whatever ``count``.

    ``count`` caps each split (a random ``count`` of it, by ``seed``; default: every image). Labels index
    ``class_names`` (a model's classes, matched by folder name; default: the folders' sorted names); a
    folder set that differs raises :class:`DataError` naming the missing and extra classes. Returns shard.json.
    """
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise DataError(f"--val-split is the fraction of the images held out for validation, from 0 to below 1, not "
                        f"{val_fraction}")
    dest = Path(dest)
    bases, found = _split_bases(data, seed, val_fraction)
    classes = list(class_names or found)
    missing, extra = [c for c in classes if c not in found], [c for c in found if c not in classes]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])
        raise DataError(f"the classes in {data} do not match the model's ({'; '.join(parts)}): the model was exported "
                        f"for {', '.join(classes)}; use data with the same class folders")
    remap = np.array([classes.index(c) for c in found], np.int64)
    dest.mkdir(parents=True, exist_ok=True)
    crop = transforms.Compose(eval_transform(resolution).transforms[:2])  # Resize + CenterCrop, on PIL images
    splits = {}
    for name, base in bases.items():
        if base is None or not len(base):
            continue
        n = len(base) if str(data) != BUILTIN else (count or 64)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()[:count]
        images = np.lib.format.open_memmap(dest / f"{name}_images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(order), resolution, resolution, 3))
        labels = np.empty(len(order), np.int64)
        for row, i in enumerate(order):
            image, label = base[i]
            labels[row] = remap[label]
            images[row] = np.asarray(crop(image.convert("RGB")))
        images.flush()
        del images
        np.save(dest / f"{name}_labels.npy", labels)
        splits[name] = len(order)
    meta = {"format": "edgetl.shard/1", "dtype": "uint8", "layout": "NHWC", "resolution": resolution,
            "class_names": classes, "splits": splits,
            "preprocessing": "resized and center-cropped as the manifest says; the device normalises"}
    (dest / "shard.json").write_text(json.dumps(meta, indent=2))
    return meta
