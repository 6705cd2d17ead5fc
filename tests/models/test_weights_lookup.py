"""Known weights are found in $FILTERPRUNE_WEIGHTS, then the cache folder, or by explicit path; never cwd."""

from __future__ import annotations

import hashlib

import pytest
import torch

from filterprune.errors import CheckpointError
from filterprune.models import create_model
from filterprune.models import weights as W
from filterprune.utils.paths import cache_dir


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No FILTERPRUNE_WEIGHTS, an empty cache root, and a fake known checkpoint ``tiny`` (its sha256)."""
    monkeypatch.delenv("FILTERPRUNE_WEIGHTS", raising=False)
    monkeypatch.setenv("FILTERPRUNE_CACHE", str(tmp_path / "cache"))
    payload = b"not really weights"
    cfg = W.WeightsCfg("tiny.th", hashlib.sha256(payload).hexdigest(), "https://example.invalid/tiny.th", 0.0, 0.0)
    monkeypatch.setitem(W.PRETRAINED, "tiny", cfg)
    return tmp_path, payload


def test_cache_dir_from_env_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERPRUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir("weights") == tmp_path / "c" / "weights"
    monkeypatch.delenv("FILTERPRUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("weights") == tmp_path / "home" / ".cache" / "filterprune" / "weights"


def test_working_directory_is_never_searched(clean_env, monkeypatch):
    tmp, payload = clean_env
    for sub in ("shared/data/pretrained", "."):  # the old lookup's places, relative to cwd
        (tmp / "cwd" / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "cwd" / sub / "tiny.th").write_bytes(payload)
    monkeypatch.chdir(tmp / "cwd")
    with pytest.raises(CheckpointError, match="tiny.th not found in .*cache/weights; pass a file path") as e:
        W.find_weights("tiny")
    assert "cwd" not in str(e.value)


def test_cache_folder_then_env_folder_first(clean_env, monkeypatch):
    tmp, payload = clean_env
    cached = tmp / "cache" / "weights" / "tiny.th"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload)
    assert W.find_weights("tiny") == cached
    env_dir = tmp / "env"
    env_dir.mkdir()
    (env_dir / "tiny.th").write_bytes(payload)
    monkeypatch.setenv("FILTERPRUNE_WEIGHTS", str(env_dir))
    assert W.weights_dirs() == [env_dir, tmp / "cache" / "weights"]
    assert W.find_weights("tiny") == env_dir / "tiny.th"


def test_a_found_file_with_another_sha256_is_refused(clean_env, monkeypatch):
    tmp, _ = clean_env
    (tmp / "env").mkdir()
    (tmp / "env" / "tiny.th").write_bytes(b"tampered")
    monkeypatch.setenv("FILTERPRUNE_WEIGHTS", str(tmp / "env"))
    with pytest.raises(CheckpointError, match=r"env/tiny.th: sha256 does not match the published tiny.th"):
        W.find_weights("tiny")


def test_explicit_path_loads_whatever_the_working_directory(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = create_model("resnet20")
    path = tmp_path / "mine.th"
    torch.save(source.state_dict(), path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = create_model("resnet20", pretrained=str(path))
    for (k, a), b in zip(source.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
