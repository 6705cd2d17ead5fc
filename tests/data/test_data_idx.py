"""IDX (MNIST-format) files and Fashion-MNIST."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from filterprune.data import load_data
from filterprune.data.idx import DEBIAN_FASHION_MNIST, FILES, read_idx
from filterprune.errors import DataError

pytestmark = pytest.mark.usefixtures("unknown_counts")  # the fakes are tiny


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = (
        bytes([0, 0, 0x08, arr.ndim])
        + struct.pack(f">{arr.ndim}i", *arr.shape)
        + arr.astype(np.uint8).tobytes()
    )
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_fashion(folder: Path, gz: bool, n_train: int = 40, n_test: int = 10):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for key, stem in FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), data[key], gz)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    write_idx(tmp_path / "x", arr, gz)
    assert np.array_equal(read_idx(tmp_path / "x"), arr)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd", "uint8 IDX"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "truncated"),
        (b"PK\x03\x04", "uint8 IDX"),
    ],  # fmt: skip
)
def test_read_idx_rejects_bad_files(tmp_path, raw, match):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_a_folder(tmp_path, gz):
    data = _write_fashion(tmp_path / "fm", gz)
    s = load_data(f"fashion-mnist:{tmp_path / 'fm'}")
    assert (len(s.train), len(s.val), len(s.test)) == (36, 4, 10)
    assert np.array_equal(s.test.images[:, 0].numpy(), data["test_images"])
    assert s.test.labels.tolist() == data["test_labels"].tolist()
    assert (s.train.in_chans, s.train.image_size, s.train.pad, s.train.flip) == (1, 28, 2, False)
    assert s.train.classes[0] == "T-shirt/top" and s.name == "fashion-mnist"


def test_fashion_mnist_missing_file_says_what_to_pass(tmp_path):
    _write_fashion(tmp_path / "fm", gz=True)
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*pass fashion-mnist:") as e:
        load_data(f"fashion-mnist:{tmp_path / 'fm'}")
    assert "\n" not in str(e.value)


def test_fashion_mnist_found_under_filterprune_data(tmp_path, monkeypatch):
    _write_fashion(tmp_path / "root" / "fashion-mnist", gz=True)
    monkeypatch.setenv("FILTERPRUNE_DATA", str(tmp_path / "root"))
    assert len(load_data("fashion-mnist").test) == 10


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_debian_package(monkeypatch):
    monkeypatch.delenv("FILTERPRUNE_DATA", raising=False)
    s = load_data("fashion-mnist")
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.test.class_counts() == [1000] * 10 and s.train.images.shape[1:] == (1, 28, 28)
