"""Training on the device's own images: real CIFAR-10 JPEGs in an ImageFolder on the device side, decoded and
streamed there by the runner (numpy and Pillow), never copied back; and laptop data pushed as uint8 shards.

The runner runs as a device runs it: the script beside the artifacts, in a fresh process, with torch,
TensorFlow and edgetl blocked. Deploys go through ``local://`` (the device's Python is the first ``python3``
on PATH, this environment's) and, in the slow stage, the loopback sshd.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.data import eval_transform, pack_uint8_shard, preprocessing
from edgetl.devices.bundle import make_bundle
from edgetl.devices.deploy import deploy
from edgetl.exporters import export
from edgetl.runtime import runner_data

from .exportutil import blocked_env, make_run

CIFAR_TAR = Path(__file__).parents[2] / "shared/data/cifar10-subset.tar"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RESOLUTION, BATCH = 32, 8
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def _missing(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cifar(tmp_path_factory) -> Path:
    """CIFAR-10's ImageFolder (cifar10/{train,test}/<class>/NNNN.jpg), unpacked from ../shared/data."""
    if not CIFAR_TAR.is_file():
        _missing(f"{CIFAR_TAR} is absent: the CIFAR-10 subset lives in ../shared/data beside the repository")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10"


def take(cifar: Path, dest: Path, per_class: dict[str, int], classes=CLASSES, offset: int = 0) -> Path:
    """``dest/<split>/<class>/`` with ``per_class[split]`` real CIFAR JPEGs of each class (split: train, test)."""
    for split, n in per_class.items():
        for c in classes:
            (dest / split / c).mkdir(parents=True, exist_ok=True)
            for f in sorted((cifar / split / c).iterdir())[offset:offset + n]:
                shutil.copy(f, dest / split / c / f.name)
    return dest


def odd_images(cifar: Path, folder: Path) -> dict[str, Path]:
    """Real CIFAR pictures saved as a user's camera roll may hold them: grayscale, RGBA, palette, other sizes
    and aspect ratios, and one truncated file."""
    src = Image.open(sorted((cifar / "train" / "cat").iterdir())[0]).convert("RGB")
    made = {"gray": ("cat", "gray.jpg", src.convert("L")), "rgba": ("dog", "rgba.png", src.convert("RGBA")),
            "palette": ("frog", "palette.png", src.convert("P")),
            "wide": ("ship", "wide.jpg", src.resize((640, 300), Image.BICUBIC)),
            "tall": ("truck", "tall.jpeg", src.resize((45, 170), Image.BICUBIC)),
            "small": ("bird", "small.JPG", src.resize((20, 20), Image.BICUBIC))}
    paths = {}
    for key, (cls, name, image) in made.items():
        paths[key] = folder / cls / name
        image.save(paths[key])
    whole = (folder / "horse" / "whole.jpg")
    src.resize((200, 150)).save(whole, quality=95)
    paths["truncated"] = folder / "horse" / "truncated.jpg"
    paths["truncated"].write_bytes(whole.read_bytes()[:900])  # a transfer cut short
    whole.unlink()
    return paths


