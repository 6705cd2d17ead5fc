"""CAR's suffix replay (criteria/_car_fast.py, criteria/_suffix.py) against the naive engine, one masked full
evaluation per channel, on the shapes of network the fast path has special code for: two members on one
consumer, a group no mask of which reaches the output, buffers read in forward, a 1-D input, a cache
reused across calls; and its refusals, word for word."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from criteria_nets import member, two_conv
from torch import nn

from filterprune.criteria._car_fast import CarEngine
from filterprune.criteria._suffix import FastPathUnavailable, SuffixGraph
from filterprune.graph import ChannelGroup, Member
from filterprune.graph.trace import trace_groups


def _labelled(model, xs, seed=0):
    """The classifier's bias centres the logits (random nets predict one class for all inputs), then every
    other sample is labelled with the model's own prediction, so that masks move the accuracy."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        [m for m in model.modules() if isinstance(m, nn.Linear)][-1].bias -= torch.cat([model(x) for x in xs]).mean(0)
        for x in xs:
            pred = model(x).argmax(1)
            out.append((x, torch.where(torch.arange(len(x)) % 2 == 0, pred, torch.randint(0, 10, pred.shape, generator=g))))
    return out


def _assert_same_stats(fast, naive):
    """[correct, loss sum, correct per class]: counts exactly, the float32 loss up to summation order."""
    assert torch.equal(fast.base[[0, *range(2, fast.base.numel())]], naive.base[[0, *range(2, naive.base.numel())]])
    assert torch.equal(fast.rows[:, [0, *range(2, fast.rows.shape[1])]], naive.rows[:, [0, *range(2, naive.rows.shape[1])]])
    torch.testing.assert_close(fast.rows[:, 1], naive.rows[:, 1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fast.base[1], naive.base[1], rtol=1e-5, atol=1e-4)


def _requests(groups):
    return [(g, c) for g in groups if g.prunable for c in range(g.size)]


def _fast_and_naive(model, groups, batches, **kw):
    fast = CarEngine(model, groups, batches, **kw)
    naive = CarEngine(model, groups, batches, fast=False, **kw)
    assert fast.fast and not naive.fast
    return fast, naive


def _traced_fast_and_naive(net, x_shape, batch_shape):
    """``net()`` seeded, traced on a ``x_shape`` input, with both engines on one labelled ``batch_shape`` batch."""
    torch.manual_seed(0)
    model, x = net().eval(), torch.randn(*x_shape)
    groups = trace_groups(model, x)
    batches = _labelled(model, [torch.randn(*batch_shape, generator=torch.Generator().manual_seed(1))])
    return (groups, *_fast_and_naive(model, groups, batches))


# ---- networks -------------------------------------------------------------------------------------


class CatTwice(nn.Module):
    """conv2 reads conv1's channels twice (``cat([a, a])``): channel c is input c and c + 4 of conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 10)

    def forward(self, x):
        a = F.relu(self.conv1(x))
        return self.fc(F.relu(self.conv2(torch.cat([a, a], 1))).mean((2, 3)))


def test_two_members_on_one_consumer_zero_both_slices():
    """The group written with conv2 as two "in" members (one per half of the cat): masking channel c
    zeroes conv2's inputs c and c + 4, as the naive engine's masks do."""
    torch.manual_seed(0)
    model = CatTwice().eval()
    groups = [
        ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("conv2", "in", "Conv2d", 4),
                                  Member("conv2", "in", "Conv2d", tuple((c + 4,) for c in range(4))))),
        ChannelGroup("conv2", 6, (member("conv2", "out", "Conv2d", 6), member("fc", "in", "Linear", 6))),
        ChannelGroup("fc", 10, (member("fc", "out", "Linear", 10),), prunable=False),
    ]
    batches = _labelled(model, [torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))])
    fast, naive = _fast_and_naive(model, groups, batches)
    f, v = fast.evaluate(_requests(groups)), naive.evaluate(_requests(groups))
    _assert_same_stats(f, v)
    assert bool((f.rows[:4, 1] != f.base[1]).all())  # every conv1 mask changes the loss: not vacuous


class DeadBranch(nn.Module):
    """conv1 feeds only ``side``, whose result is thrown away: no mask of conv1's group reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.side = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.conv0, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 10)

    def forward(self, x):
        self.side(F.relu(self.conv1(x)))
        return self.fc(F.relu(self.conv0(x)).mean((2, 3)))


def test_a_group_that_does_not_reach_the_output_scores_the_unmasked_network():
    torch.manual_seed(0)
    model = DeadBranch().eval()
    groups = [
        ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("side", "in", "Conv2d", 4))),
        ChannelGroup("conv0", 6, (member("conv0", "out", "Conv2d", 6), member("fc", "in", "Linear", 6))),
        ChannelGroup("fc", 10, (member("fc", "out", "Linear", 10),), prunable=False),
    ]
    batches = _labelled(model, [torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(1))])
    fast, naive = _fast_and_naive(model, groups, batches)
    assert not fast.plan(groups[0]).reaches_output
    for requests in (_requests(groups), [(groups[0], c) for c in range(4)]):
        f, v = fast.evaluate(requests), naive.evaluate(requests)
        _assert_same_stats(f, v)
        assert torch.equal(f.rows[:4], f.base.expand(4, -1))  # conv1's masks change nothing


