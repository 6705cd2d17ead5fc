"""PLS+VIP's feature collection helpers against hand-computed values (issue 14: mutation survivors in
``filterprune.criteria._features``)."""

import pytest
import torch
from torch import nn

from filterprune.criteria import ScoringError
from filterprune.criteria._features import _capacity, _pool, _quotas, iter_pooled


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