@pytest.fixture(scope="module")
def cifar_export(tmp_path_factory):
    """A TFLite export for CIFAR-10's classes at 32x32, batch 8 (the Raspberry Pi route)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    root = tmp_path_factory.mktemp("cifar-export")
    run = make_run(root / "run", "mobilenet_v3_small", "mobiletl:2", resolution=RESOLUTION, optimizer="sgd", lr=0.05,
                   class_names=CLASSES)
    export(run, "tflite", root / "art", batch_size=BATCH, validate=False)
    return root / "art"


def run_runner(art: Path, tmp_path: Path, *args, check: bool = True, env: dict | None = None):
    """The artifact's runner, as a device runs it (torch, TensorFlow and edgetl blocked)."""
    proc = subprocess.run([sys.executable, str(art / "tflite_runner.py"), "--artifacts", str(art), "--threads", "1",
                           *map(str, args)], env=env or blocked_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    return proc


def refused(proc) -> str:
    """The one line a runner refused its input with (exit status 2, no traceback)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


@pytest.fixture
def local_device(monkeypatch, tmp_path):
    """``local://`` whose Python is this environment's (first on PATH: the device's ``python3``)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return f"local://{tmp_path / 'device'}"


def images_in(root: Path) -> list[Path]:
    """Files under ``root`` that are images, by name or by content (JPEG, PNG magic bytes)."""
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            head = p.read_bytes()[:8]
            if p.suffix.lower() in IMAGE_SUFFIXES - {".png"} or head[:3] == b"\xff\xd8\xff" or head == b"\x89PNG\r\n\x1a\n":
                found.append(p)
    return [p for p in found if p.name != "loss.png"]  # the plot deploy draws on the laptop


# -- preprocessing parity ----------------------------------------------------------------------------

def test_preprocessing_matches_torchvision_on_real_jpegs(cifar, tmp_path):
    """The runner's Pillow + numpy preprocessing is the laptop's eval transform (torchvision) on the same files:
    real JPEGs at several sizes and aspect ratios, grayscale, RGBA and palette images, at three resolutions."""
    sources = [sorted((cifar / "train" / c).iterdir())[0] for c in CLASSES[:4]]
    files = []
    for k, src in enumerate(sources):
        image = Image.open(src).convert("RGB")
        for w, h in [(32, 32), (640, 480), (333, 1000), (37, 37), (20, 50), (1001, 999), (257, 256)]:
            mode, suffix = [("RGB", ".jpg"), ("L", ".jpg"), ("RGBA", ".png"), ("P", ".png")][k]
            files.append(tmp_path / f"{k}_{w}x{h}{suffix}")
            image.resize((w, h), Image.BICUBIC).convert(mode).save(files[-1])
    files += [sorted((cifar / "test" / c).iterdir())[1] for c in CLASSES]  # untouched CIFAR JPEGs
    worst = 0.0
    for resolution in (32, 64, 224):
        prep, laptop = preprocessing(resolution), eval_transform(resolution)
        for f in files:
            with open(f, "rb") as fh:
                expected = laptop(Image.open(fh).convert("RGB")).numpy()
            got = runner_data.load_image(str(f), prep)
            assert got.shape == expected.shape == (3, resolution, resolution) and got.dtype == np.float32
            # in pixel units (before normalisation): the bound is 1/255
            worst = max(worst, float(np.max(np.abs(got - expected) * np.array(prep["std"])[:, None, None])))
    print(f"preprocessing parity: max |runner - torchvision| = {worst:.3g} pixel units over {len(files)} files x 3 "
          f"resolutions")
    assert worst <= 1 / 255


# -- the runner on device data: bad input, memory, resume --------------------------------------------

def test_runner_refuses_bad_device_data_in_one_line(cifar_export, cifar, tmp_path):
    art = cifar_export
    cases = {}
    cases["missing"] = tmp_path / "nowhere"
    (tmp_path / "afile").write_text("not a folder")
    cases["file"] = tmp_path / "afile"
    (tmp_path / "flat").mkdir()
    shutil.copy(sorted((cifar / "train" / "cat").iterdir())[0], tmp_path / "flat" / "a.jpg")
    cases["no_classes"] = tmp_path / "flat"
    for c in CLASSES:
        (tmp_path / "empty" / c).mkdir(parents=True)
        (tmp_path / "empty" / c / "notes.txt").write_text("no images here")
        (tmp_path / "broken" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "broken" / c / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(200))
    cases["no_images"], cases["unreadable"] = tmp_path / "empty", tmp_path / "broken"
    expected = {"missing": "does not exist on this device: pass --device-data with the path of an ImageFolder",
                "file": "is not a directory: --device-data takes an ImageFolder",
                "no_classes": "is not an ImageFolder: .* holds no class folders; put the images in",
                "no_images": r"holds no images \(.jpg, .jpeg, .png",
                "unreadable": "none of the 20 training images could be read .*: replace or delete the files"}
    for key, path in cases.items():
        line = refused(run_runner(art, tmp_path, "--device-data", path, "--epochs", 1, "--out", tmp_path / key,
                                  check=False))
        assert re.search(expected[key], line), (key, line)
        assert not (tmp_path / key / "progress.json").exists() and not (tmp_path / key / "params.npz").exists()
    # a device without Pillow: one line with the fix (Pillow blocked as torch is)
    env = blocked_env(tmp_path)
    (tmp_path / "block" / "PIL").mkdir()
    (tmp_path / "block" / "PIL" / "__init__.py").write_text("raise ImportError('no Pillow here')\n")
    line = refused(run_runner(art, tmp_path, "--device-data", cases["unreadable"], "--epochs", 1, "--out",
                              tmp_path / "nopil", check=False, env=env))
    assert "lacks Pillow for decoding images on the device: run `edgetl devices setup DEVICE`" in line


def test_class_mismatch_is_refused_with_the_lists(cifar_export, cifar, local_device, tmp_path):
    data = take(cifar, tmp_path / "captures", {"train": 2}, classes=CLASSES[:8])  # no ship, no truck ...
    (data / "train" / "dog").rename(data / "train" / "puppy")  # ... and a class the model does not know
    result = CliRunner().invoke(main, ["deploy", str(cifar_export), "--device", local_device, "--device-data",
                                       str(data), "--epochs", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: the runner failed on local://") and "do not match the model's classes" in line
    assert "missing dog, ship, truck; extra puppy" in line and "rename or move the folders" in line
    assert not (tmp_path / "out").exists()


def test_runner_memory_does_not_grow_with_the_number_of_images(cifar_export, cifar, tmp_path):
    """Peak RSS of one epoch on 100 and on 1,000 device images (the same steps' worth of memory per batch)."""
    peaks = {}
    for n in (100, 1000):
        data = take(cifar, tmp_path / f"d{n}", {"train": n // 10})
        run_runner(cifar_export, tmp_path, "--device-data", data, "--epochs", 1, "--out", tmp_path / f"o{n}")
        metrics = json.loads((tmp_path / f"o{n}" / "metrics.json").read_text())
        assert metrics["data"]["train_images"] == n and metrics["steps"] == n // BATCH
        peaks[n] = metrics["peak_rss_bytes"]
    print(f"peak RSS: {peaks[100] / 2**20:.1f} MiB with 100 images, {peaks[1000] / 2**20:.1f} MiB with 1,000")
    assert abs(peaks[1000] - peaks[100]) < 20 * 2**20


def _params(out: Path) -> dict:
    with np.load(out / "params.npz") as z:
        return {k: z[k] for k in z.files}


def interrupt(command: list[str], tmp_path: Path) -> None:
    """Run a runner and kill it (SIGKILL, by its pid) when it prints epoch 2's line: epoch 1's checkpoint is in
    force by then, and epoch 2's may be."""
    proc = subprocess.Popen(command, env=blocked_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 2/"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (Path(command[-1]) / "metrics.json").exists()


def test_interrupted_run_resumes_from_the_last_checkpoint(cifar_export, cifar, tmp_path):
    """Killed after an epoch's checkpoint, the same command continues from it and ends where an uninterrupted run
    ends: the same losses and the same weights."""
    data = take(cifar, tmp_path / "captures", {"train": 24, "test": 2})
    args = ["--device-data", data, "--epochs", 4, "--augment", "flip", "--seed", 3, "--checkpoint-every", 0]
    run_runner(cifar_export, tmp_path, *args, "--out", tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert len(whole["epochs"]) == 4 and all(e["val_images"] == 20 for e in whole["epochs"])

    out = tmp_path / "cut"
    interrupt([sys.executable, str(cifar_export / "tflite_runner.py"), "--artifacts", str(cifar_export), "--threads",
               "1", *map(str, args), "--out", str(out)], tmp_path)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["complete"] is False and progress["epoch"] in (1, 2)
    resumed = run_runner(cifar_export, tmp_path, *args, "--out", out)
    assert f"resume epoch {progress['epoch']} " in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == progress["epoch"]
    assert metrics["losses"] == pytest.approx(whole["losses"], rel=1e-6, abs=1e-6)
    assert [e["val_acc"] for e in metrics["epochs"]] == [e["val_acc"] for e in whole["epochs"]]
    a, b = _params(out), _params(tmp_path / "whole")
    assert all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert not (out / "checkpoints").exists()  # a finished run keeps only its results


def test_a_second_runner_in_the_same_out_is_refused(cifar_export, cifar, tmp_path):
    """While one runner trains in a directory (here: this process holds its lock), another is refused in one line:
    two would write the same checkpoints."""
    import fcntl

    data = take(cifar, tmp_path / "captures", {"train": 1})
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = refused(run_runner(cifar_export, tmp_path, "--device-data", data, "--steps", 1, "--out", tmp_path / "out",
                                  check=False))
    assert "another runner is training in" in line and "run the same command to continue" in line
    run_runner(cifar_export, tmp_path, "--device-data", data, "--steps", 1, "--out", tmp_path / "out")  # lock released


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(cifar_export, cifar, tmp_path):
    """A tmpfs (in a private mount namespace) with room for one checkpoint but not two: the second epoch's
    checkpoint fails with one line; the first stays in force, and with more room the same command resumes."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        _missing("a private mount namespace (unshare -m, root) is needed to fill a small disk")
    data = take(cifar, tmp_path / "captures", {"train": 2})
    args = ["--device-data", data, "--epochs", 3, "--checkpoint-every", 0]
    run_runner(cifar_export, tmp_path, *args, "--out", tmp_path / "sized")
    one = sum((tmp_path / "sized" / n).stat().st_size for n in ("checkpoint.npz", "params.npz"))
    runner = (f"{sys.executable} {cifar_export / 'tflite_runner.py'} --artifacts {cifar_export} --threads 1 "
              f"{' '.join(map(str, args))} --out {tmp_path / 'disk'}")
    script = (f"mount -t tmpfs -o size={int(one * 1.5) // 1024}k tmpfs {tmp_path / 'disk'} && "
              f"{{ {runner}; echo first=$?; }} && cat {tmp_path / 'disk'}/progress.json && "
              f"echo && echo dirs=$(ls {tmp_path / 'disk'}/checkpoints) && "
              f"mount -o remount,size={one * 4 // 1024}k {tmp_path / 'disk'} && {{ {runner}; echo second=$?; }} && "
              f"cat {tmp_path / 'disk'}/metrics.json")
    (tmp_path / "disk").mkdir()
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=blocked_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert "first=2" in proc.stdout and "second=0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error: "))
    assert "the disk filled while writing results in" in line and "resumes from epoch 1" in line
    progress = json.loads(proc.stdout.split("first=2", 1)[1].strip().splitlines()[0])
    assert progress["epoch"] == 1 and progress["checkpoint"].startswith("checkpoints/epoch-0001/")
    assert "dirs=epoch-0001\n" in proc.stdout  # the half-written epoch 2 was removed, its space given back
    metrics = json.loads(proc.stdout.split("second=0", 1)[1])
    assert metrics["resumed_from_epoch"] == 1 and len(metrics["epochs"]) == 3


# -- deploy: device data never leaves; laptop data as uint8 shards ---------------------------------------

def test_deploy_trains_on_device_images_that_never_leave(cifar_export, cifar, local_device, tmp_path):
    data = take(cifar, tmp_path / "captures", {"train": 6, "test": 2})  # lives on the device's side only
    odd = odd_images(cifar, data / "train")
    out = tmp_path / "laptop" / "result"
    result = CliRunner().invoke(main, ["deploy", str(cifar_export), "--device", local_device, "--device-data",
                                       str(data), "--epochs", "2", "--augment", "flip", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "epoch 2/2 on the device" in result.output and "val acc" in result.output
    assert "images stayed on the device" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["images_left_device"] is False and "stayed on the device" in report["note"]
    d = report["data"]
    assert d["source"] == "device" and d["path"] == str(data)
    assert d["train_images"] == 60 + len(odd) and d["val_images"] == 20
    # the truncated file is skipped and named; grayscale, RGBA, palette and odd sizes are converted and used
    assert d["skipped_unreadable"] == 1 and d["unreadable"][0].startswith("train/horse/truncated.jpg (")
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert all(0 <= e["val_acc"] <= 1 and e["val_images"] == 20 for e in report["epochs"])
    assert report["steps"] == 2 * ((60 + len(odd) - 1) // BATCH)
    # nothing on the laptop side holds an image: only metrics, weights, checkpoint, the export's manifest, report and
    # the plot came back
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "loss.png", "manifest.json", "metrics.json",
                                                     "params.npz", "report.json"]
    assert images_in(tmp_path / "laptop") == []
    assert not json.loads((out / "metrics.json").read_text())["torch_imported"]


def test_deploy_refuses_a_device_without_pillow_before_pushing(cifar_export, adb_peer, tmp_path):
    """The probe tells the device's packages; device data without Pillow there is one line with the fix."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\ncat > /dev/null\necho python=3.11.2\necho runtime.numpy=1.26.4\n"
                                  "echo runtime.ai-edge-litert=2.3.0\n")
    (fake / "python3").chmod(0o755)
    _, uri = adb_peer(python=None, env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})
    result = CliRunner().invoke(main, ["deploy", str(cifar_export), "--device", uri, "--device-data", "/sdcard/DCIM",
                                       "--epochs", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"lacks Pillow for decoding images on the device: run `edgetl devices setup {uri}`" in result.output
    assert not list((tmp_path / "android0").rglob("bundles/*"))  # refused before anything was pushed


def test_bundle_of_an_old_artifact_dir_brings_the_current_runner(cifar_export, cifar, tmp_path):
    """An export made before runner_data.py existed still deploys device data: the bundle carries the runner files
    of this edgetl."""
    old = tmp_path / "old-art"
    shutil.copytree(cifar_export, old)
    (old / "runner_data.py").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["runner_data.py"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    bundle = make_bundle(old)
    assert {"tflite_runner.py", "runner_common.py", "runner_data.py"} <= set(bundle.files)
    runtime = Path(runner_data.__file__).parent
    for name in ("tflite_runner.py", "runner_common.py", "runner_data.py"):
        assert (bundle.root / name).read_bytes() == (runtime / name).read_bytes()
    data = take(cifar, tmp_path / "captures", {"train": 1})
    run_runner(bundle.root, tmp_path, "--device-data", data, "--steps", 1, "--out", tmp_path / "o")


def _float32_shard(folder: Path, resolution: int, count: int, seed: int):
    """``(images, labels, class_names)``: the float32 shard of earlier versions, torchvision's eval transform of up to
    ``count`` images of an ImageFolder in a seeded order: what the device's uint8 path must reproduce."""
    import torch
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder), transform=eval_transform(resolution))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    items = [ds[i] for i in order]
    return (torch.stack([x for x, _ in items]).numpy().astype(np.float32), np.array([y for _, y in items], np.int64),
            ds.classes)


def test_pushed_laptop_data_is_a_memory_mapped_uint8_shard(cifar_export, cifar, tmp_path):
    """--data DIR packs uint8 .npy (a quarter of float32's bytes), the device maps them and normalises each batch
    exactly as the float32 shard of the same images, and trains the same; an old float32 .npz still trains."""
    folder = take(cifar, tmp_path / "flowers", {"train": 3})
    bundle = make_bundle(cifar_export, folder / "train")
    assert bundle.shard == "shard"
    images = np.load(bundle.root / "shard" / "train_images.npy", mmap_mode="r")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (30, 32, 32, 3)
    as_float32 = images.size * 4
    pushed = sum((bundle.root / rel).stat().st_size for rel in bundle.files if rel.startswith("shard/"))
    print(f"pushed shard: {pushed:,} bytes for 30 images, float32 would be {as_float32:,} ({as_float32 / pushed:.2f}x)")
    assert pushed < as_float32 / 3.9
    train, val = runner_data.pushed_shard(str(bundle.root / "shard"), bundle.manifest.as_dict())
    assert train.map is not None and val is None  # memory-mapped, page-dropped after each batch
    # the laptop's float32 shard (torchvision's eval transform) of the same images, in the same order
    f32, labels, classes = _float32_shard(folder / "train", RESOLUTION, count=30, seed=0)
    assert classes == CLASSES
    assert np.array_equal(np.stack([train.load(i) for i in range(30)]), f32)
    assert np.array_equal(train.labels, labels)
    np.savez(tmp_path / "old.npz", images=f32, labels=labels)
    run_runner(bundle.root, tmp_path, "--data", bundle.root / "shard", "--steps", 6, "--out", tmp_path / "u8")
    run_runner(bundle.root, tmp_path, "--data", tmp_path / "old.npz", "--steps", 6, "--out", tmp_path / "f32")
    losses = [json.loads((tmp_path / o / "metrics.json").read_text())["losses"] for o in ("u8", "f32")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_pack_uint8_shard_refuses_other_classes_and_splits_val(cifar, tmp_path):
    folder = take(cifar, tmp_path / "d", {"train": 2}, classes=CLASSES[:3]) / "train"
    from edgetl.errors import DataError

    with pytest.raises(DataError, match="missing cat; extra bird"):
        pack_uint8_shard(folder, RESOLUTION, tmp_path / "s", class_names=["airplane", "automobile", "cat"])
    meta = pack_uint8_shard(folder, RESOLUTION, tmp_path / "s2", val_fraction=0.5, class_names=CLASSES[:3][::-1])
    assert meta["splits"] == {"train": 3, "val": 3}
    labels = np.concatenate([np.load(tmp_path / "s2" / f"{s}_labels.npy") for s in ("train", "val")])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]  # indices into the given class order


# -- slow: over SSH, and ONNX Runtime ------------------------------------------------------------------

@pytest.mark.slow
def test_ssh_deploy_on_device_cifar_never_copied_back(sshd, cifar_export, cifar, tmp_path):
    from edgetl.devices import connect

    uri = sshd.uri(tmp_path / "pi", tmp_path / "known_hosts")  # ?python= this run's interpreter (runtime, Pillow)
    with connect(uri) as dev:
        info = dev.probe()
    assert "ai-edge-litert" in info.runtimes and any(k.lower() == "pillow" for k in info.runtimes)
    data = take(cifar, tmp_path / "pi-home" / "captures", {"train": 20, "test": 5})
    report = deploy(cifar_export, uri, device_data=str(data), epochs=3, out=tmp_path / "laptop" / "r")
    assert report.images_left_device is False and len(report.epochs) == 3
    assert report.data["train_images"] == 200 and report.data["val_images"] == 50
    assert images_in(tmp_path / "laptop") == []


@pytest.mark.slow
def test_onnx_runner_trains_on_device_data_and_resumes(cifar, tmp_path):
    """ONNX Runtime (any batch, AdamW): device data with a validation split, and a resume that continues with the
    optimizer state and running statistics of the checkpoint."""
    pytest.importorskip("onnxruntime.training")
    run = make_run(tmp_path / "run", "mobilenet_v3_small", "mobiletl:2", resolution=RESOLUTION, class_names=CLASSES)
    art = tmp_path / "art"
    export(run, "onnx", art, validate=False)
    data = take(cifar, tmp_path / "captures", {"train": 5})
    args = ["--device-data", data, "--val-split", 0.2, "--epochs", 4, "--checkpoint-every", 0, "--batch-size", 8,
            "--threads", 1]
    command = [sys.executable, str(art / "ort_runner.py"), "--artifacts", str(art), *map(str, args), "--out"]

    def ort(out):
        proc = subprocess.run([*command, str(out)], env=blocked_env(tmp_path), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((out / "metrics.json").read_text())

    whole = ort(tmp_path / "whole")
    assert [e["val_images"] for e in whole["epochs"]] == [10] * 4 and whole["data"]["train_images"] == 40
    interrupt([*command, str(tmp_path / "cut")], tmp_path)
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    resumed = ort(tmp_path / "cut")
    assert resumed["resumed_from_epoch"] == progress["epoch"] >= 1
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-4, abs=1e-5)
    assert [e["val_acc"] for e in resumed["epochs"]] == [e["val_acc"] for e in whole["epochs"]]
    a, b = _params(tmp_path / "cut"), _params(tmp_path / "whole")
    assert sorted(a) == sorted(b) and all(np.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