class ReadsABuffer(nn.Module):
    """The forward reads a buffer directly (an fx ``get_attr`` node inside every suffix)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1), nn.Linear(6, 10)
        self.register_buffer("shift", torch.linspace(-1, 1, 10))

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3))) + self.shift


def test_a_buffer_read_in_forward_is_replayed():
    groups, fast, naive = _traced_fast_and_naive(ReadsABuffer, (2, 3, 6, 6), (6, 3, 6, 6))
    _assert_same_stats(fast.evaluate(_requests(groups)), naive.evaluate(_requests(groups)))


class ScalarInput(nn.Module):
    """One number per sample, input shape ``(n,)``; the last op adds the raw input back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(1, 8), nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x.unsqueeze(1)))))
        return (self.fc3(h).t() + x).t()


def test_a_one_dimensional_input_is_a_batch_tensor_of_the_suffix():
    """The suffix reads the (n,) input itself: it is cached and repeated per copy like any batch tensor."""
    groups, fast, naive = _traced_fast_and_naive(ScalarInput, (5,), (12,))
    assert "x" in [f.name for f in fast.plan(groups[0]).frontier]
    _assert_same_stats(fast.evaluate(_requests(groups)), naive.evaluate(_requests(groups)))


# ---- the cache and batching ------------------------------------------------------------------------


def test_a_call_without_cache_after_a_cached_one_gives_the_same_stats():
    """cache=True keeps both groups' activations; the next cache=False call frees each group when it is
    done, so its baseline must re-run the first group's prefix: the numbers stay the naive ones."""
    model, _, groups = two_conv()
    batches = _labelled(model, [torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    fast, naive = _fast_and_naive(model, groups, batches)
    requests = _requests(groups)
    expected = naive.evaluate(requests)
    _assert_same_stats(fast.evaluate(requests, cache=True), expected)
    _assert_same_stats(fast.evaluate(requests), expected)
    _assert_same_stats(fast.evaluate(requests, cache=True), expected)
    assert bool((expected.rows[:, 0] != expected.base[0]).any())  # some mask moves the accuracy


def test_no_suffix_forward_is_larger_than_max_rows():
    """max_rows=30 with batches of 12: 2 masked copies (24 rows) per forward, never more."""
    model, _, groups = two_conv()
    batches = _labelled(model, [torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))])
    fast, naive = _fast_and_naive(model, groups, batches, max_rows=30)
    rows: list[int] = []
    handle = model.fc.register_forward_hook(lambda m, args, out: rows.append(int(args[0].shape[0])))
    try:
        stats = fast.evaluate(_requests(groups))
    finally:
        handle.remove()
    assert max(rows) == 24 and sum(r for r in rows if r != 12) == 12 * 10  # 4 + 6 masked copies of 12 images
    _assert_same_stats(stats, naive.evaluate(_requests(groups)))


# ---- refusals --------------------------------------------------------------------------------------


def test_plan_without_a_traced_graph_is_refused():
    model, _, groups = two_conv()
    engine = CarEngine(model, groups, [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))], fast=False)
    with pytest.raises(FastPathUnavailable, match=r"^no traced graph$"):
        engine.plan(groups[0])


