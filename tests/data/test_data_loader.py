"""BatchLoader: batched crop/flip against a per-image reference, coverage, determinism, eval mode."""

from __future__ import annotations

import pytest
import torch

from filterprune.data import ArrayDataset, BatchLoader, crop_flip
from filterprune.data.synthetic import synthetic_dataset
from filterprune.errors import DataError


def reference_crop_flip(img: torch.Tensor, pad: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """One image, the obvious way: zero canvas, paste, slice, mirror."""
    c, h, w = img.shape
    canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    canvas[:, pad : pad + h, pad : pad + w] = img
    out = canvas[:, dy : dy + h, dx : dx + w]
    return out.flip(-1) if flip else out


def reference_normalise(x: torch.Tensor, ds: ArrayDataset) -> torch.Tensor:
    mean = torch.tensor(ds.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float64).view(-1, 1, 1)
    return (x.to(torch.float64) / 255 - mean) / std


def labelled_by_index(n: int, **kw) -> ArrayDataset:
    """Synthetic data whose label is the image index, so batches reveal which images they hold."""
    ds = synthetic_dataset(n, num_classes=n, **kw)
    ds.labels = torch.arange(n)
    return ds


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pad", [0, 1, 4])
def test_crop_flip_equals_per_image_reference(pad, channels_last):
    g = torch.Generator().manual_seed(pad)
    x = torch.randint(0, 256, (16, 3, 9, 9), dtype=torch.uint8, generator=g)
    dy = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    fl = torch.rand(16, generator=g) < 0.5
    out = crop_flip(x, pad, dy, dx, fl, channels_last=channels_last)
    ref = torch.stack(
        [reference_crop_flip(x[i], pad, int(dy[i]), int(dx[i]), bool(fl[i])) for i in range(16)]
    )
    assert torch.equal(out, ref)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


def test_crop_flip_extremes_are_shifted_copies():
    x = torch.randint(1, 256, (2, 1, 5, 5), dtype=torch.uint8)
    out = crop_flip(x, 2, torch.tensor([0, 4]), torch.tensor([0, 4]), None)
    assert torch.equal(out[0, :, 2:, 2:], x[0, :, :3, :3]) and out[0, :, :2].eq(0).all()
    assert torch.equal(out[1, :, :3, :3], x[1, :, 2:, 2:]) and out[1, :, 3:].eq(0).all()
    centred = crop_flip(x, 2, None, None, torch.tensor([True, False]))
    assert torch.equal(centred[0], x[0].flip(-1)) and torch.equal(centred[1], x[1])


def test_train_batches_equal_reference_built_from_the_plan():
    ds = labelled_by_index(37, image_size=8)
    loader = BatchLoader(ds, 8, train=True, seed=5, drop_last=False)
    loader.set_epoch(3)
    batches = list(loader)
    plan = loader.plan(3)
    pos = 0
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        for j in range(x.shape[0]):
            k = int(plan.order[pos])
            assert int(y[j]) == k
            ref = reference_crop_flip(
                ds.images[k], ds.pad, int(plan.dy[pos]), int(plan.dx[pos]), bool(plan.flip[pos])
            )
            assert torch.allclose(x[j].double(), reference_normalise(ref, ds), atol=1e-5)
            pos += 1
    assert pos == 37


def test_every_image_once_per_epoch():
    ds = labelled_by_index(50, image_size=4)
    loader = BatchLoader(ds, 8, train=True, drop_last=False)
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(50))
    dropped = BatchLoader(ds, 8, train=True)  # drop_last defaults to train
    seen = torch.cat([y for _, y in dropped])
    assert len(dropped) == 6 and len(seen) == 48 and len(set(seen.tolist())) == 48


def test_same_seed_and_epoch_give_same_batches_and_resume_needs_no_state():
    ds = synthetic_dataset(40, image_size=8)
    run = BatchLoader(ds, 16, train=True, seed=2)
    epochs = [[(x.clone(), y.clone()) for x, y in run] for _ in range(3)]  # bare loop: epochs 0, 1, 2
    resumed = BatchLoader(ds, 16, train=True, seed=2)
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])  # epochs differ
    other = BatchLoader(ds, 16, train=True, seed=3)
    assert not torch.equal(next(iter(other))[1], epochs[0][0][1])  # seeds differ


def test_eval_mode_is_ordered_unaugmented_and_keeps_last_batch():
    ds = labelled_by_index(21, image_size=6)
    loader = BatchLoader(ds, 8, train=False)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [8, 8, 5]
    x = torch.cat([b[0] for b in batches])
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(21))
    assert torch.allclose(
        x.double(), torch.stack([reference_normalise(im, ds) for im in ds.images]), atol=1e-5
    )
    assert torch.equal(torch.cat([b[0] for b in loader]), x)  # every pass identical


def test_no_augmentation_when_dataset_says_so():
    ds = labelled_by_index(10, image_size=4)
    ds.pad, ds.flip = 0, False
    x, y = next(iter(BatchLoader(ds, 10, train=True)))
    assert torch.allclose(
        x.double(), torch.stack([reference_normalise(ds.images[int(k)], ds) for k in y]), atol=1e-5
    )


def test_channels_last_and_dtype():
    ds = synthetic_dataset(8, image_size=8)
    for train in (True, False):
        x, _ = next(iter(BatchLoader(ds, 4, train=train, channels_last=True, dtype=torch.float64)))
        assert x.dtype == torch.float64 and x.is_contiguous(memory_format=torch.channels_last)
    a = next(iter(BatchLoader(ds, 4, train=True, seed=1)))[0]
    b = next(iter(BatchLoader(ds, 4, train=True, seed=1, channels_last=True)))[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 20}, "no full batch"),
        ({"seed": -1}, "seed"),
        ({"dtype": torch.int32}, "floating"),
    ],  # fmt: skip
)
def test_bad_arguments_raise_data_error(kwargs, match):
    args = {"batch_size": 4, **kwargs}
    with pytest.raises(DataError, match=match):
        BatchLoader(synthetic_dataset(10, image_size=4), args.pop("batch_size"), train=True, **args)


@pytest.mark.gpu
def test_cuda_batches_equal_cpu_batches():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ds = synthetic_dataset(64, image_size=8)
    cpu = list(BatchLoader(ds, 16, train=True, seed=4))
    gpu = list(BatchLoader(ds, 16, train=True, seed=4, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)
