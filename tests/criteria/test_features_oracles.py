"""PLS+VIP's feature collection helpers against hand-computed values (issue 14: mutation survivors in
``filterprune.criteria._features``)."""

import pytest
import torch
from torch import nn

from filterprune.criteria import ScoringError
from filterprune.criteria._features import Block, _capacity, _pool, _quotas, iter_pooled


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
