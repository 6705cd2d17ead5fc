"""PLS+VIP's feature collection helpers against hand-computed values (issue 14: mutation survivors in
``filterprune.criteria._features``)."""

import pytest
import torch
from torch import nn

from filterprune.criteria import ScoringError
from filterprune.criteria._features import Block, _capacity, _pool, _quotas, collect_pooled, iter_pooled


@pytest.mark.parametrize("samples, classes, quota, other", [
    (10, 3, [4, 3, 3], 4),      # the remainder goes to the first classes; other labels: floor + 1
    (9, 3, [3, 3, 3], 4),
    (5, 1, [5], 6),
    (2, 4, [1, 1, 0, 0], 1),
])
def test_quotas_split_the_samples_over_the_classes(samples, classes, quota, other):
    q, rest = _quotas(samples, classes)
    assert q.dtype == torch.long and q.tolist() == quota and int(q.sum()) == samples and rest == other


@pytest.mark.parametrize("classes", [None, 0])
def test_no_classes_means_no_quotas(classes):
    assert _quotas(10, classes) == (None, 0)


def test_capacity_is_samples_or_batches_times_batch_size():
    first = torch.zeros(8, 3)
    assert _capacity([1, 2, 3], first, None) == 24 and _capacity(iter([]), first, 5) == 5
    with pytest.raises(ScoringError, match=r"^pls-vip: the data iterable has no len\(\); pass samples=N$"):
        _capacity(iter([]), first, None)


def test_pool_reduces_every_position_of_a_conv_and_of_a_token_linear():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) - 20  # conv output (B, C, H, W)
    conv = nn.Conv2d(1, 3, 1)
    idx = torch.tensor([2, 0])
    assert torch.equal(_pool(x, conv, idx, "max", relu=False), x.amax((2, 3))[:, [2, 0]])
    assert torch.equal(_pool(x, conv, idx, "avg", relu=True), x.relu().mean((2, 3))[:, [2, 0]])
    tokens = x.flatten(2).transpose(1, 2)  # a Linear's (B, T, C): channels last
    assert torch.equal(_pool(tokens, nn.Linear(1, 3), idx, "max", relu=False), x.amax((2, 3))[:, [2, 0]])
    flat = x[:, :, 0, 0]  # (B, C): nothing to pool
    assert torch.equal(_pool(flat, nn.Linear(1, 3), idx, "avg", relu=False), flat[:, [2, 0]])


def test_iter_pooled_refuses_an_unknown_pooling_listing_the_known():
    with pytest.raises(ValueError, match=r"^pooling must be one of max, avg, got 'median'$"):
        next(iter_pooled(nn.Identity(), [], [], pooling="median"))