class SecondCallDiffers(nn.Module):
    """Adds 1 on every other call: the fx trace and the next eager call always disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(F.relu(self.conv1(x)).mean((2, 3)))
        return out + 1 if self.calls % 2 == 0 else out


def test_a_trace_that_disagrees_with_the_model_is_refused(caplog):
    model, x = SecondCallDiffers().eval(), torch.randn(2, 3, 6, 6)
    groups = [ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("fc", "in", "Linear", 4))),
              ChannelGroup("fc", 10, (member("fc", "out", "Linear", 10),), prunable=False)]
    with torch.no_grad(), pytest.raises(
            FastPathUnavailable, match=r"^the traced graph disagrees with the model \(data-dependent control flow\?\)$"):
        SuffixGraph(model, groups, x)
    with caplog.at_level(logging.WARNING, logger="filterprune.criteria._car_fast"):
        assert not CarEngine(model, groups, [(x, torch.tensor([0, 1]))]).fast
    assert caplog.messages == ["CAR: fast path unavailable, one full evaluation per channel: the traced graph "
                               "disagrees with the model (data-dependent control flow?)"]


class TupleForBigBatches(nn.Linear):
    """A classifier that returns its output in a tuple when called on more than 8 samples."""

    def forward(self, x):
        out = super().forward(x)
        return (out,) if x.shape[0] > 8 else out


class BigBatchTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.fc = nn.Conv2d(3, 4, 3, padding=1), TupleForBigBatches(4, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv1(x)).mean((2, 3)))


def test_a_suffix_that_does_not_return_a_tensor_is_refused():
    """Probed on 4 samples the model returns a tensor; the suffix runs 4 masked copies (16 rows) at once."""
    torch.manual_seed(0)
    model, x = BigBatchTuple().eval(), torch.randn(4, 3, 6, 6)
    groups = [ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("fc", "in", "Linear", 4))),
              ChannelGroup("fc", 10, (member("fc", "out", "Linear", 10),), prunable=False)]
    engine = CarEngine(model, groups, [(x, torch.tensor([0, 1, 2, 3]))])
    assert engine.fast
    with pytest.raises(FastPathUnavailable, match=r"^suffix did not produce the output tensor$"):
        engine.evaluate(_requests(groups))


# ---- in-place ops ----------------------------------------------------------------------------------


def add_one(x, inplace=False):
    """A user function traced as one call (``torch.fx.wrap``) that can write into its input."""
    return x.add_(1) if inplace else x + 1


torch.fx.wrap("add_one")


class InplaceAfterRead(nn.Module):
    """conv2 reads ``a``; then an in-place op rewrites ``a``, which the classifier reads afterwards."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(8, 10)

    def forward(self, x):
        a = self.conv1(x)
        y = self.conv2(a)
        if self.how == "function":
            torch.relu_(a)
        else:
            add_one(a, inplace=True)
        return self.fc(torch.cat([a.mean((2, 3)), y.mean((2, 3))], 1))


@pytest.mark.parametrize(("how", "node"), [("function", "relu_"), ("keyword", "add_one")])
def test_an_inplace_call_whose_input_is_read_later_is_refused(how, node, caplog):
    """torch.relu_(a) (a function named with a trailing underscore) and add_one(a, inplace=True) both
    rewrite ``a`` before ``a.mean`` reads it: the suffix cannot be replayed, CAR falls back to naive."""
    torch.manual_seed(0)
    model, x = InplaceAfterRead(how).eval(), torch.randn(2, 3, 8, 8)
    groups = trace_groups(model, x)
    with torch.no_grad(), pytest.raises(FastPathUnavailable,
                                        match=rf"^in-place op {node} mutates a value read later by mean$"):
        SuffixGraph(model, groups, x)
    with caplog.at_level(logging.WARNING, logger="filterprune.criteria._car_fast"):
        assert not CarEngine(model, groups, [(x, torch.tensor([0, 1]))]).fast
    assert caplog.messages == [f"CAR: fast path unavailable, one full evaluation per channel: in-place op {node} "
                               "mutates a value read later by mean"]


class InplaceResultReadLater(nn.Module):
    """conv2 reads ``a``, then ``z = a.relu_()``: only the result is read later (the fast path allows it),
    but the prefix must keep the ``a`` that conv2 saw, not the rectified one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(8, 10)

    def forward(self, x):
        a = self.conv1(x)
        y = self.conv2(a)
        z = a.relu_()
        return self.fc(torch.cat([z.mean((2, 3)), y.mean((2, 3))], 1))


def test_a_cached_value_that_a_later_inplace_op_rewrites_is_kept_as_read():
    groups, fast, naive = _traced_fast_and_naive(InplaceResultReadLater, (2, 3, 8, 8), (8, 3, 8, 8))
    f, v = fast.evaluate(_requests(groups)), naive.evaluate(_requests(groups))
    _assert_same_stats(f, v)
    assert bool((f.rows[:, 1] != f.base[1]).all())


def test_regression_statistics_are_one_sum_of_squared_errors_per_network():
    """task="regression": base and each row are ``[SSE]``, computed here by masking conv1's channel by hand."""
    model, _, groups = two_conv()
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 10, generator=g)
    for fast in (True, False):
        engine = CarEngine(model, groups, [(xs, ys)], task="regression", fast=fast)
        stats = engine.evaluate([(groups[0], 0), (groups[0], 3)])
        assert stats.base.shape == (1,) and stats.rows.shape == (2, 1)
        with torch.no_grad():
            assert float(stats.base[0]) == pytest.approx(float((model(xs).double() - ys).square().sum()), rel=1e-6)
            for row, c in zip(stats.rows, (0, 3), strict=True):
                saved = model.conv2.weight[:, c].clone()
                model.conv2.weight[:, c] = 0  # channel c zeroed where conv2 reads it
                sse = float((model(xs).double() - ys).square().sum())
                model.conv2.weight[:, c] = saved
                assert float(row[0]) == pytest.approx(sse, rel=1e-6)
