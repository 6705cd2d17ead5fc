"""Pickle-free checkpoints of pruned models, and ONNX export of a pruned ResNet-20."""

from __future__ import annotations

import json

import pytest
import torch

from filterprune.api import load, prune, save
from filterprune.checkpoint import read_checkpoint
from filterprune.errors import CheckpointError
from filterprune.models import create_model

CASES = [("resnet20", (2, 3, 32, 32)), ("vgg16_bn", (2, 3, 32, 32)), ("convnet_small", (2, 1, 8, 8))]


def _pruned(name, shape, target=0.4):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(*shape)
    prune(model, x, "l1", target_macs=target)
    return model.eval(), x


@pytest.mark.parametrize("name, shape", CASES)
def test_round_trip_of_pruned_model(tmp_path, name, shape):
    model, x = _pruned(name, shape)
    path = save(model, tmp_path / f"{name}.safetensors", meta={"note": "pruned"})
    loaded = load(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.filterprune_cfg == model.filterprune_cfg
    _, meta = read_checkpoint(path)
    assert meta["note"] == "pruned" and meta["arch"]["name"] == name and meta["modules"]
    json.dumps(meta)


def test_round_trip_of_unpruned_model_with_kwargs(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", width_mult=0.5, num_classes=7).eval()
    loaded = load(save(model, tmp_path / "m.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_truncated_and_corrupt_files(tmp_path):
    model, _ = _pruned("convnet_small", (2, 1, 8, 8))
    path = save(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load(junk)
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        load(tmp_path / "missing.safetensors")


def test_mismatching_architecture_is_a_checkpoint_error(tmp_path):
    from filterprune.checkpoint import save_checkpoint

    model, _ = _pruned("convnet_small", (2, 1, 8, 8))
    tensors, meta = read_checkpoint(save(model, tmp_path / "m.safetensors"))
    meta["arch"] = {"name": "resnet20"}
    bad = save_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load(bad)
    plain = save_checkpoint(tmp_path / "plain.safetensors", tensors, {})
    with pytest.raises(CheckpointError, match="not a filterprune model"):
        load(plain)


def test_save_refuses_reserved_meta_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save(create_model("convnet_small"), tmp_path / "m.safetensors", meta={"arch": {}})


def test_pruned_resnet20_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from filterprune.export import export_onnx

    model, x = _pruned("resnet20", (2, 3, 32, 32), target=0.5)
    path = tmp_path / "r20.onnx"
    assert export_onnx(model, x, path) <= 1e-4
    x3 = torch.randn(3, 3, 32, 32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x3.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x3), rtol=1e-4, atol=1e-4)