class _Twice(nn.Module):
    """One conv applied twice per forward pass (weights shared): its block sees two calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x)).mean((2, 3))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_a_module_called_twice_pools_over_both_calls(pooling):
    model, x = _Twice(), torch.randn(4, 3, 6, 6)
    (feats, y), = list(iter_pooled(model, [(x, torch.arange(4))], [Block("conv", (2, 0))], pooling=pooling))
    with torch.no_grad():
        first = model.conv(x)
        second = model.conv(first)
    pool = (lambda t: t.amax((2, 3))) if pooling == "max" else (lambda t: t.mean((2, 3)))
    a, b = pool(first)[:, [2, 0]], pool(second)[:, [2, 0]]
    expected = torch.maximum(a, b) if pooling == "max" else (a + b) / 2
    torch.testing.assert_close(feats, expected)
    assert torch.equal(y, torch.arange(4))


def _labelled(n_batches=6, size=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n_batches)]


def _rows(model, data, **kw):
    out = list(iter_pooled(model, data, [Block("conv", (0, 1, 2))], **kw))
    return torch.cat([f for f, _ in out]), torch.cat([y for _, y in out])


def test_shards_read_disjoint_batches_that_together_are_every_image():
    model, data = _Twice(), _labelled()
    whole, labels = _rows(model, data)
    parts = [_rows(model, data, shard=(r, 2)) for r in (0, 1)]
    assert [len(p[0]) for p in parts] == [15, 15]  # batches 0, 2, 4 and 1, 3, 5
    torch.testing.assert_close(torch.cat([parts[0][0][:5], parts[1][0][:5]]), whole[:10])
    assert sorted(torch.cat([p[1] for p in parts]).tolist()) == sorted(labels.tolist())


def test_shards_split_the_samples_and_each_class_quota():
    # samples=10 over 3 classes: quotas 4, 3, 3. Found by this test: each rank took quota // 2 plus the
    # whole remainder on rank 0 ([2, 2, 2] and [2, 1, 1]), so rank 1 could hold 4 images, not its 5, and
    # the two ranks read 9 of the 10 asked. Now the leftovers are dealt out in turn: [2, 2, 1], [2, 1, 2].
    model, data = _Twice(), _labelled(n_batches=12)
    counts = []
    for rank in (0, 1):
        feats, y = _rows(model, data, samples=10, num_classes=3, shard=(rank, 2))
        assert len(feats) == len(y) == 5
        counts.append(torch.bincount(y, minlength=3).tolist())
    assert counts == [[2, 2, 1], [2, 1, 2]]


@pytest.mark.parametrize("samples, classes, world", [(10, 3, 2), (10, 3, 3), (7, 4, 3), (100, 10, 4), (5, 7, 2)])
def test_the_ranks_quotas_add_up_to_each_class_quota_and_to_each_ranks_samples(samples, classes, world):
    from filterprune.criteria._features import _share

    quota, _ = _quotas(samples, classes)
    parts = [_share(quota, rank, world) for rank in range(world)]
    assert torch.equal(sum(parts), quota)
    assert [int(p.sum()) for p in parts] == [samples // world + (r < samples % world) for r in range(world)]
    assert max(int(p.max() - p.min()) for p in torch.stack(parts).T) <= 1  # even over the ranks, per class


def test_samples_stop_at_exactly_that_many_images_and_only_labels_beyond_the_classes_use_their_quota():
    model = _Twice()
    data = [(torch.randn(4, 3, 6, 6), torch.tensor([5, 5, 5, 0])), (torch.randn(4, 3, 6, 6), torch.tensor([1, 5, 2, 0]))]
    feats, y = _rows(model, data, samples=5, num_classes=3)  # quotas 2, 2, 1; label 5 (no output): 2
    assert y.tolist() == [5, 5, 0, 1, 2] and len(feats) == 5
    feats, y = _rows(model, data, samples=3)  # no classes: the first 3 images
    assert y.tolist() == [5, 5, 5]


def test_select_keeps_within_room_class_quotas_and_the_quota_of_other_labels():
    from filterprune.criteria._features import _select

    y = torch.tensor([0, 3, 3, 1, 0, 3, 2, -1, 0])
    taken, other = torch.zeros(3, dtype=torch.long), {}
    keep = _select(y, torch.tensor([1, 1, 1]), 2, taken, other, samples=10, n=4)  # room 6
    # 0 (class 0), 3, 3 (other labels, quota 2), 1, -, 3 over quota, 2, -1 (an other label), 0 over quota
    assert keep.dtype == torch.long and keep.tolist() == [0, 1, 2, 3, 6, 7]
    assert taken.tolist() == [1, 1, 1] and other == {3: 2, -1: 1}
    assert _select(y, None, 0, torch.zeros(0, dtype=torch.long), {}, samples=7, n=4).tolist() == [0, 1, 2]
    assert _select(y, None, 0, torch.zeros(0, dtype=torch.long), {}, samples=7, n=9).tolist() == []  # no room
    assert _select(y, None, 0, torch.zeros(0), {}, samples=None, n=0) is None
    full = torch.zeros(3, dtype=torch.long)
    assert _select(torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 2]), 0, full, {}, samples=8, n=5).tolist() == [0, 1, 2]


def test_an_odd_sample_count_over_two_ranks_and_labels_without_an_output():
    # 9 samples over 2 ranks: 5 on rank 0, 4 on rank 1; labels 3 and 4 have no model output (3 classes):
    # their quota is 9 // 3 + 1 = 4 in one process, ceil(4 / 2) = 2 per rank
    model = _Twice()
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(6, 3, 6, 6, generator=g), torch.tensor([3, 4, 3, 4, 3, 0])) for _ in range(8)]
    got = [_rows(model, data, samples=9, num_classes=3, shard=(rank, 2))[1] for rank in (0, 1)]
    assert [len(y) for y in got] == [5, 4]
    for y in got:
        assert int((y == 3).sum()) <= 2 and int((y == 4).sum()) <= 2  # the per-rank quota of other labels
    whole = _rows(model, data, samples=9, num_classes=3)[1]
    assert int((whole == 3).sum()) == 4 and int((whole == 4).sum()) == 4 and int((whole == 0).sum()) == 1


# ---- issue 14, session 15: survivors of iter_pooled, collect_pooled, _quotas and _select -------------


class _TwiceSigned(nn.Module):
    """One conv called twice, the second time on ``-2 *`` the first call's output: per image and channel
    sometimes the first call has the larger max, sometimes the second (neither dominates)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(-2 * self.conv(x)).mean((2, 3))


