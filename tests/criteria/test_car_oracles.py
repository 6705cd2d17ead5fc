"""CAR against hand values and physically pruned copies: the lexicographic tie-break, group restriction,
sharding, option checks, find_group's lookups and messages, the greedy history and RAR greedy
(criteria/car.py, criteria/car_greedy.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from criteria_nets import member, two_conv

from filterprune.criteria import ScoringContext
from filterprune.criteria._car_fast import EvalStats
from filterprune.criteria.car import CAR, CarResult, car_analysis, stats_to_result
from filterprune.criteria.car_greedy import car_prune_layer, find_group, steps_for_k
from filterprune.graph import ChannelGroup, PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from models_zoo import build


def _data(n_batches: int = 2, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


def _labelled(model, batches):
    """Centre the classifier's logits, then label every other image with the model's own prediction,
    so that removing a channel moves the accuracy."""
    with torch.no_grad():
        model.fc.bias -= torch.cat([model(x) for x, _ in batches]).mean(0)
        return [(x, torch.where(torch.arange(len(y)) % 2 == 0, model(x).argmax(1), y)) for x, y in batches]


def _pruned_copy(model, x, gid, chans):
    net = copy.deepcopy(model)
    if chans:
        apply_plan(net, trace_groups(model, x), PrunePlan({gid: sorted(chans)}))
    return net.eval()


def _accuracy(net, batches) -> float:
    with torch.no_grad():
        hits = sum(int((net(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * hits / sum(len(y) for _, y in batches)


def _sse(net, batches) -> float:
    with torch.no_grad():
        return float(sum((net(x).double() - y.double()).square().sum() for x, y in batches))


def _ctx(model, x, batches, **kw):
    return ScoringContext(model, x, trace_groups(model, x), data=batches, num_batches=len(batches), **kw)


# ---- the tie-break ---------------------------------------------------------------------------------


def _result(drop, delta_loss, num_images=4):
    return CarResult("accuracy", num_images, 50.0, 1.0, {"g": torch.tensor(drop, dtype=torch.float64)},
                     {"g": torch.tensor(delta_loss, dtype=torch.float64)}, None, None, True)


def test_car_score_adds_the_loss_scaled_to_half_an_accuracy_step():
    """4 images: one accuracy step is 25 points; max|dL| = 2, so lam = 0.5 * 25 / 2 = 6.25."""
    scores = _result([0.0, 25.0, 0.0], [2.0, -1.0, -0.5]).scores("car")["g"]
    torch.testing.assert_close(scores, torch.tensor([12.5, 25.0 - 6.25, -3.125]))
    assert scores.argsort().tolist() == [2, 0, 1]  # CAR first, the loss only among equal CARs


def test_car_score_is_the_accuracy_drop_when_no_loss_moves():
    """Every dL is 0: no tie-break term (and no division by a zero max|dL|)."""
    scores = _result([0.0, 25.0, -25.0], [0.0, 0.0, 0.0]).scores("car")["g"]
    assert torch.equal(scores, torch.tensor([0.0, 25.0, -25.0]))


# ---- car_analysis ----------------------------------------------------------------------------------


def test_groups_restricts_the_analysis_to_the_named_groups():
    model, x, _ = two_conv()
    batches = _labelled(model, _data())
    res = car_analysis(_ctx(model, x, batches), groups=("conv2", "nope"))
    assert list(res.drop) == ["conv2"] and list(res.delta_loss) == ["conv2"]
    base = _accuracy(model, batches)
    expected = [base - _accuracy(_pruned_copy(model, x, "conv2", [c]), batches) for c in range(6)]
    torch.testing.assert_close(res.drop["conv2"], torch.tensor(expected, dtype=torch.float64))
    assert any(e != 0 for e in expected)


def test_max_rows_reaches_the_engine():
    model, x, _ = two_conv()
    with pytest.raises(ValueError, match=r"^max_rows must be >= 1, got 0$"):
        car_analysis(_ctx(model, x, _data(1)), max_rows=0)


def _fake_processes(monkeypatch, rank, world, other_rows=None):
    """Pretend this is process ``rank`` of ``world``; the all-reduce adds ``other_rows`` (the other
    processes' share) and records what it was given."""
    import filterprune.distributed as distributed

    sent = []

    def all_reduce_sum(t):
        sent.append(t.clone())
        return t if other_rows is None else t + other_rows

    monkeypatch.setattr(distributed, "current_shard", lambda: (rank, world))
    monkeypatch.setattr(distributed, "all_reduce_sum", all_reduce_sum)
    return sent


def test_distributed_false_scores_every_filter_even_inside_a_process_group(monkeypatch):
    model, x, _ = two_conv()
    batches = _labelled(model, _data())
    whole = car_analysis(_ctx(model, x, batches))
    sent = _fake_processes(monkeypatch, 1, 2)
    alone = car_analysis(_ctx(model, x, batches), distributed=False)
    assert sent == []
    for gid in whole.drop:
        assert torch.equal(alone.drop[gid], whole.drop[gid])
    assert any(bool(d.any()) for d in whole.drop.values())


@pytest.mark.parametrize("distributed", [True, "auto"])
def test_two_processes_each_score_half_and_the_all_reduce_gathers_the_whole(monkeypatch, distributed):
    model, x, _ = two_conv()
    batches = _labelled(model, _data())
    whole = car_analysis(_ctx(model, x, batches))
    sent1 = _fake_processes(monkeypatch, 1, 2)
    car_analysis(_ctx(model, x, batches), distributed=distributed)
    (rows1,) = sent1
    assert not rows1[0::2].any() and bool((rows1[1::2, 1] > 0).all())  # process 1 filled the odd rows only
    sent0 = _fake_processes(monkeypatch, 0, 2, other_rows=rows1)
    gathered = car_analysis(_ctx(model, x, batches), distributed=distributed)
    assert len(sent0) == 1 and not sent0[0][1::2].any()
    for gid in whole.drop:
        assert torch.equal(gathered.drop[gid], whole.drop[gid])


@pytest.mark.parametrize("k", [1.5, "2", 0])
def test_car_refuses_a_k_that_is_not_a_positive_integer(k):
    with pytest.raises(ValueError, match=rf"^k must be a positive integer, got {k!r}$"):
        CAR(k=k)


# ---- find_group ------------------------------------------------------------------------------------


def _hand_groups():
    _, _, groups = two_conv()
    fc = ChannelGroup("fc", 10, (member("fc", "out", "Linear", 10),), prunable=False, reason="the logits")
    return groups[:2] + [fc]


@pytest.mark.parametrize(("layer", "gid"), [("conv1", "conv1"), ("bn1", "conv1"), ("conv2", "conv2"),
                                            ("bn2", "conv2")])
def test_find_group_by_id_or_by_a_layer_that_outputs_its_channels(layer, gid):
    """bn1 outputs conv1's channels; conv2 consumes them but outputs its own group's."""
    assert find_group(_hand_groups(), layer).id == gid


def test_find_group_names_every_group_when_none_matches():
    with pytest.raises(ValueError, match=r"^no channel group for layer 'fc1'; groups: conv1, conv2, fc$"):
        find_group(_hand_groups(), "fc1")


def test_find_group_refuses_a_group_that_is_not_prunable_with_its_reason():
    with pytest.raises(ValueError, match=r"^group fc is not prunable: the logits$"):
        find_group(_hand_groups(), "fc")


# ---- greedy ----------------------------------------------------------------------------------------


def test_greedy_history_numbers_the_steps_and_records_each_base_accuracy():
    """Step i's base is the accuracy with the filters of the earlier steps removed (pruned copies)."""
    model, x, _ = two_conv()
    batches = _labelled(model, _data())
    result = car_prune_layer(copy.deepcopy(model), x, batches, "conv2", 3, k=1, apply=False)
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert [h["removed"] for h in result.history] == [[c] for c in result.removed]
    for i, h in enumerate(result.history):
        base = _accuracy(_pruned_copy(model, x, "conv2", result.removed[:i]), batches)
        after = _accuracy(_pruned_copy(model, x, "conv2", result.removed[: i + 1]), batches)
        assert h["base"] == pytest.approx(base, abs=1e-9)
        assert h["drop"] == [pytest.approx(base - after, abs=1e-9)]


def test_greedy_rar_removes_the_filter_whose_removal_raises_the_squared_error_least():
    """metric="r2": each step removes the filter with the smallest SSE increase (brute force on copies)."""
    model, x, _ = two_conv()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
    with torch.no_grad():
        batches = [(xx, model(xx) + 0.1 * torch.randn(8, 10, generator=g)) for xx in xs]
    removed: list[int] = []
    for _ in range(2):
        sse = {c: _sse(_pruned_copy(model, x, "conv1", removed + [c]), batches) for c in range(4) if c not in removed}
        removed.append(min(sse, key=sse.get))
    result = car_prune_layer(copy.deepcopy(model), x, batches, "conv1", 2, metric="r2", loss_fn=F.mse_loss,
                             apply=False)
    assert result.removed == removed


def test_steps_for_k_counts_only_the_channels_the_tracer_may_prune():
    """conv_chain has 16 + 24 + 32 prunable channels; ignoring block2.0 leaves 48, half of them is 24."""
    model, x = build("conv_chain")
    assert steps_for_k(model, x, 1, ratio=0.5, ignored_layers=["block2.0"]) == 24
    assert steps_for_k(model, x, 4, ratio=0.5, ignored_layers=["block2.0"]) == 6


def test_stats_to_result_refuses_more_group_ids_than_row_blocks():
    """RAR rows split into one block per id: an id without a block is an error, not silently dropped."""
    batches = [(torch.zeros(2, 3), torch.tensor([[0.0], [2.0]]))]
    stats = EvalStats(torch.tensor([2.0], dtype=torch.float64), torch.tensor([[4.0], [6.0]], dtype=torch.float64))
    res = stats_to_result("neg_mse", ["a"], [2], batches, stats, True)
    assert res.base == -1.0 and torch.equal(res.drop["a"], torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        stats_to_result("neg_mse", ["a", "b"], [2], batches, stats, True)
