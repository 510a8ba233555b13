"""The device runners' data: images that live on the device, pushed uint8 shards, and the old float32 shards.

    train, val, info = open_data(manifest, device_data="/home/pi/captures", val_split=0.1, seed=0)
    for x, y, real in batches(train, order, batch_size=8, pad=False): ...   # x: (B, 3, R, R) float32

Copied beside ``runner_common.py`` onto devices: it imports numpy, and Pillow only when it decodes an image.
A split holds what it needs to load image ``i`` on demand (a file path, or a row of a memory-mapped
array), never the images themselves: memory does not grow with the number of images.

Preprocessing is the laptop's evaluation transform (``edgetl.data.eval_transform``), step for step as
torchvision runs it on a PIL image: ``convert("RGB")``, Resize of the shorter side with PIL's antialiased
bilinear filter (torchvision calls ``PIL.Image.resize``), CenterCrop (torchvision's rounding), ToTensor
(``uint8 / 255`` in float32) and Normalize, with the numbers the export's manifest gives.

Pushed shards (``edgetl deploy --data DIR``) are a directory of ``.npy`` files: ``train_images.npy``
(N, R, R, 3) uint8, already resized and cropped, ``train_labels.npy``, optionally ``val_*``, and
``shard.json``; ``np.load(mmap_mode="r")`` maps them and the runner normalises each batch.
"""

from __future__ import annotations

import json
import mmap
import os
import sys

import numpy as np

if __package__:  # edgetl.runtime.runner_data
    from .runner_io import RunnerError
else:  # beside the runner on a device
    from runner_io import RunnerError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
VAL_SPLITS = ("val", "valid", "validation", "test")
SHARD_JSON = "shard.json"
#: unreadable files named in the metrics (the count is complete)
NAMED_UNREADABLE = 20


def refuse(message: str):
    """Raise the runners' one-line error."""
    raise RunnerError(message)


def pillow():
    try:
        from PIL import Image
    except ImportError:
        refuse(f"this device's Python ({sys.executable}) lacks Pillow for decoding images on the device: "
               f"run `edgetl devices setup DEVICE`")
    return Image


# -- preprocessing -------------------------------------------------------------------------------------