def test_max_pooling_over_two_calls_takes_the_larger_per_image_and_channel():
    model, x = _TwiceSigned(), torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    (feats, _), = list(iter_pooled(model, [(x, torch.arange(6))], [Block("conv", (0, 1, 2))]))
    with torch.no_grad():
        first = model.conv(x)
        a, b = first.amax((2, 3)), model.conv(-2 * first).amax((2, 3))
    assert (a > b).any() and (b > a).any()  # the expected max is neither call alone
    assert torch.equal(feats, torch.maximum(a, b))


class _Counted:
    """Batches that count how many were taken from them; ``length`` is what ``len()`` answers (None: no len)."""

    def __init__(self, batches, length=None):
        self.batches, self.length, self.read = batches, length, 0

    def __iter__(self):
        for batch in self.batches:
            self.read += 1
            yield batch

    def __len__(self):
        return len(self.batches) if self.length is None else self.length


def _numbered(n_batches=6, size=2):
    """Batch i holds images labelled 2i, 2i + 1 (so labels name the images)."""
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.arange(i * size, (i + 1) * size)) for i in range(n_batches)]


def test_reading_stops_at_the_batch_that_fills_the_samples():
    # samples=4 in batches of 2: batches 0 and 1, and not a third batch
    data = _Counted(_numbered())
    feats, y = _rows(_Twice(), data, samples=4)
    assert y.tolist() == [0, 1, 2, 3] and len(feats) == 4 and data.read == 2


def test_a_rank_whose_share_of_the_samples_is_zero_reads_no_further():
    # samples=1 over 2 ranks: rank 1's share is 0; it stops at its first batch (index 1) and yields nothing
    data = _Counted(_numbered())
    assert list(iter_pooled(_Twice(), data, [Block("conv", (0,))], samples=1, shard=(1, 2))) == []
    assert data.read == 2


def test_samples_without_classes_over_two_ranks_take_the_first_images_of_each_share():
    # 7 samples, no classes: rank 0 takes 4 (batches 0 and 2), rank 1 takes 3 (batches 1 and 3)
    got = [_rows(_Twice(), _numbered(), samples=7, shard=(rank, 2))[1].tolist() for rank in (0, 1)]
    assert got == [[0, 1, 4, 5], [2, 3, 6]]


