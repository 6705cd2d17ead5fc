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


def test_download_checks_sha256_and_lands_in_the_first_folder(clean_env, monkeypatch):
    tmp, payload = clean_env
    source = tmp / "server" / "tiny.th"
    source.parent.mkdir()
    source.write_bytes(payload)
    monkeypatch.setitem(W.PRETRAINED, "tiny", W.PRETRAINED["tiny"].__class__(
        "tiny.th", W.PRETRAINED["tiny"].sha256, source.as_uri(), 0.0, 0.0))
    got = W.find_weights("tiny", download=True)  # not found anywhere: fetched into the cache folder
    assert got == tmp / "cache" / "weights" / "tiny.th" and got.read_bytes() == payload
    assert [p.name for p in got.parent.iterdir()] == ["tiny.th"]  # no partial file left


def test_download_with_another_sha256_leaves_nothing(clean_env):
    tmp, _ = clean_env
    bad = tmp / "bad.th"
    bad.write_bytes(b"something else")
    dest = tmp / "dest"
    with pytest.raises(CheckpointError, match=r"downloaded tiny.th has sha256 [0-9a-f]{12}\.\.\., expected"):
        W.download_weights(W.PRETRAINED["tiny"], dest, url=bad.as_uri())
    assert list(dest.iterdir()) == []
    with pytest.raises(CheckpointError, match="could not download"):
        W.download_weights(W.PRETRAINED["tiny"], dest, url=(tmp / "missing.th").as_uri())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="no known pretrained weights for 'resnet7'; known: resnet20"):
        W.find_weights("resnet7")


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
def test_foreign_state_dicts_nested_and_prefixed(tmp_path, wrap):
    state = {"module.conv.weight": torch.ones(2, 1, 1, 1), "module.conv.bias": torch.zeros(2)}
    path = tmp_path / "w.pt"
    torch.save(state if wrap == "bare" else {wrap: state, "epoch": 3}, path)
    got = W.read_foreign_state_dict(path)
    assert sorted(got) == ["conv.bias", "conv.weight"] and torch.equal(got["conv.weight"], torch.ones(2, 1, 1, 1))


def test_foreign_files_that_are_not_state_dicts(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        W.read_foreign_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip or a pickle")
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable weights-only checkpoint \("):
        W.read_foreign_state_dict(tmp_path / "junk.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt: holds no state dict of tensors"):
        W.read_foreign_state_dict(tmp_path / "list.pt")
