"""Taylor under a data-parallel loader: the share's t_b is all-reduced before squaring (criteria/taylor.py).

One process is simulated: ``ctx.data`` carries ``shard = (0, 2)`` as a :class:`~filterprune.data.BatchLoader`
does, and the all-reduce is replaced by one that adds what the other process would send.
"""

from __future__ import annotations

import torch
from criteria_nets import batches, two_conv

from filterprune.criteria import ScoringContext, create_criterion


class Shard(list):
    """A list of batches that says it is process 0's share of 2 (like ``BatchLoader(shard=(0, 2))``)."""

    shard = (0, 2)


def test_a_sharded_loader_all_reduces_t_before_squaring(monkeypatch):
    """The other process brings as many images and a zero t_b: the global t_b is half this share's
    (the share-size-weighted mean), so every score is a quarter of the unsharded one."""
    import filterprune.criteria.taylor as taylor

    model, x, groups = two_conv()
    data = batches(2)
    calls = []

    def other_process_adds_zero_t(flat):
        calls.append(flat.clone())
        other = torch.zeros_like(flat)
        other[-1] = flat[-1]  # same share size n, t = 0
        return flat + other

    monkeypatch.setattr(taylor, "all_reduce_sum", other_process_adds_zero_t)
    alone = create_criterion("taylor").score(ScoringContext(model, x, groups, data=list(data), num_batches=2))
    assert calls == []  # no shard attribute: one process, nothing to reduce
    sharded = create_criterion("taylor").score(ScoringContext(model, x, groups, data=Shard(data), num_batches=2))
    assert len(calls) == 2 and all(float(c[-1]) == 4 for c in calls)  # n * 1: this share has 4 images
    assert all(c.shape == (4 + 6 + 1,) for c in calls)
    for gid in alone:
        assert float(alone[gid].abs().max()) > 0
        torch.testing.assert_close(sharded[gid], alone[gid] / 4, rtol=1e-5, atol=1e-12)
