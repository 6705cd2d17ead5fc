"""Streaming image folders: transforms against exact pixel oracles, sharding, and the in-memory loader as oracle."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from filterprune.data import BatchLoader, load_data
from filterprune.data.stream import (
    FolderDataset,
    ShardSampler,
    StreamLoader,
    _resize_centre_crop,
    _resized_crop,
    make_loader,
    random_resized_crop_params,
)
from filterprune.errors import DataError


def test_random_resized_crop_params_stay_inside_and_respect_area_and_ratio():
    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(20, 400), rng.randint(20, 400)
        top, left, ch, cw = random_resized_crop_params(w, h, rng)
        assert 0 <= top <= h - ch and 0 <= left <= w - cw and ch > 0 and cw > 0
        if (ch, cw) != (h, w):  # a sampled crop, not the fallback
            assert 0.08 * w * h * 0.9 <= cw * ch <= w * h
            assert 3 / 4 * 0.9 <= cw / ch <= 4 / 3 * 1.1  # rounding of small crops


def test_random_resized_crop_falls_back_to_a_ratio_clamped_centre_crop():
    # an impossible area range forces the fallback: a 100 x 10 image clamped to ratio 4/3
    assert random_resized_crop_params(100, 10, random.Random(0), scale=(2.0, 3.0)) == (0, 43, 10, 13)
    assert random_resized_crop_params(10, 100, random.Random(0), scale=(2.0, 3.0)) == (43, 0, 13, 10)
    assert random_resized_crop_params(30, 30, random.Random(0), scale=(2.0, 3.0)) == (0, 0, 30, 30)


def test_transforms_at_scale_one_are_exact_crops_and_mirrors():
    px = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    img = Image.fromarray(px)  # 24 wide, 20 high
    # resize of the shorter side to its own length, then the centre 16 x 16: rows 2..17, columns 4..19
    assert np.array_equal(np.asarray(_resize_centre_crop(img, 20, 16)), px[2:18, 4:20])
    # a 12 x 12 crop at (top 3, left 5) resized to 12: the pixels themselves, mirrored when asked
    assert np.array_equal(np.asarray(_resized_crop(img, 3, 5, 12, 12, 12, False)), px[3:15, 5:17])
    assert np.array_equal(np.asarray(_resized_crop(img, 3, 5, 12, 12, 12, True)), px[3:15, 5:17][:, ::-1])


def test_eval_shards_cover_every_image_once_and_train_shards_are_equal_and_disjoint():
    n = 23
    for world in (1, 2, 3):
        eval_idx = [i for r in range(world) for i, _ in ShardSampler(n, shuffle=False, rank=r, world=world)]
        assert sorted(eval_idx) == list(range(n))
        shards = [list(ShardSampler(n, shuffle=True, seed=5, rank=r, world=world, equal_shards=True))
                  for r in range(world)]
        assert {len(s) for s in shards} == {n // world}
        flat = [i for s in shards for i, _ in s]
        assert len(set(flat)) == len(flat)
    # an image's augmentation seed does not depend on how many processes share the epoch
    one = dict(ShardSampler(n, shuffle=True, seed=5, rank=0, world=1))
    for r in range(2):
        for i, s in ShardSampler(n, shuffle=True, seed=5, rank=r, world=2):
            assert one[i] == s
    a, b = ShardSampler(n, shuffle=True, seed=5, rank=0, world=1), ShardSampler(n, shuffle=True, seed=5, rank=0, world=1)
    b.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in b]
    with pytest.raises(DataError, match="rank"):
        ShardSampler(n, shuffle=False, rank=2, world=2)


def test_streamed_evaluation_batches_equal_the_in_memory_loader(png_folder):
    root, _ = png_folder
    memory = load_data(str(root), stream=False, val_fraction=0.2)
    streamed = load_data(str(root), stream=True, val_fraction=0.2)
    assert isinstance(streamed.train, FolderDataset) and streamed.train.classes == memory.train.classes
    assert torch.equal(streamed.train.labels, memory.train.labels)
    assert torch.equal(streamed.test.labels, memory.test.labels)
    for split in ("train", "test"):
        mine, ref = getattr(streamed, split), getattr(memory, split)
        ds = FolderDataset(mine.files, mine.labels, mine.classes, ref.mean, ref.std, image_size=8, resize_size=8)
        got = list(StreamLoader(ds, 4, train=False, num_workers=0))
        want = list(BatchLoader(ref, 4, train=False))
        assert len(got) == len(want)
        for (x, y), (x0, y0) in zip(got, want, strict=True):
            assert torch.equal(y, y0)
            torch.testing.assert_close(x, x0, rtol=0, atol=1e-6)


def test_training_batches_are_seeded_and_independent_of_the_worker_count(png_folder):
    root, _ = png_folder
    train = load_data(str(root), stream=True, val_fraction=0.2).train
    ds = FolderDataset(train.files, train.labels, train.classes, image_size=6)

    def epoch(workers: int, e: int) -> list:
        loader = StreamLoader(ds, 4, train=True, seed=3, num_workers=workers)
        loader.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch(0, 0), epoch(2, 0), epoch(0, 1)
    assert len(a) == len(train) // 4 and a[0][0].shape == (4, 3, 6, 6)
    for (x, y), (x2, y2) in zip(a, b, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not all(torch.equal(x, x2) for (x, _), (x2, _) in zip(a, c, strict=False))


def test_make_loader_picks_the_loader_and_load_data_streams_only_when_asked_or_big(png_folder, tmp_path):
    root, _ = png_folder
    small = load_data(str(root))  # far under the threshold: decoded into memory
    assert not isinstance(small.train, FolderDataset)
    assert isinstance(make_loader(small.train, 4, train=False), BatchLoader)
    from filterprune.data.stream import open_image_folder

    big = open_image_folder(root, val_fraction=0.2, seed=0, stream=None, threshold=100)  # 100 bytes
    assert isinstance(big.train, FolderDataset) and len(big.train) + len(big.val) == 30
    assert isinstance(make_loader(big.train, 4, train=True, num_workers=0), StreamLoader)
    assert open_image_folder(root, val_fraction=0.2, seed=0, stream=None) is None
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    loader = StreamLoader(FolderDataset([str(bad)], torch.zeros(1, dtype=torch.int64), ["a"]), 1, train=False,
                          num_workers=0)
    with pytest.raises(DataError, match="x.jpg: not a readable image"):
        next(iter(loader))


@pytest.mark.parametrize("train", [True, False])
def test_in_memory_shards_put_together_are_the_single_process_batches(train):
    splits = load_data("digits")
    one = list(BatchLoader(splits.train, 60, train=train, seed=4))
    parts = [list(BatchLoader(splits.train, 60, train=train, seed=4, shard=(r, 3))) for r in range(3)]
    assert all(len(p) == len(one) for p in parts)
    for i, (x, y) in enumerate(one):
        torch.testing.assert_close(torch.cat([p[i][0] for p in parts]), x, rtol=0, atol=0)
        assert torch.equal(torch.cat([p[i][1] for p in parts]), y)
    with pytest.raises(DataError, match="multiple"):
        BatchLoader(splits.train, 61, train=True, shard=(0, 2))


def test_make_loader_passes_the_shard_to_the_in_memory_loader():
    train = load_data("digits").train
    loader = make_loader(train, 64, train=True, shard=(1, 2))
    assert loader.shard == (1, 2) and next(iter(loader))[0].shape[0] == 32
