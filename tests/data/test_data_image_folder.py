"""Image folders and their tarballs: exact round trip, class order, the decode cache, errors."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
import torch

from filterprune.data import image_folder, load_data
from filterprune.data.image_folder import find_image_source, read_image_source
from filterprune.errors import DataError


def _expected(written, split):
    """(N, 3, H, W) images and labels in the documented order: sorted classes, then file names."""
    classes = sorted(written["train"])
    imgs = [px for c in classes for px in written[split][c]]
    labels = [i for i, c in enumerate(classes) for _ in written[split][c]]
    return torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy()), torch.tensor(labels)


def _count_decodes(monkeypatch):
    calls = []
    real = image_folder.decode_image

    def counting(data, name):
        calls.append(name)
        return real(data, name)

    monkeypatch.setattr(image_folder, "decode_image", counting)
    return calls


def test_png_folder_round_trips_exactly(png_folder, tmp_path):
    root, written = png_folder
    s = load_data(str(root), cache_dir=tmp_path / "cache", val_fraction=0.2)
    x, y = _expected(written, "test")
    assert torch.equal(s.test.images, x) and torch.equal(s.test.labels, y)
    assert s.train.classes == ["circle", "square", "triangle"] and s.name == "shapes"
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 9) and s.val.class_counts() == [2, 2, 2]
    all_train, _ = _expected(written, "train")
    got = {bytes(im.numpy().tobytes()) for im in torch.cat([s.train.images, s.val.images])}
    assert got == {bytes(im.numpy().tobytes()) for im in all_train}
    assert (s.train.pad, s.train.flip) == (1, True)  # 8 px images: pad = side // 8


def test_cache_is_reused_and_invalidated_by_a_changed_file(png_folder, tmp_path, monkeypatch):
    root, _ = png_folder
    cache = tmp_path / "cache"
    calls = _count_decodes(monkeypatch)
    first = load_data(str(root), cache_dir=cache)
    assert len(calls) == 39
    second = load_data(str(root), cache_dir=cache)
    assert len(calls) == 39  # second load did not decode
    assert torch.equal(first.test.images, second.test.images)
    files = list((cache / "decoded").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp files left behind
    with np.load(files[0], allow_pickle=False) as z:
        assert z["train_images"].dtype == np.uint8
    # rewrite one test image: the key (size, mtime) changes, so everything is decoded again
    target = root / "test" / "circle" / "00.png"
    new = np.full((8, 8, 3), 7, np.uint8)
    from PIL import Image

    Image.fromarray(new).save(target)
    os.utime(target, ns=(10**18, 10**18))
    third = load_data(str(root), cache_dir=cache)
    assert len(calls) == 78
    assert torch.equal(third.test.images[0], torch.from_numpy(new.transpose(2, 0, 1)))


def test_default_cache_dir_honours_env(png_folder, tmp_path, monkeypatch):
    root, _ = png_folder
    monkeypatch.setenv("FILTERPRUNE_CACHE", str(tmp_path / "envcache"))
    load_data(str(root))
    assert len(list((tmp_path / "envcache" / "decoded").glob("*.npz"))) == 1


def test_tarballs_equal_the_folder(png_folder, tmp_path):
    root, written = png_folder
    packed = tmp_path / "packed"
    packed.mkdir()
    for split in ("train", "test"):
        with tarfile.open(packed / f"shapes_{split}.tar.gz", "w:gz") as tf:
            tf.add(root / split, arcname=split)
    both = tmp_path / "both.tar"
    with tarfile.open(both, "w") as tf:
        tf.add(root, arcname="some/prefix")
    x, y = _expected(written, "test")
    for spec in (packed / "shapes_train.tar.gz", packed, both):
        s = load_data(str(spec), cache_dir=tmp_path / "cache", val_fraction=0.2)
        assert torch.equal(s.test.images, x) and torch.equal(s.test.labels, y), spec
        assert len(s.train) + len(s.val) == 30
    alone = tmp_path / "alone"
    alone.mkdir()
    (packed / "shapes_train.tar.gz").rename(alone / "shapes_train.tar.gz")
    assert load_data(str(alone / "shapes_train.tar.gz"), cache_dir=tmp_path / "cache").test is None
    assert find_image_source(alone).paths == (alone / "shapes_train.tar.gz",)


def test_grey_images_become_rgb(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "g" / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 9 if cls == "a" else 200, np.uint8), mode="L").save(
            tmp_path / "g" / "train" / cls / "0.png"
        )
    arrays = read_image_source(find_image_source(tmp_path / "g"), tmp_path / "cache")
    assert arrays["train_images"].shape == (2, 3, 4, 4) and arrays["train_images"][1].min() == 200
    assert "test_images" not in arrays


@pytest.mark.parametrize("damage", ["corrupt image", "mixed sizes", "unknown test class", "empty"])
def test_damaged_folders_raise_one_line_data_error(png_folder, tmp_path, damage, fakes):
    root, _ = png_folder
    if damage == "corrupt image":
        (root / "train" / "square" / "03.png").write_bytes(b"not a png")
        match = "03.png: not a readable image"
    elif damage == "mixed sizes":
        fakes.write_png(root / "train" / "square" / "99.png", np.zeros((9, 9, 3), np.uint8))
        match = "resize"
    elif damage == "unknown test class":
        fakes.write_png(root / "test" / "hexagon" / "0.png", np.zeros((8, 8, 3), np.uint8))
        match = "hexagon"
    else:
        root = tmp_path / "empty"
        (root / "train").mkdir(parents=True)
        match = "no images"
    with pytest.raises(DataError, match=match) as e:
        load_data(str(root), cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_not_a_dataset_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="no dataset found"):
        load_data(str(tmp_path / "stuff"))
