"""The frozen prefix streamed in micro-batches and its feature cache: same numbers, clear refusals, no stale rows."""

import errno
import os

import pytest
import torch
from click.testing import CliRunner

import edgetl
import edgetl.cache
from edgetl.cache import NAME, FeatureCache
from edgetl.cli import main
from edgetl.data import Patterns, eval_transform, train_transform
from edgetl.errors import CacheError, ConfigError
from edgetl.prefix import (
    auto_prefix_batch,
    chunk_sizes,
    prefix_transient,
    set_prefix_batch,
    split_of,
    working_sets,
)
from edgetl.profile.saved import measure_saved


def _model(name, policy, seed=0, res=48):
    torch.manual_seed(seed)
    net = edgetl.create_model(name, num_classes=5)
    edgetl.calibrate_batchnorm(net, [(torch.randn(8, 3, res, res), None)])
    return edgetl.apply_policy(net, policy).train()


def _step(net, x, y):
    torch.manual_seed(1)  # the classifier's dropout draws the same mask
    logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    net.zero_grad(set_to_none=True)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
@pytest.mark.parametrize("policy", ["mobiletl:3", "ft:3"])
def test_streamed_step_equals_the_unstreamed_one(name, policy):
    net = _model(name, policy, res=40)
    x, y = torch.randn(7, 3, 40, 40), torch.randint(0, 5, (7,))
    logits, loss, grads = _step(net, x, y)
    z = logits.double()  # the loss is cross-entropy's own formula on the logits; every trained tensor has a gradient
    assert loss.item() == pytest.approx((z.logsumexp(1) - z[torch.arange(len(y)), y]).mean().item(), rel=1e-5)
    assert all(g.abs().sum() > 0 for g in grads.values())
    for micro in (1, 4):  # chunks 3+2+2 and 4+3
        set_prefix_batch(net, micro)
        s_logits, s_loss, s_grads = _step(net, x, y)
        assert (s_logits - logits).abs().max() <= 1e-6
        assert (s_loss - loss).abs() <= 1e-6
        assert max((s_grads[n] - g).abs().max().item() for n, g in grads.items()) <= 1e-6


def test_chunks_are_even_and_never_single():
    assert chunk_sizes(7, 3) == [3, 2, 2] and chunk_sizes(8, 1) == [2, 2, 2, 2] and chunk_sizes(8, 8) == [8]
    assert chunk_sizes(7, 1) == [3, 2, 2] and chunk_sizes(1, 1) == [1]
    for n in range(2, 20):
        for m in range(1, n + 1):
            sizes = chunk_sizes(n, m)
            assert sum(sizes) == n and max(sizes) <= max(m, 2 + n % 2) and min(sizes) >= 2


def test_frozen_prefix_saves_nothing_for_backward():
    net = _model("mobilenet_v3_small", "mobiletl:3")
    set_prefix_batch(net, 2)
    split = split_of(net)
    saved = measure_saved(net, torch.randn(4, 3, 48, 48), torch.randint(0, 5, (4,)))
    layers = [k for k in saved.by_layer if k.startswith("features.")]
    assert layers and all(int(k.split(".")[1]) >= split for k in layers), layers


def test_auto_prefix_batch_within_the_trained_regions_peak():
    net = edgetl.apply_policy(edgetl.create_model("mobilenet_v2", num_classes=5), "mobiletl:5")
    layer, out, trained = working_sets(net, 224)
    # independent figures: MobileNetV2's largest prefix layer at 224 is block 2's norm (or ReLU6) on its 96-channel
    # expansion at 112x112, input and output; the prefix ends with block 12's 96 x 14 x 14 output
    assert layer == 2 * 96 * 112**2 * 4 and out == 96 * 14**2 * 4
    for batch in (2, 8, 32):
        auto = auto_prefix_batch(net, batch, 224)
        assert 2 <= auto <= batch
        if auto > 2:  # then the choice keeps the prefix within the trained region's working set
            assert prefix_transient(layer, out, batch, auto) <= trained * batch
    small = _model("mobilenet_v3_small", "last", res=64)
    assert auto_prefix_batch(small, 8, 64) == 2  # everything is prefix: nothing in the trained region to fit under
    assert auto_prefix_batch(_model("mobilenet_v3_small", "full"), 8, 64) is None


def _data(n=20, res=32, transform=None):
    return Patterns(n, seed=0, image_size=res, transform=transform or eval_transform(res))


def _trainer(policy="mobiletl:2", seed=0, **kw):
    net = _model("mobilenet_v3_small", policy, seed=seed, res=32)
    kw = {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "seed": 0, "resolution": 32, **kw}
    return edgetl.Trainer(net, kw.pop("train_data", _data()), **kw)


def test_prefix_batch_bad_values():
    for bad in (0, 9, -1, "two"):
        with pytest.raises(ConfigError, match="--prefix-batch must be"):
            _trainer(prefix_batch=bad)
    assert _trainer(prefix_batch="auto").prefix_batch in range(2, 9)
    assert _trainer(policy="full", prefix_batch=4).prefix_batch is None  # no frozen prefix to stream