def resize_crop(image, prep: dict):
    """torchvision's Resize(shorter side) and CenterCrop on a PIL image, as ``eval_transform`` runs them."""
    Image = pillow()
    size, crop = int(prep["resize_shorter_side"]), int(prep["center_crop"])
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision truncates the long side
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):  # torchvision returns the image untouched when it has the size already
        image = image.resize((new_w, new_h), Image.BILINEAR)  # antialiased in PIL, as torchvision's PIL path
    w, h = image.size
    if crop > w or crop > h:  # torchvision pads with zeros before it crops
        left, top = (crop - w) // 2 if crop > w else 0, (crop - h) // 2 if crop > h else 0
        padded = Image.new(image.mode, (max(w, crop), max(h, crop)))
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def normalise(pixels: np.ndarray, prep: dict) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32: ToTensor then Normalize, in torchvision's float32 order."""
    x = np.moveaxis(pixels, -1, -3).astype(np.float32) / np.float32(255)
    mean = np.asarray(prep["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(prep["std"], np.float32).reshape(3, 1, 1)
    return (x - mean) / std


def load_image(path: str, prep: dict) -> np.ndarray:
    """One image file -> (3, R, R) float32, as the laptop preprocesses it; raises on an unreadable file."""
    Image = pillow()
    with open(path, "rb") as f:
        image = Image.open(f).convert("RGB")  # grayscale, RGBA, palette: converted as the laptop's loader does
    return normalise(np.asarray(resize_crop(image, prep)), prep)


# -- splits --------------------------------------------------------------------------------------------

class FolderSplit:
    """Image files on the device, decoded on demand; unreadable ones are remembered by index."""

    def __init__(self, name: str, paths: list[str], labels: np.ndarray, prep: dict, root: str):
        self.name, self.paths, self.labels, self.prep, self.root = name, paths, labels, prep, root
        self.bad: dict[int, str] = {}  # index -> why it could not be read

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray | None:
        if i in self.bad:
            return None
        pillow()  # a missing Pillow is the device's fault, not the file's
        try:
            return load_image(self.paths[i], self.prep)
        except Exception as exc:  # any decoder failure means: skip the file and count it
            self.bad[i] = f"{type(exc).__name__}: {exc}"
            return None

    def release(self) -> None:
        pass

    def describe_bad(self) -> list[str]:
        return [f"{os.path.relpath(self.paths[i], self.root)} ({why})" for i, why in sorted(self.bad.items())]

    def bad_state(self) -> dict[str, str]:
        """The unreadable files by path (a resume finds them again if files were added meanwhile)."""
        return {self.paths[i]: why for i, why in self.bad.items()}

    def restore_bad(self, saved: dict[str, str]) -> None:
        index = {p: i for i, p in enumerate(self.paths)}
        self.bad.update({index[p]: why for p, why in saved.items() if p in index})


class ArraySplit:
    """Images in an array: uint8 (N, R, R, 3) normalised per image, or float32 (N, 3, R, R) preprocessed.

    A memory-mapped array's pages are dropped from this process after each read: the file stays in the page
    cache, and the runner's resident memory does not grow with the shard.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, prep: dict):
        self.name, self.images, self.labels, self.prep = name, images, np.asarray(labels, np.int64), prep
        self.bad: dict[int, str] = {}
        self.map = getattr(images, "_mmap", None)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:
        row = np.array(self.images[i])
        return normalise(row, self.prep) if row.dtype == np.uint8 else row.astype(np.float32)

    def release(self) -> None:
        """Drop the mapped pages read so far from this process (they stay cached by the kernel)."""
        if self.map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED)

    def describe_bad(self) -> list[str]:
        return []

    def bad_state(self) -> dict[str, str]:
        return {}

    def restore_bad(self, saved: dict[str, str]) -> None:
        pass


def batches(split, order, batch_size: int, pad: bool = False, flip=None):
    """Batches ``(x, y, real)`` of ``batch_size`` readable images in ``order``; unreadable images are skipped
    and the batch filled from the next ones. The last, short batch is dropped, or with ``pad`` repeated up to
    ``batch_size`` (``real`` images count). ``flip``: a numpy Generator that flips each image with p = 0.5."""
    xs, ys = [], []
    for i in order:
        x = split.load(int(i))
        if x is None:
            continue
        if flip is not None and flip.random() < 0.5:
            x = x[:, :, ::-1]
        xs.append(x)
        ys.append(split.labels[i])
        if len(xs) == batch_size:
            split.release()
            yield (*_take(xs, ys), batch_size)
    split.release()
    if xs and pad:
        real = len(xs)
        xs += [xs[0]] * (batch_size - real)
        ys += [ys[0]] * (batch_size - real)
        yield (*_take(xs, ys), real)


def _take(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    """The batch of ``xs`` and ``ys``, emptying both: while the caller trains on it, the generator holds neither
    the images nor the batch."""
    batch = np.stack(xs), np.asarray(ys, np.int64)
    xs.clear()
    ys.clear()
    return batch


# -- sources -------------------------------------------------------------------------------------------

def _class_dirs(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _files(class_root: str) -> list[str]:
    found = []
    for d, subdirs, names in os.walk(class_root, followlinks=True):
        subdirs.sort()
        found += [os.path.join(d, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _folder(root: str, split: str, classes: list[str], prep: dict, top: str, allow_missing: bool = False) -> FolderSplit:
    found = _class_dirs(root)
    if not found:
        refuse(f"{top} is not an ImageFolder: {root} holds no class folders; put the images in {root}/<class>/ "
               f"(this model's classes: {', '.join(classes)})")
    missing, extra = [c for c in classes if c not in found], [c for c in found if c not in classes]
    if extra or (missing and not allow_missing):
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])
        refuse(f"the class folders in {root} do not match the model's classes ({'; '.join(parts)}): the model was "
               f"exported for {', '.join(classes)}; rename or move the folders, or export a model for these classes")
    paths, labels = [], []
    for name in found:
        files = _files(os.path.join(root, name))
        paths += files
        labels += [classes.index(name)] * len(files)
    return FolderSplit(split, paths, np.asarray(labels, np.int64), prep, top)


def labelled_folder(path: str, classes: list[str], prep: dict) -> tuple[FolderSplit, list[str]]:
    """``(split, notes)``: every image of an ImageFolder ``PATH/<class>/*`` to evaluate on, labelled by matching its
    class folders to ``classes`` by name. A folder of a class the model does not know is refused; a class without
    a folder is allowed (an evaluation on some of the classes) and said in a note."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        refuse(f"{path} is not a directory: give an ImageFolder of labelled images, PATH/<class>/*.jpg, with the "
               f"model's class names ({', '.join(classes)})")
    split = _folder(path, "eval", classes, prep, path, allow_missing=True)
    if not len(split):
        refuse(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders; add images there")
    missing = [c for c in classes if c not in _class_dirs(path)]
    notes = [f"{path} has no folder for {', '.join(missing)}: those classes are not evaluated"] if missing else []
    return split, notes


def _subset(split: FolderSplit, name: str, index: np.ndarray) -> FolderSplit:
    return FolderSplit(name, [split.paths[i] for i in index], split.labels[index], split.prep, split.root)


def device_folder(path: str, manifest: dict, val_split: float | None = None, seed: int = 0):
    """``(train, val or None, notes)`` from an ImageFolder on this device: ``PATH/<class>/*`` (``val_split`` of it
    held out, chosen by ``seed``) or ``PATH/train`` with ``PATH/val`` (or valid, validation, test)."""
    classes, prep = list(manifest["class_names"]), manifest["preprocessing"]
    if val_split is not None and not 0 <= val_split < 1:
        refuse(f"--val-split is the fraction of the images held out for validation, from 0 to below 1, not {val_split}")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        refuse(f"{path} does not exist on this device: pass --device-data with the path of an ImageFolder there "
               f"(PATH/<class>/*.jpg, or PATH/train and PATH/val)")
    if not os.path.isdir(path):
        refuse(f"{path} is not a directory: --device-data takes an ImageFolder (PATH/<class>/*.jpg, or PATH/train "
               f"and PATH/val)")
    notes = []
    if os.path.isdir(os.path.join(path, "train")):
        train = _folder(os.path.join(path, "train"), "train", classes, prep, path)
        split = next((os.path.join(path, v) for v in VAL_SPLITS if os.path.isdir(os.path.join(path, v))), None)
        val = _folder(split, "val", classes, prep, path) if split else None
        if split and val_split:
            notes.append(f"{path} has its own validation folder ({os.path.basename(split)}): --val-split is not used")
    else:
        train, val = _folder(path, "train", classes, prep, path), None
    if not len(train) and not (val and len(val)):
        refuse(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders; add images there")
    if val is None and val_split:
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, int(round(len(train) * val_split)))
        train, val = _subset(train, "train", np.sort(order[n_val:])), _subset(train, "val", np.sort(order[:n_val]))
    if not len(train):
        refuse(f"{path} holds no training images (all {len(val)} are in the validation split); add images to the "
               f"class folders or lower --val-split")
    return train, (val if val is not None and len(val) else None), notes


def pushed_shard(path: str, manifest: dict):
    """``(train, val or None)`` from a shard directory ``edgetl deploy --data`` pushed: memory-mapped ``.npy``."""
    with open(os.path.join(path, SHARD_JSON)) as f:
        meta = json.load(f)
    if meta.get("class_names") not in (None, manifest["class_names"]):
        refuse(f"the shard in {path} holds the classes {', '.join(meta['class_names'])}, not the model's "
               f"({', '.join(manifest['class_names'])}): deploy again with data of the model's classes")
    splits = []
    for name in ("train", "val"):
        file = os.path.join(path, f"{name}_images.npy")
        if os.path.exists(file):
            images = np.load(file, mmap_mode="r", allow_pickle=False)
            _check_shape(images, manifest, file)
            splits.append(ArraySplit(name, images, np.load(os.path.join(path, f"{name}_labels.npy"), allow_pickle=False),
                                     manifest["preprocessing"]))
        else:
            splits.append(None)
    if splits[0] is None or not len(splits[0]):
        refuse(f"the shard in {path} holds no training images: deploy again with --data DIR of images")
    return splits[0], splits[1]


def _check_shape(images: np.ndarray, manifest: dict, what: str) -> None:
    c, h, w = manifest["input"]["shape"][1:]
    ok = (images.ndim == 4 and (tuple(images.shape[1:]) == (h, w, c) if images.dtype == np.uint8
                                 else tuple(images.shape[1:]) == (c, h, w)))
    if not ok:
        refuse(f"the data shard's images are {tuple(images.shape)}, but the model takes (N, {c}, {h}, {w}) float32 "
               f"(or (N, {h}, {w}, {c}) uint8) with int64 labels: pack the shard at the model's resolution "
               f"(`edgetl deploy --data DIR` does)")


def npz_shard(path: str, manifest: dict):
    """``(train, None)`` from a ``.npz`` with ``images`` (and ``labels``): the float32 shards of earlier
    versions, (N, 3, R, R) or reference batches (K, B, 3, R, R); or uint8 (N, R, R, 3)."""
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data or "labels" not in data:
            refuse(f"the data shard's images are missing, but the model takes (N, "
                   f"{', '.join(map(str, manifest['input']['shape'][1:]))}) float32 with int64 labels: pack the shard "
                   f"at the model's resolution (`edgetl deploy --data DIR` does)")
        try:
            images, labels = data["images"], data["labels"]
        except ValueError:  # object arrays: numpy would have to unpickle them, which could run code
            refuse(f"the data shard {path} holds pickled objects, not numeric arrays, and is not opened: pack it "
                   f"with `edgetl deploy --data DIR` or `edgetl fleet shard`")
    if images.ndim == 5:  # reference batches (K, B, 3, H, W)
        images, labels = images.reshape(-1, *images.shape[2:]), labels.reshape(-1)
    _check_shape(images, manifest, path)
    return ArraySplit("train", images, labels, manifest["preprocessing"]), None


def open_data(manifest: dict, data: str | None = None, device_data: str | None = None,
              val_split: float | None = None, seed: int = 0):
    """``(train, val, info)``: the splits the runner trains and evaluates on, and what the metrics say of them
    (``info['notes']``: what a person should know, e.g. an option that does not apply)."""
    if device_data:
        pillow()  # one clear line before anything else when the device cannot decode images
        train, val, notes = device_folder(device_data, manifest, val_split, seed)
        info = {"source": "device", "path": os.path.abspath(os.path.expanduser(device_data)), "notes": notes}
    elif data and os.path.isdir(data):
        train, val = pushed_shard(data, manifest)
        info = {"source": "shard", "path": data, "format": "uint8 npy, memory-mapped"}
    else:
        train, val = npz_shard(data, manifest)
        info = {"source": "shard", "path": data, "format": "npz"}
    info.update(train_images=len(train), val_images=len(val) if val else 0)
    return train, val, info


def unreadable(*splits) -> tuple[int, list[str]]:
    """How many files could not be read, and the first of them by name (with why)."""
    named = [line for s in splits if s is not None for line in s.describe_bad()]
    return len(named), named[:NAMED_UNREADABLE]


def steps_per_epoch(split, batch_size: int) -> int:
    return (len(split) - len(split.bad)) // batch_size
