"""Split exports and the runners' frozen prefix: the manifest's split, streaming in micro-batches (the same numbers
as one pass), the feature cache (the same training, stale caches rebuilt, refusals in one line, nothing
half-written left behind), and deploy with the cache. Uses the session V3-Small exports (mobiletl:3, 64 px)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgetl
from edgetl.cli import main
from edgetl.exporters.manifest import verify_manifest
from edgetl.runtime import runner_common as common
from edgetl.runtime import runner_prefix as prefix

from .exportutil import blocked_env, reference_shard


def runner(exp, tmp_path, *args):
    return subprocess.run([sys.executable, str(exp.art / exp.script), "--artifacts", str(exp.art), "--threads", "1",
                           *map(str, args)], env=blocked_env(tmp_path), capture_output=True, text=True, timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    return proc


def refused(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-1000:] + proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_split_export_validates_and_its_manifest_reads_back(v3_export):
    manifest = json.loads((v3_export.art / "manifest.json").read_text())
    model = edgetl.Run.load(v3_export.run).model
    split = manifest["split"]
    assert split["at"] == f"features.{model.features.split}" and split["index"] == model.features.split > 0
    assert split["prefix"] in manifest["files"] and (v3_export.art / split["prefix"]).is_file()
    assert verify_manifest(v3_export.art) == []
    # the feature shape is what PyTorch's prefix hands on
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        for m in list(model.features)[:split["index"]]:
            x = m.eval()(x)
    assert split["feature_shape"] == list(x.shape[1:])
    # the composition validated as a whole export does, every check passing
    assert manifest["validation"]["ok"] and all(c["ok"] for c in manifest["validation"]["checks"])
    # the trained region holds no prefix parameter; the trained ones are all there
    trainer = v3_export.runner.Session(str(v3_export.art))
    assert set(trainer.params()) == set(manifest["trainable"])


def test_prefix_features_match_pytorch(v3_export):
    model = edgetl.Run.load(v3_export.run).model
    images = np.load(v3_export.art / "reference.npz")["images"][0]
    trainer = v3_export.runner.Session(str(v3_export.art), prefix_batch=3)
    with torch.no_grad():
        x = torch.from_numpy(images)
        for m in list(model.features)[:model.features.split]:
            x = m.eval()(x)
    np.testing.assert_allclose(trainer.features(images), x.numpy(), atol=1e-4 * max(1.0, float(x.abs().max())))


def test_streamed_step_equals_the_unstreamed_step(v3_export):
    ref = np.load(v3_export.art / "reference.npz")
    images, labels = ref["images"][0], ref["labels"][0]
    whole = v3_export.runner.Session(str(v3_export.art), prefix_batch=len(images))
    micro = v3_export.runner.Session(str(v3_export.art), prefix_batch=1)
    for _ in range(2):
        la, lb = whole.step(images, labels), micro.step(images, labels)
        assert abs(la - lb) <= 1e-6
    assert (whole.prefix_batch, micro.prefix_batch) == (4, 1)
    pa, pb = whole.trained(), micro.trained()
    assert pa.keys() == pb.keys()
    assert max(float(np.max(np.abs(pa[n] - pb[n]))) for n in pa) <= 1e-6
    # and from the loss PyTorch computes on the same parameters (as validation checks it)
    assert abs(whole.gradients(images, labels)[0] - micro.gradients(images, labels)[0]) <= 1e-6


def test_auto_prefix_batch_rule():
    split = {"prefix_sample_bytes": 100, "region_sample_bytes": 300}
    assert prefix.prefix_batch("auto", 8, split) == 3  # 3 images of the prefix cost what one costs the region
    assert prefix.prefix_batch("auto", 8, {"prefix_sample_bytes": 10, "region_sample_bytes": 300}) == 8
    assert prefix.prefix_batch("auto", 8, {"prefix_sample_bytes": 10**6, "region_sample_bytes": 1}) == 1
    assert prefix.prefix_batch("3", 8, split) == 3 and prefix.prefix_batch("auto", 8, None) is None
    for bad in ("0", "9", "x"):
        with pytest.raises(common.RunnerError, match="--prefix-batch"):
            prefix.prefix_batch(bad, 8, split)


def test_cached_epochs_train_as_uncached_ones(v3_export, tmp_path):
    shard = reference_shard(v3_export.art, tmp_path)  # 12 images, batch 4: 3 steps per epoch
    ok(runner(v3_export, tmp_path, "--data", shard, "--epochs", 3, "--batch-size", 4, "--out", tmp_path / "plain"))
    ok(runner(v3_export, tmp_path, "--data", shard, "--epochs", 3, "--batch-size", 4, "--cache-features",
              "--out", tmp_path / "cached"))
    plain, cached = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    assert len(plain["losses"]) == len(cached["losses"]) == 9
    np.testing.assert_allclose(cached["losses"], plain["losses"], atol=1e-6, rtol=0)
    shape = json.loads((v3_export.art / "manifest.json").read_text())["split"]["feature_shape"]
    assert cached["cache"] == {"dtype": "float32", "bytes": 12 * int(np.prod(shape)) * 4, "where": "memory"}
    assert plain["cache"] is None and plain["prefix_batch"] == cached["prefix_batch"] >= 1
    a, b = np.load(tmp_path / "plain" / "params.npz"), np.load(tmp_path / "cached" / "params.npz")
    assert max(float(np.max(np.abs(a[n] - b[n]))) for n in a.files) <= 1e-6


def test_disk_cache_is_reused_and_a_stale_one_rebuilt(v3_export, tmp_path):
    shard = reference_shard(v3_export.art, tmp_path)
    cache_dir = tmp_path / "cache"
    base = ["--data", shard, "--epochs", 2, "--batch-size", 4, "--cache-features", "--cache-budget-mb", 0,
            "--cache-dir", cache_dir]
    first = ok(runner(v3_export, tmp_path, *base, "--out", tmp_path / "a"))
    assert metrics(tmp_path / "a")["cache"]["where"] == "disk" and "stale" not in first.stdout
    header = json.loads((cache_dir / prefix.CACHE_HEADER).read_text())
    assert sorted(os.listdir(cache_dir)) == sorted([prefix.CACHE_DATA, prefix.CACHE_HEADER])
    stored = np.load(cache_dir / prefix.CACHE_DATA)
    trainer = v3_export.runner.Session(str(v3_export.art))
    images = np.load(shard)["images"]
    np.testing.assert_allclose(stored, trainer.features(images), atol=1e-6, rtol=0)  # one row per image, in order
    again = ok(runner(v3_export, tmp_path, *base, "--out", tmp_path / "b"))
    assert "using the feature cache" in again.stdout
    np.testing.assert_allclose(metrics(tmp_path / "b")["losses"], metrics(tmp_path / "a")["losses"], atol=1e-6, rtol=0)
    # another policy's (or prefix's, data's...) cache under the same name: its key differs, so it is rebuilt
    header["key"] = "0" * 64
    (cache_dir / prefix.CACHE_HEADER).write_text(json.dumps(header))
    np.save(cache_dir / prefix.CACHE_DATA, np.full_like(stored, 7.0))
    rebuilt = ok(runner(v3_export, tmp_path, *base, "--out", tmp_path / "c"))
    assert "stale" in rebuilt.stdout
    np.testing.assert_allclose(metrics(tmp_path / "c")["losses"], metrics(tmp_path / "a")["losses"], atol=1e-6, rtol=0)
    assert json.loads((cache_dir / prefix.CACHE_HEADER).read_text())["key"] != "0" * 64
    # other data: another key
    other = tmp_path / "other.npz"
    data = np.load(shard)
    np.savez(other, images=data["images"][::-1].copy(), labels=data["labels"][::-1].copy())
    assert "stale" in ok(runner(v3_export, tmp_path, *base[2:], "--data", other, "--out", tmp_path / "d")).stdout


def test_cache_refusals_are_one_line(v3_export, tmp_path):
    shard = reference_shard(v3_export.art, tmp_path)
    base = ["--data", shard, "--epochs", 2, "--batch-size", 4]
    line = refused(runner(v3_export, tmp_path, *base, "--cache-features", "--augment", "flip", "--out", tmp_path / "o"))
    assert "--augment none" in line
    for bad in (0, 5):
        line = refused(runner(v3_export, tmp_path, *base, "--prefix-batch", bad, "--out", tmp_path / "o"))
        assert f"--prefix-batch {bad}" in line and "1 to 4" in line
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = refused(runner(v3_export, tmp_path, *base, "--cache-features", "--cache-budget-mb", 0, "--cache-dir",
                          blocker / "cache", "--out", tmp_path / "o"))
    assert "cannot write the feature cache" in line and "--cache-dir" in line


def test_cache_larger_than_memory_names_float16_and_the_disk_cache(tmp_path):
    free = prefix.available_memory()
    if free is None:
        pytest.skip("no /proc/meminfo")
    n = int(free // (64 * 64 * 4)) + 10  # rows of 16 KiB: more than all the available memory
    with pytest.raises(common.RunnerError, match="--cache-dtype float16") as exc:
        prefix.FeatureCache.open(n, (64, 8, 8), "float32", 2**62, str(tmp_path), "k", log=lambda s: None)
    assert "disk cache" in str(exc.value) and os.listdir(tmp_path) == []


def test_failed_build_leaves_no_cache(v3_export, tmp_path):
    shard = reference_shard(v3_export.art, tmp_path)
    manifest = common.load_manifest(str(v3_export.art))
    train, _, _ = common.data.open_data(manifest, str(shard))
    trainer = v3_export.runner.Session(str(v3_export.art))
    cache = prefix.FeatureCache.open(len(train), manifest["split"]["feature_shape"], "float16", 0, str(tmp_path / "c"),
                                     prefix.cache_key(manifest, train, "float16"), log=lambda s: None)
    assert cache.where == "disk" and len(os.listdir(tmp_path / "c")) == 1  # the temporary file being built
    calls = []

    def failing(x, y):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return trainer.step_features(x, y)

    trainer.step_features = failing
    with pytest.raises(RuntimeError):
        try:
            common.fit(trainer, train, epochs=2, batch_size=4, cache=cache)
        except BaseException:
            cache.discard()
            raise
    assert os.listdir(tmp_path / "c") == []  # nothing a later run could trust, and no space held


def test_float16_cache_stays_close(v3_export, tmp_path):
    shard = reference_shard(v3_export.art, tmp_path)
    base = ["--data", shard, "--epochs", 3, "--batch-size", 4]
    ok(runner(v3_export, tmp_path, *base, "--out", tmp_path / "plain"))
    ok(runner(v3_export, tmp_path, *base, "--cache-features", "--cache-dtype", "float16", "--out", tmp_path / "half"))
    plain, half = metrics(tmp_path / "plain"), metrics(tmp_path / "half")
    assert half["cache"]["dtype"] == "float16" and half["cache"]["bytes"] * 2 == 12 * 4 * int(
        np.prod(json.loads((v3_export.art / "manifest.json").read_text())["split"]["feature_shape"]))
    diff = np.abs(np.array(half["losses"]) - np.array(plain["losses"])) / np.abs(plain["losses"])
    # rounding features to float16 moves the first loss at rounding level (measured 2e-6 relative); AdamW's
    # steps then carry the two runs apart slowly (measured at most 0.8 % of the loss over 9 steps)
    assert 0 < diff[0] < 1e-4 and diff.max() < 0.03


def test_baseline_loads_and_exits(v3_export, tmp_path):
    proc = ok(runner(v3_export, tmp_path, "--baseline"))
    figure = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(figure) == {"baseline_rss_bytes"} and 20 * 2**20 < figure["baseline_rss_bytes"] < 2**30


@pytest.mark.parametrize("v3_export", ["tflite"], indirect=True)
def test_deploy_with_the_cache_on_a_local_device(v3_export, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    shard = reference_shard(v3_export.art, tmp_path)
    out = tmp_path / "result"
    result = CliRunner().invoke(main, ["deploy", str(v3_export.art), "--device", f"local://{tmp_path / 'device'}",
                                       "--data", str(shard), "--epochs", "2", "--cache-features", "--cache-dtype",
                                       "float16", "--prefix-batch", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["cache"]["dtype"] == "float16" and report["cache"]["where"] == "memory"
    assert report["prefix_batch"] == 2 and len(report["epochs"]) == 2
    refusal = CliRunner().invoke(main, ["deploy", str(v3_export.art), "--device", f"local://{tmp_path / 'device'}",
                                        "--data", str(shard), "--epochs", "2", "--cache-features", "--augment", "flip"])
    assert refusal.exit_code != 0 and "--augment none" in refusal.output
