"""Selection's plan family against independent oracles.

* ``_Family.analytic``: on models made only of conv / BN / Linear layers the analytic model is exact,
  so its removed fractions must equal ``metrics.count`` on the physically pruned model (and the
  channel ratio a hand count), also against a baseline from an earlier pruning step.
* ``_Family`` sequence: units in score order (global) or in fraction order (layerwise), ``round_to``
  steps, written out by hand for two tiny groups.
* ``_Family._exchange``: with two groups the two-group grid covers every state, so its answer must be
  the cheapest state within ``tol`` found by brute force over all count pairs.
* ``_Family.solve``: lands within ``tol`` whenever some state does (brute force), else returns the
  closest prefix.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
from types import SimpleNamespace

import pytest
import torch

import filterprune.selection as sel
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.metrics import count
from filterprune.selection import Baseline, CostModel, SelectOptions, _candidates, _Family
from models_zoo import build


def _fake_group(gid, size):
    return SimpleNamespace(id=gid, size=size, members=(), prunable=True)


def _family(sizes, scores, opts, base=None):
    """A family over fake groups (no cost model): ``scores[i]`` one score per channel of group i."""
    groups = [_fake_group(str(i), n) for i, n in enumerate(sizes)]
    cands = []
    for g, s in zip(groups, scores, strict=True):
        s = torch.as_tensor(s, dtype=torch.float64)
        order = sorted(range(g.size), key=lambda c: (float(s[c]), c))
        cands.append((g, order, g.size - opts.min_channels, s))
    base = base or Baseline(0, 0, {g.id: g.size for g in groups})
    fam = _Family(cands, opts, base, None)
    if hasattr(fam, "order"):  # the selection package orders units in a separate allocation stage
        fam.order(sel.unit_key(fam, opts, (0, 0)))
    return fam


def _set_grid_budget(monkeypatch, value):
    """Patch the budget where ``_exchange`` reads it (the module defining _Family, whatever selection's layout)."""
    monkeypatch.setattr(sys.modules[_Family.__module__], "_GRID_BUDGET", value)


def test_global_units_follow_the_scores_across_groups():
    fam = _family([3, 2], [[0.5, 0.1, 0.9], [0.3, 0.7]], SelectOptions(ratio=0.5, normalize="none"))
    # channel scores in order: g0:0.1 (1st), g1:0.3, g0:0.5, g1:0.7, g0:0.9 - limits 2 and 1
    assert fam.units == [(0, 1), (1, 1), (0, 2)]
    assert [fam.counts(k) for k in range(4)] == [[0, 0], [1, 0], [1, 1], [2, 1]]
    assert fam.plan([2, 1]).prune_idxs == {"0": [0, 1], "1": [0]}
    assert fam.plan([0, 1]).prune_idxs == {"1": [0]}  # a group removing nothing is not in the plan


def test_layerwise_units_follow_the_removed_fraction():
    fam = _family([4, 2], [[4, 3, 2, 1], [0, 9]], SelectOptions(ratio=0.5, global_ranking=False, min_channels=1))
    # fractions: g0 1/4, 2/4, 3/4; g1 1/2 -> sorted (ties by group index)
    assert fam.units == [(0, 1), (0, 2), (1, 1), (0, 3)]


def test_round_to_keeps_multiples_of_r():
    fam = _family([6], [range(6)], SelectOptions(ratio=0.5, round_to=2, normalize="none"))
    assert fam.units == [(0, 2), (0, 4)]  # keeps 4, then 2 (6 - 5 = 1 is not a multiple of 2)


def test_layerwise_fraction_counts_channels_removed_earlier():
    base = Baseline(0, 0, {"0": 8, "1": 4})
    fam = _family([4, 4], [range(4), range(4)], SelectOptions(ratio=0.5, global_ranking=False), base)
    # g0 already lost 4 of 8: its units sit at 5/8, 6/8, 7/8; g1 at 1/4, 2/4, 3/4
    assert fam.units == [(1, 1), (1, 2), (0, 1), (0, 2), (1, 3), (0, 3)]
    assert fam.analytic([1, 2], (0, 0))["ratio"] == pytest.approx((4 + 1 + 2) / 12)


@pytest.mark.parametrize("name", ["conv_chain", "residual", "concat", "flatten_head", "depthwise"])
def test_analytic_fractions_equal_the_count_of_the_pruned_model(name):
    model, x = build(name)
    x = x[:1]
    groups = trace_groups(model, x)
    macs0, params0 = count(model, x)
    base = Baseline(macs0, params0, {g.id: g.size for g in groups})
    opts = SelectOptions(target_macs=0.5)
    scores = {g.id: torch.randn(g.size, generator=torch.Generator().manual_seed(1)) for g in groups if g.prunable}
    fam = _Family(_candidates(groups, scores, opts, base), opts, base, CostModel(model, x))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        counts = [int(torch.randint(0, limit + 1, (), generator=gen)) for _, _, limit, _ in fam.cands]
        got = fam.analytic(counts, (macs0, params0))
        macs1, params1 = count(apply_plan(copy.deepcopy(model), groups, fam.plan(counts)), x)
        total = sum(g.size for g, *_ in fam.cands)
        assert got["ratio"] == pytest.approx(sum(counts) / total)
        assert got["target_macs"] == pytest.approx(1 - macs1 / macs0, abs=1e-9)
        assert got["target_params"] == pytest.approx(1 - params1 / params0, abs=1e-9)


def _conv_chain_after_a_step():
    """conv_chain on one sample, already pruned once (channels 0 and 1 of every prunable group): the model,
    its input, its groups now, the baseline counted before that step and the (MACs, params) it has now."""
    model, x = build("conv_chain")
    x = x[:1]
    groups = trace_groups(model, x)
    base = Baseline(*count(model, x), {g.id: g.size for g in groups})
    apply_plan(model, groups, PrunePlan({g.id: [0, 1] for g in groups if g.prunable}))
    groups = trace_groups(model, x)
    return model, x, groups, base, count(model, x)


def test_analytic_against_a_baseline_of_an_earlier_step():
    model, x, groups, base, now = _conv_chain_after_a_step()
    macs0, params0 = base.macs, base.params
    opts = SelectOptions(target_macs=0.5)
    scores = {g.id: torch.arange(g.size, dtype=torch.float) for g in groups if g.prunable}
    fam = _Family(_candidates(groups, scores, opts, base), opts, base, CostModel(model, x))
    counts = [1] * len(fam.cands)
    got = fam.analytic(counts, now)
    macs1, params1 = count(apply_plan(copy.deepcopy(model), groups, fam.plan(counts)), x)
    assert got["target_macs"] == pytest.approx(1 - macs1 / macs0, abs=1e-9)
    assert got["target_params"] == pytest.approx(1 - params1 / params0, abs=1e-9)
    removed = sum(2 + 1 for _ in fam.cands)
    assert got["ratio"] == pytest.approx(removed / sum(base.channels[g.id] for g, *_ in fam.cands))


def _weighted(weights):
    """f(counts) = sum(w_i * n_i): a cost-like fraction with known values."""
    return lambda c: sum(w * n for w, n in zip(weights, c, strict=True))


def _brute(fam, f, target, tol):
    states = [list(s) for s in itertools.product(*[[0] + sorted({n for gi, n in fam.units if gi == i})
                                                    for i in range(len(fam.cands))])]
    return [s for s in states if abs(f(s) - target) <= tol]


def _position_cost(fam, counts):
    """Summed sequence positions of the units the counts take (the _exchange docstring's cost)."""
    return sum(pos for pos, (gi, n) in enumerate(fam.units) if n <= counts[gi])


@pytest.mark.parametrize("target", [0.2, 0.3, 0.5, 0.25])
def test_exchange_with_two_groups_returns_the_cheapest_landing_state(target):
    # f counts removed channels (0.1 each): every split of the count lands, the cheapest must win;
    # 0.25 lands nowhere
    fam = _family([5, 4], [[0.1, 0.4, 0.5, 0.8, 0.9], [0.2, 0.3, 0.6, 0.7]], SelectOptions(ratio=0.5, normalize="none"))
    f = _weighted([0.1, 0.1])
    landing = _brute(fam, f, target, 0.01)
    got = fam._exchange([0, 0], f, target, 0.01)
    if not landing:
        assert got is None
    else:
        assert len(landing) > 1
        assert got is not None and abs(f(got) - target) <= 0.01
        assert _position_cost(fam, got) == min(_position_cost(fam, s) for s in landing)


def test_exchange_without_a_landing_state_returns_none():
    fam = _family([3, 3], [[1, 2, 3], [4, 5, 6]], SelectOptions(ratio=0.5, normalize="none"))
    assert fam._exchange([0, 0], _weighted([0.1, 0.1]), 0.05, 0.01) is None


def test_exchange_moves_one_group_up_and_another_down_on_large_families(monkeypatch):
    _set_grid_budget(monkeypatch, 0)
    fam = _family([4, 4], [range(4), range(4, 8)], SelectOptions(ratio=0.5, normalize="none"))
    f = _weighted([0.11, 0.1])
    # from [1, 2] (0.31) no single-group move comes within 0.05 of 0.32; [2, 1] is the only landing state
    assert _brute(fam, f, 0.32, 0.001) == [[2, 1]]
    assert fam._exchange([1, 2], f, 0.32, 0.001) == [2, 1]
    assert fam._exchange([2, 1], f, 0.31, 0.001) == [1, 2]


def test_exchange_walks_towards_the_target_on_large_families(monkeypatch):
    # above the grid budget only "one group up a unit, another down a unit" and single-group moves are
    # tried; with three groups no single move lands but two rounds do
    _set_grid_budget(monkeypatch, 0)
    fam = _family([4, 4, 4], [range(4), range(4, 8), range(8, 12)], SelectOptions(ratio=0.5, normalize="none"))
    f = _weighted([0.01, 0.1, 1.0])
    target = 2.21  # only [1, 2, 2] (or states of equal value) lands
    landing = _brute(fam, f, target, 1e-6)
    assert landing == [[1, 2, 2]]
    got = fam._exchange([3, 3, 0], f, target, 1e-6)
    assert got == [1, 2, 2]


@pytest.mark.parametrize("target", [0.2, 0.35, 0.5, 0.66, 0.9])
def test_solve_lands_within_tol_whenever_a_state_does(target):
    fam = _family([5, 4, 3], [[0.1, 0.4, 0.5, 0.8, 0.9], [0.2, 0.3, 0.6, 0.7], [0.05, 0.55, 0.95]],
                  SelectOptions(ratio=0.5, normalize="none"))
    f = _weighted([0.09, 0.13, 0.21])
    tol = 0.012  # no state sits on the tolerance boundary
    got = fam.solve(f, target, tol)
    if _brute(fam, f, target, tol):
        assert abs(f(got) - target) <= tol
    else:
        best = min(abs(f(fam.counts(k)) - target) for k in range(len(fam.units) + 1))
        assert abs(f(got) - target) <= best + 1e-12


def test_solve_returns_the_shortest_landing_prefix():
    fam = _family([4], [range(4)], SelectOptions(ratio=0.5, normalize="none"))
    f = _weighted([0.25])
    assert fam.solve(f, 0.5, 0.01) == [2]
    assert fam.solve(f, 0.0, 0.01) == [0]
    assert fam.solve(f, 0.7, 0.01) == [3]  # closest: 0.75 (limit 3 of 4)


@pytest.mark.parametrize("budget, expected", [(20, [1, 2]), (19, [3, 0])])
def test_exchange_grid_budget_is_inclusive(monkeypatch, budget, expected):
    # 5 x 4 allowed counts = 20 grid states: at budget 20 every pair is tried and the cheapest landing
    # state [1, 2] wins (cost 3); below it only single-group moves and one-unit exchanges are tried,
    # of which [3, 0] (cost 7) and [0, 3] (cost 8) land
    _set_grid_budget(monkeypatch, budget)
    fam = _family([5, 4], [[0.1, 0.4, 0.5, 0.8, 0.9], [0.2, 0.3, 0.6, 0.7]], SelectOptions(ratio=0.5, normalize="none"))
    assert [_position_cost(fam, s) for s in ([1, 2], [3, 0], [0, 3], [2, 1])] == [3, 7, 8, 4]
    assert fam._exchange([0, 0], _weighted([0.1, 0.1]), 0.3, 0.01) == expected


def test_exchange_can_take_a_group_down_to_zero(monkeypatch):
    _set_grid_budget(monkeypatch, 0)
    fam = _family([4, 4], [range(4), range(4, 8)], SelectOptions(ratio=0.5, normalize="none"))
    f = _weighted([0.11, 0.1])
    assert _brute(fam, f, 0.22, 0.001) == [[2, 0]]
    assert fam._exchange([1, 1], f, 0.22, 0.001) == [2, 0]


def test_exchange_tolerance_is_inclusive():
    # dyadic values: [1] and [3] are exactly tol away from the target, [1] is the cheapest
    fam = _family([4], [range(4)], SelectOptions(ratio=0.5, normalize="none"))
    assert fam._exchange([0], _weighted([0.25]), 0.5, 0.25) == [1]


def test_exchange_stops_where_no_move_gets_closer():
    # three one-unit groups, f = 1 + w.c: only [1, 1, 1] lands, three changes away from [0, 0, 0]; the
    # best one- or two-group move is no closer than the start, so the search gives up
    fam = _family([2, 2, 2], [[0, 1], [2, 3], [4, 5]], SelectOptions(ratio=0.5, normalize="none"))

    def f(c):
        return 1 + c[0] + c[1] - 1.5 * c[2]

    assert _brute(fam, f, 1.5, 0.01) == [[1, 1, 1]]
    assert fam._exchange([0, 0, 0], f, 1.5, 0.01) is None


def test_exchange_on_a_family_without_units():
    fam = _family([1, 1], [[0], [1]], SelectOptions(ratio=0.5, normalize="none"))  # min_channels=1: nothing to cut
    assert fam.units == []
    assert fam._exchange([0, 0], _weighted([0.1, 0.1]), 0.5, 0.01) is None


def _reference_solve(fam, f, target, tol):
    """``_Family.solve`` as its docstring specifies it, written from the docstring (stage 3 delegates to
    ``_exchange``, tested above on its own)."""
    prefixes = [fam.counts(k) for k in range(len(fam.units) + 1)]
    lo = next((k for k, c in enumerate(prefixes) if f(c) >= target), len(fam.units))  # 1. shortest reaching
    tried = [prefixes[k] for k in sorted({max(0, lo - 1), lo})]
    if lo == 0 or any(abs(f(c) - target) <= tol for c in tried):
        return min(tried, key=lambda c: abs(f(c) - target))
    counts, frozen = list(prefixes[lo - 1]), set()  # 2. the following units in order, freezing overshooters
    for gi, ni in fam.units[lo - 1:]:
        if gi in frozen or ni <= counts[gi]:
            continue
        trial = counts[:gi] + [ni] + counts[gi + 1:]
        if f(trial) > target + tol:
            frozen.add(gi)
            continue
        counts = trial
        if f(trial) >= target - tol:
            return counts
    fixed = fam._exchange(counts, f, target, tol)  # 3.
    return fixed if fixed is not None else min(tried + [counts], key=lambda c: abs(f(c) - target))


def test_solve_follows_its_three_stages_on_random_families():
    gen = torch.Generator().manual_seed(0)
    for case in range(150):
        sizes = [int(n) for n in torch.randint(2, 6, (int(torch.randint(1, 4, (), generator=gen)),), generator=gen)]
        scores = [torch.rand(n, generator=gen) for n in sizes]
        fam = _family(sizes, scores, SelectOptions(ratio=0.5, normalize="none"))
        weights = (torch.rand(len(sizes), generator=gen) * 0.3).tolist()
        f = _weighted(weights)
        reach = f(fam.counts(len(fam.units)))  # targets up to a little beyond what the family reaches
        target, tol = float(torch.rand((), generator=gen)) * 1.1 * reach, float(torch.rand((), generator=gen)) * 0.05
        assert fam.solve(f, target, tol) == _reference_solve(fam, f, target, tol), case


def test_cost_keys_are_importance_per_unit_of_cost_written_out():
    # issue 14: allocation="cost"'s keys by hand. Group 0's channel scores 1, 3, 5 and group 1's -2, 4, 0
    # (shift = -2: every importance is score + 2); ratio target: a channel saves 1 / 6 of the channels.
    from filterprune.selection.allocation import cost_keys

    opts = SelectOptions(ratio=0.5, normalize="none", allocation="cost")
    fam = _family([3, 3], [[1.0, 3.0, 5.0], [-2.0, 4.0, 0.0]], opts)
    keys = cost_keys(fam, "ratio", (0, 0))
    # group 0 removes 1 (imp 3), then 3 (imp 5): key = max so far of imp / (1/6)
    assert keys[0] == pytest.approx({1: 18.0, 2: 30.0})
    # group 1 removes -2 (imp 0), then 0 (imp 2)
    assert keys[1] == pytest.approx({1: 0.0, 2: 12.0})

    def cost_fn(group, n):  # group 0: the first channel saves nothing, the second 2; group 1 never saves
        return {"0": [0.0, 0.0, 2.0], "1": [0.0, 0.0, 0.0]}[group.id][n]

    keys = cost_keys(fam, "target_macs", (0, 0), cost_fn)
    assert keys[0] == pytest.approx({1: 4.0, 2: 4.0})  # (3 + 5) / 2 for both: the flat step waits
    assert keys[1] == {1: math.inf, 2: math.inf}  # saves nothing: last
    with pytest.raises(ValueError, match=r"^allocation='cost' with a MACs/params target needs the cost model$"):
        cost_keys(fam, "target_macs", (0, 0))


def test_cost_keys_merge_a_flat_step_after_a_saving_one_and_a_step_of_exactly_flat_saves_nothing():
    # issue 14, session 15. One group, channel scores 1, 3, 5, 7 (importance = score, no shift).
    from filterprune.selection.allocation import _FLAT, cost_keys

    fam = _family([4], [[1.0, 3.0, 5.0, 7.0]], SelectOptions(ratio=0.5, normalize="none", allocation="cost"))
    # saves 1, then nothing, then 2 more: the flat second unit waits for the third, (3 + 5) / 2
    keys = cost_keys(fam, "target_macs", (0, 0), lambda group, n: {1: 1.0, 2: 1.0, 3: 3.0}[n])
    assert keys == [{1: 1.0, 2: 4.0, 3: 4.0}]
    # a first step of exactly _FLAT saves nothing: merged into the second, (1 + 3) / 2; the third is flat: last
    keys = cost_keys(fam, "target_macs", (0, 0), lambda group, n: {1: _FLAT, 2: 2.0, 3: 2.0}[n])
    assert keys == [{1: 2.0, 2: 2.0, 3: math.inf}]


def test_cost_keys_after_an_earlier_step_charge_only_the_macs_this_step_saves():
    # the first key of every group is importance / (MACs saved by its lowest channel, over the baseline's),
    # the saving counted on the physically pruned model; the model is already pruned once, so the
    # fraction removed before this step (about a quarter) must not enter the key
    from filterprune.selection.allocation import cost_keys

    model, x, groups, base, now = _conv_chain_after_a_step()
    macs0 = base.macs
    assert now[0] < 0.9 * macs0
    opts = SelectOptions(target_macs=0.5, normalize="none", allocation="cost")
    scores = {g.id: torch.arange(1.0, g.size + 1) for g in groups if g.prunable}  # channel 0 scores 1
    fam = _Family(_candidates(groups, scores, opts, base), opts, base, CostModel(model, x))
    keys = cost_keys(fam, "target_macs", now)
    for (g, *_), k in zip(fam.cands, keys, strict=True):
        macs1, _ = count(apply_plan(copy.deepcopy(model), groups, PrunePlan({g.id: [0]})), x)
        assert k[1] == pytest.approx(1.0 / ((now[0] - macs1) / macs0), rel=1e-6)