def test_data_running_out_before_the_samples_is_logged_and_enough_data_is_not(caplog):
    with caplog.at_level("INFO", logger="filterprune.criteria._features"):
        assert len(_rows(_Twice(), _numbered(2), samples=4)[1]) == 4
    assert not caplog.records
    with caplog.at_level("INFO", logger="filterprune.criteria._features"):
        assert len(_rows(_Twice(), _numbered(1), samples=4)[1]) == 2
    assert [r.getMessage() for r in caplog.records] == ["pls-vip: data ran out after 2 of 4 requested images"]


class _Tokens(nn.Module):
    """A Linear on (B, T, C) tokens: its channels are the last dim."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x).mean(1)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_a_token_linear_block_pools_over_the_tokens(pooling):
    model, x = _Tokens(), torch.randn(2, 5, 4)
    (feats, _), = list(iter_pooled(model, [(x, torch.arange(2))], [Block("lin", (2, 0))], pooling=pooling))
    with torch.no_grad():
        out = model.lin(x)  # (B, T, C)
    expected = out.amax(1) if pooling == "max" else out.mean(1)
    torch.testing.assert_close(feats, expected[:, [2, 0]])


def test_a_block_without_channels_adds_no_column():
    model, x = _Twice(), torch.randn(2, 3, 6, 6)
    (feats, _), = list(iter_pooled(model, [(x, torch.arange(2))], [Block("conv", ()), Block("conv", (1,))]))
    alone, = list(iter_pooled(model, [(x, torch.arange(2))], [Block("conv", (1,))]))
    assert feats.shape == (2, 1) and torch.equal(feats, alone[0])


def test_a_forward_run_between_batches_does_not_write_into_the_batch_already_yielded():
    # the hooks stay on the model while the generator waits; a forward the caller runs then must not
    # reach the buffer that was handed out (today such a forward fails inside the hook instead)
    import contextlib

    model = _Twice()
    batches = iter_pooled(model, _numbered(2), [Block("conv", (0, 1, 2))])
    feats, _ = next(batches)
    kept = feats.clone()
    with contextlib.suppress(TypeError), torch.no_grad():
        model(10 * torch.randn(2, 3, 6, 6))
    batches.close()
    assert torch.equal(feats, kept)


def test_batches_are_float32_whatever_the_default_dtype():
    # found by this test (issue 14): the batch buffer took torch's default dtype, float64 under
    # torch.set_default_dtype(torch.float64), against the documented float32
    model, data = _Twice(), _numbered(2)
    torch.set_default_dtype(torch.float64)
    try:
        dtypes = [f.dtype for f, _ in iter_pooled(model, data, [Block("conv", (0,))])]
        x_mat, _ = collect_pooled(model, data, [Block("conv", (0,))])
    finally:
        torch.set_default_dtype(torch.float32)
    assert dtypes == [torch.float32, torch.float32] and x_mat.dtype == torch.float32


def test_collect_pooled_matrix_is_float32_under_a_float64_default_dtype():
    model, data = _Twice(), _numbered(2)
    torch.set_default_dtype(torch.float64)
    try:
        x_mat, y = collect_pooled(model, data, [Block("conv", (0, 2))], samples=3)
    finally:
        torch.set_default_dtype(torch.float32)
    assert x_mat.dtype == torch.float32 and x_mat.shape == (3, 2) and y.tolist() == [0, 1, 2]


def test_more_images_than_len_promised_warn_once_and_stop_reading(caplog):
    # len() says 2 batches and the first has 2 images: room for 4 rows; the second batch (4 images) fills
    # it half, which warns once; a third batch is never read
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(b, 3, 6, 6, generator=g), torch.arange(10 * i, 10 * i + b)) for i, b in enumerate((2, 4, 4))]
    data = _Counted(batches, length=2)
    with caplog.at_level("WARNING", logger="filterprune.criteria._features"):
        x_mat, y = collect_pooled(_Twice(), data, [Block("conv", (0,))])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "pls-vip: more images than len(data) promised; using the first 4")]
    assert y.tolist() == [0, 1, 10, 11] and x_mat.shape == (4, 1) and data.read == 2


def test_collect_pooled_refuses_data_whose_only_batch_is_empty_and_keeps_a_single_image():
    model = _Twice()
    empty = [(torch.randn(0, 3, 6, 6), torch.zeros(0, dtype=torch.long))]
    with pytest.raises(ScoringError, match=r"^pls-vip: the data yielded no image$"):
        collect_pooled(model, empty, [Block("conv", (0,))])
    x = torch.randn(1, 3, 6, 6)
    x_mat, y = collect_pooled(model, [(x, torch.tensor([7]))], [Block("conv", (2, 0))])
    with torch.no_grad():
        first = model.conv(x)
        expected = torch.maximum(first.amax((2, 3)), model.conv(first).amax((2, 3)))[:, [2, 0]]
    assert y.tolist() == [7]
    torch.testing.assert_close(x_mat, expected)


def test_collect_pooled_hands_its_device_and_classes_to_the_batch_reader(monkeypatch):
    import filterprune.criteria._features as features_mod

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return iter_pooled(*args, **kwargs)

    monkeypatch.setattr(features_mod, "iter_pooled", spy)
    collect_pooled(_Twice(), _numbered(2), [Block("conv", (0,))], samples=3, pooling="avg",
                   device=torch.device("cpu"), num_classes=5)
    assert calls == [{"samples": 3, "pooling": "avg", "device": torch.device("cpu"), "num_classes": 5}]


def test_quotas_of_a_huge_sample_count_are_exact_integers():
    # integer division: 10**17 + 1 images over 3 classes, beyond float64's exact integers
    q, rest = _quotas(10**17 + 1, 3)
    assert q.tolist() == [33333333333333334, 33333333333333334, 33333333333333333]
    assert rest == 33333333333333334


def test_select_takes_the_first_image_of_a_label_without_output_under_a_quota_of_one():
    from filterprune.criteria._features import _select

    other = {}
    keep = _select(torch.tensor([7, 7, 0]), torch.tensor([1, 1]), 1, torch.zeros(2, dtype=torch.long), other,
                   samples=2, n=0)
    assert keep.tolist() == [0, 2] and other == {7: 1}


def test_select_with_every_quota_full_returns_an_empty_index_that_can_index_the_batch():
    from filterprune.criteria._features import _select

    keep = _select(torch.tensor([0, 1]), torch.tensor([1, 1]), 0, torch.ones(2, dtype=torch.long), {}, samples=5, n=2)
    assert keep.dtype == torch.long and keep.tolist() == []
    assert torch.zeros(2, 3)[keep].shape == (0, 3)


def test_iter_pooled_streams_an_iterable_without_a_length():
    # every image of a generator (no len()): only collect_pooled, which sizes a matrix, needs a length
    data = _numbered(3)
    got = list(iter_pooled(_Twice(), (batch for batch in data), [Block("conv", (0,))]))
    assert torch.cat([y for _, y in got]).tolist() == list(range(6))


class _Stream(torch.utils.data.IterableDataset):
    """Images labelled 0..5, one at a time: a DataLoader over it has __len__, but len() raises TypeError."""

    def __iter__(self):
        g = torch.Generator().manual_seed(6)
        for i in range(6):
            yield torch.randn(3, 6, 6, generator=g), i


def test_samples_from_a_loader_without_a_length_are_read_without_asking_its_length():
    loader = torch.utils.data.DataLoader(_Stream(), batch_size=2)
    assert _rows(_Twice(), loader, samples=3)[1].tolist() == [0, 1, 2]


def test_every_image_of_a_loader_without_a_length_is_streamed():
    # found by this test (issue 14): with samples=None iter_pooled asked len() of any iterable with __len__
    # for its progress bar, and a DataLoader over an IterableDataset raises TypeError there
    loader = torch.utils.data.DataLoader(_Stream(), batch_size=2)
    assert _rows(_Twice(), loader)[1].tolist() == list(range(6))
