"""Model construction, block enumeration and every way of loading weights (and failing to)."""

import os

import pytest
import torch
import torchvision

from edgetl import WeightsError, create_model, inverted_residual_blocks
from edgetl.errors import ConfigError
from edgetl.models import imagenet_weights_path


@pytest.mark.parametrize("name, blocks, last_stage", [
    ("mobilenet_v2", 17, 18), ("mobilenet_v3_small", 11, 12), ("mobilenet_v3_large", 15, 16),
])
def test_blocks_and_head(name, blocks, last_stage):
    model = create_model(name, num_classes=10)
    irbs = inverted_residual_blocks(model)
    assert [i for i, _ in irbs] == list(range(1, blocks + 1))
    assert len(model.features) == last_stage + 1
    assert model.classifier[-1].out_features == 10
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        create_model("resnet")


def _torchvision_file(tmp_path, name="mobilenet_v3_small", num_classes=1000):
    model = getattr(torchvision.models, name)(num_classes=num_classes)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_local_torchvision_file_loads_backbone_and_resizes_head(tmp_path):
    ref, path = _torchvision_file(tmp_path)
    model = create_model("mobilenet_v3_small", num_classes=5, weights=path)
    for k, v in ref.state_dict().items():
        if not k.startswith("classifier.3."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.classifier[-1].out_features == 5


def test_local_file_with_matching_head_loads_everything(tmp_path):
    ref, path = _torchvision_file(tmp_path, num_classes=5)
    model = create_model("mobilenet_v3_small", num_classes=5, weights=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_imagenet_weights_from_local_cache(tmp_path):
    ref, path = _torchvision_file(tmp_path)
    cached = imagenet_weights_path("mobilenet_v3_small")
    assert str(cached).startswith(os.environ["TORCH_HOME"])
    cached.parent.mkdir(parents=True)
    os.replace(path, cached)
    model = create_model("mobilenet_v3_small", num_classes=3, weights="imagenet")
    assert torch.equal(model.features[0][0].weight, ref.features[0][0].weight)


def test_imagenet_offline_names_file_to_place():
    with pytest.raises(WeightsError) as exc:
        create_model("mobilenet_v2", num_classes=3, weights="imagenet")
    msg = str(exc.value)
    assert "mobilenet_v2-b0353104.pth" in msg and str(imagenet_weights_path("mobilenet_v2")) in msg


def test_wrong_architecture(tmp_path):
    _, path = _torchvision_file(tmp_path, name="mobilenet_v2")
    with pytest.raises(WeightsError, match="do not fit mobilenet_v3_small.*choose the matching --model"):
        create_model("mobilenet_v3_small", 3, weights=path)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt or not a PyTorch file"):
        create_model("mobilenet_v2", 3, weights=bad)
    _, good = _torchvision_file(tmp_path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4096])
    with pytest.raises(WeightsError, match="corrupt"):
        create_model("mobilenet_v3_small", 3, weights=truncated)
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("mobilenet_v2", 3, weights=tmp_path / "missing.pth")


def test_edgetl_checkpoint_of_another_class_count_gives_a_new_head(tmp_path, caplog):
    model = create_model("mobilenet_v3_small", 4)
    path = tmp_path / "ckpt.pt"
    torch.save({"edgetl": {"model": "mobilenet_v3_small", "num_classes": 4}, "state_dict": model.state_dict()}, path)
    loaded = create_model("mobilenet_v3_small", 4, weights=path)
    assert torch.equal(loaded.classifier[-1].weight, model.classifier[-1].weight)
    chained = create_model("mobilenet_v3_small", 6, weights=path)  # chained transfer: backbone kept, new head
    assert chained.classifier[-1].out_features == 6
    assert torch.equal(chained.features[3].block[0][0].weight, model.features[3].block[0][0].weight)
    assert [r.getMessage() for r in caplog.records if "keeping its backbone" in r.getMessage()] == [
        f"{path} was trained for 4 classes and the new head has 6: keeping its backbone, starting a new head"]
    with pytest.raises(WeightsError, match="checkpoint of mobilenet_v3_small, not mobilenet_v2"):
        create_model("mobilenet_v2", 4, weights=path)


def test_a_run_of_other_classes_gives_a_new_head_even_with_the_same_count(tmp_path, caplog):
    """Chained transfer by class names: the same names keep the head, other names (same count or not) get a new one
    with one line saying so; keep_head keeps it anyway (same count only)."""
    from edgetl.errors import ConfigError

    model = create_model("mobilenet_v3_small", 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"edgetl": {"model": "mobilenet_v3_small", "num_classes": 3, "class_names": ["a", "b", "c"]},
                "state_dict": model.state_dict()}, path)
    head = model.classifier[-1].weight
    same = create_model("mobilenet_v3_small", 3, weights=path, class_names=["a", "b", "c"])
    assert torch.equal(same.classifier[-1].weight, head) and not caplog.records
    other = create_model("mobilenet_v3_small", 3, weights=path, class_names=["cat", "dog", "eel"])
    assert not torch.equal(other.classifier[-1].weight, head)
    assert torch.all(other.classifier[-1].bias == 0)  # a fresh head: torchvision's init
    assert torch.equal(other.features[3].block[0][0].weight, model.features[3].block[0][0].weight)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} was trained for other classes (3: a, b, c) than these (3: cat, dog, eel) (the same number: "
        f"--keep-head keeps the old head): keeping its backbone, starting a new head"]
    caplog.clear()
    kept = create_model("mobilenet_v3_small", 3, weights=path, class_names=["cat", "dog", "eel"], keep_head=True)
    assert torch.equal(kept.classifier[-1].weight, head)
    assert [r.getMessage() for r in caplog.records] == [
        f"--keep-head: keeping the head of {path}, trained for other classes (3: a, b, c) than these (3: cat, dog, eel)"]
    with pytest.raises(ConfigError, match="--keep-head keeps the head of .* 3 classes, but the data has 5"):
        create_model("mobilenet_v3_small", 5, weights=path, class_names=list("vwxyz"), keep_head=True)