@pytest.mark.parametrize("budget", [512, 0])  # in memory, and a memory-mapped file on disk
def test_cached_epochs_equal_the_uncached_run(tmp_path, budget):
    plain = _trainer().fit()
    cached = _trainer(cache_features=True, cache_dir=tmp_path, cache_budget_mb=budget, prefix_batch=3).fit()
    for a, b in zip(plain.history, cached.history):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-6 and a["train_acc"] == b["train_acc"]
    for (n, p), q in zip(plain.model.state_dict().items(), cached.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), n
    assert (tmp_path / NAME / "header.json").is_file() == (budget == 0)


def _prefix_calls(trainer):
    calls = []
    trainer.model.features[0].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return calls


def test_disk_cache_reused_and_stale_cache_rebuilt(tmp_path):
    kw = {"cache_features": True, "cache_dir": tmp_path, "cache_budget_mb": 0, "epochs": 1}
    first = _trainer(**kw)
    calls = _prefix_calls(first)
    first.fit()
    assert calls == [1, 8, 8, 4]  # the row shape, then every sample once, the dropped last batch included
    key = edgetl.cache.json.loads((tmp_path / NAME / "header.json").read_text())["key"]
    again = _trainer(**kw)
    calls = _prefix_calls(again)
    again.fit()
    assert calls == []  # the finished cache served the first epoch too
    other = _trainer(policy="ft:2", **kw)  # same prefix weights, another policy: stale
    calls = _prefix_calls(other)
    other.fit()
    assert calls == [1, 8, 8, 4]
    assert edgetl.cache.json.loads((tmp_path / NAME / "header.json").read_text())["key"] != key


def test_float16_cache_is_close(tmp_path):
    plain = _trainer().fit()
    half = _trainer(cache_features=True, cache_dtype="float16").fit()
    assert plain.history[0]["train_loss"] == pytest.approx(half.history[0]["train_loss"], abs=1e-6)
    assert plain.history[1]["train_loss"] == pytest.approx(half.history[1]["train_loss"], rel=1e-2)


def test_cache_refusals():
    with pytest.raises(CacheError, match="random.*RandomResizedCrop.*augment=.none."):
        _trainer(cache_features=True, train_data=_data(transform=train_transform(32)))
    with pytest.raises(CacheError, match="no frozen prefix"):
        _trainer(policy="full", cache_features=True)
    with pytest.raises(CacheError, match="--cache-dtype"):
        _trainer(cache_features=True, cache_dtype="int8")
    with pytest.raises(CacheError, match="in-memory budget"):
        _trainer(cache_features=True, cache_budget_mb=0).fit()  # no directory for a disk cache


def test_failure_while_building_leaves_no_cache(tmp_path):
    def boom(trainer, step, loss):
        if step == 2:
            raise RuntimeError("stopped")

    cb = edgetl.Callback()
    cb.on_step_end = boom
    with pytest.raises(RuntimeError, match="stopped"):
        _trainer(cache_features=True, cache_dir=tmp_path, cache_budget_mb=0, callbacks=[cb]).fit()
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_full_unwritable_or_out_of_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheError, match="cannot write the feature cache.*writable --cache-dir"):
        _trainer(cache_features=True, cache_dir=blocker / "sub", cache_budget_mb=0).fit()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(edgetl.cache.os, "posix_fallocate", full)
        with pytest.raises(CacheError, match="no room.*--cache-dtype float16"):
            _trainer(cache_features=True, cache_dir=tmp_path / "c", cache_budget_mb=0).fit()
    assert not any((tmp_path / "c").iterdir())

    def no_memory(shape, dtype):
        raise MemoryError

    monkeypatch.setattr(edgetl.cache, "_allocate", no_memory)
    with pytest.raises(CacheError, match="out of memory.*--cache-dtype float16.*disk cache"):
        _trainer(cache_features=True).fit()


def test_unfinished_cache_is_not_trusted(tmp_path):
    rows = FeatureCache.open_or_create(4, (2,), "float32", "k", tmp_path, budget_bytes=0)
    rows.put(torch.arange(2), torch.ones(2, 2), torch.zeros(2, dtype=torch.long))
    assert FeatureCache.open(tmp_path, "k") is None  # never renamed into place
    rows.put(torch.arange(2, 4), torch.ones(2, 2), torch.zeros(2, dtype=torch.long))
    rows.finish()
    assert FeatureCache.open(tmp_path, "k").complete and FeatureCache.open(tmp_path, "other") is None
    assert not (tmp_path / NAME).exists()  # the stale one was removed


def test_cli_errors_and_cached_run(image_folder, tmp_path):
    tiny = ["train", "--model", "mobilenet_v3_small", "--policy", "mobiletl:2", "--resolution", "32", "--batch-size",
            "4", "--epochs", "2", "--weights", "none", "--no-progress", "--data", str(image_folder)]
    r = CliRunner().invoke(main, [*tiny, "--prefix-batch", "0", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "error: --prefix-batch must be" in r.output
    r = CliRunner().invoke(main, [*tiny, "--cache-features", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--augment none" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*tiny, "--cache-features", "--augment", "none", "--cache-dtype", "float16",
                                  "--prefix-batch", "auto", "--cache-budget-mb", "0", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / NAME / "header.json").is_file()
