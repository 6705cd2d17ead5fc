"""Official CIFAR-10 python format: restricted unpickling, pixel layout, archive forms, download."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from filterprune.data import cifar, load_data
from filterprune.data._safe_pickle import safe_loads
from filterprune.data.cifar import OfficialSource, download_cifar10, find_official_source, read_official
from filterprune.errors import DataError

pytestmark = pytest.mark.usefixtures("unknown_counts")  # the fakes are tiny

SHARED_META = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10" / "batches.meta"


class _MakesADirectory:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_restricted_unpickler_refuses_a_malicious_pickle(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _MakesADirectory(target), b"labels": []}, protocol=3)
    with pytest.raises(
        DataError, match="refusing to unpickle posix.mkdir|refusing to unpickle os.mkdir"
    ) as e:
        safe_loads(payload, "evil")
    assert not target.exists() and "\n" not in str(e.value)
    pickle.loads(payload)  # the oracle: a plain unpickler really would have run it
    assert target.is_dir()


@pytest.mark.parametrize("global_name", [b"builtins\neval", b"numpy\nload", b"numpy.core.multiarray\nscalar"])
def test_restricted_unpickler_allows_only_the_ndarray_globals(global_name):
    payload = b"\x80\x02c" + global_name + b"\n)R."
    with pytest.raises(DataError, match="refusing"):
        safe_loads(payload, "x")


def test_restricted_unpickler_rejects_garbage():
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_loads(b"definitely not a pickle", "junk")


@pytest.mark.skipif(not SHARED_META.is_file(), reason="shared/data/cifar10/batches.meta not present")
def test_real_batches_meta_reads_with_the_restricted_unpickler(fakes):
    meta = safe_loads(SHARED_META.read_bytes(), "batches.meta")  # written by Python 2's cPickle
    assert [n.decode() for n in meta[b"label_names"]] == fakes.classes


def test_read_official_is_pixel_exact_with_rgb_plane_order(official_dir, fakes):
    root, written = official_dir
    arrays = read_official(find_official_source(root))
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(arrays[key], written[key]), key
    assert arrays["train_images"].shape == (20, 3, 32, 32) and list(arrays["classes"]) == fakes.classes
    # channel 0 is the first 1024 bytes of the row (red), row-major: pixel (y=1, x=2) is byte 1*32+2
    raw = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")[b"data"]
    img = arrays["test_images"][0]
    assert (img[0, 1, 2], img[1, 1, 2], img[2, 1, 2]) == (raw[0, 34], raw[0, 1024 + 34], raw[0, 2048 + 34])


def test_load_data_from_every_official_form(official_dir, tmp_path, fakes):
    root, written = official_dir
    folder = root / "cifar-10-batches-py"
    archive = fakes.tar_folder(folder, root / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    renamed = fakes.tar_folder(folder, tmp_path / "my-copy.tgz", "cifar-10-batches-py")
    forms = {
        "parent folder": str(root),
        "batches folder": str(folder),
        "archive": str(archive),
        "archive, other name": str(renamed),
        "cifar10:path": f"cifar10:{folder}",
    }
    for form, spec in forms.items():
        s = load_data(spec, val_fraction=0.2)
        assert s.name == "cifar10", form
        assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 4), form
        assert torch.equal(s.test.images, torch.from_numpy(written["test_images"])), form
        assert s.train.mean == cifar.CIFAR10_MEAN and s.train.std == cifar.CIFAR10_STD and s.train.pad == 4
    assert find_official_source(root) == OfficialSource("dir", folder)
    (folder / "data_batch_1").unlink()
    assert find_official_source(tmp_path / "my-copy.tgz").kind == "tar"


def test_missing_or_corrupt_batches_raise_one_line_errors(official_dir, fakes):
    root, _ = official_dir
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3") as e:
        load_data(str(root))
    assert "\n" not in str(e.value)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(str(root))
    bad = np.zeros((2, 3, 32, 32), np.uint8)
    (folder / "data_batch_3").write_bytes(fakes.batch_bytes(bad, [0, 11]))
    with pytest.raises(DataError, match="labels"):
        load_data(str(root))


def test_corrupt_archive_raises(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="corrupt compressed data|readable tar archive") as e:
        load_data(str(bad))
    assert "\n" not in str(e.value)


@pytest.fixture
def isolated_roots(tmp_path, monkeypatch):
    """$FILTERPRUNE_DATA and $HOME pointed at empty temp folders."""
    data = tmp_path / "data"
    monkeypatch.setenv("FILTERPRUNE_DATA", str(data))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return data


def _fake_archive(tmp_path: Path, fakes) -> tuple[Path, str]:
    src = tmp_path / "src"
    fakes.make_official(src, per_batch=2)
    archive = fakes.tar_folder(src / "cifar-10-batches-py", tmp_path / "fake.tar.gz", "cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_cifar10_by_name_not_found_says_what_to_pass(isolated_roots):
    with pytest.raises(DataError, match="download=True") as e:
        load_data("cifar10")
    assert "\n" not in str(e.value) and str(isolated_roots) in str(e.value)


def test_cifar10_by_name_finds_data_under_filterprune_data(isolated_roots, fakes):
    fakes.make_official(isolated_roots / "cifar10")
    assert load_data("cifar10").name == "cifar10"


def test_download_via_file_url_checks_md5_and_renames_into_place(
    isolated_roots, tmp_path, monkeypatch, fakes
):
    archive, md5 = _fake_archive(tmp_path, fakes)
    monkeypatch.setattr(cifar, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    s = load_data("cifar10", download=True)
    assert (len(s.train) + len(s.val), len(s.test)) == (10, 2)
    assert sorted(p.name for p in isolated_roots.iterdir()) == ["cifar-10-python.tar.gz"]
    assert (isolated_roots / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()


def test_download_md5_mismatch_leaves_no_file(isolated_roots, tmp_path, monkeypatch, fakes):
    archive, _ = _fake_archive(tmp_path, fakes)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="md5") as e:
        download_cifar10(isolated_roots, url=archive.as_uri())
    assert "\n" not in str(e.value)
    assert list(isolated_roots.iterdir()) == []


def test_download_failure_leaves_no_file(isolated_roots, tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download_cifar10(isolated_roots, url=(tmp_path / "absent.tar.gz").as_uri())
    assert list(isolated_roots.iterdir()) == []
