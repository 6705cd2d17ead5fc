"""``target_latency``: selection on the table's prediction (against a brute force), the measured refinement,
and ``fp.prune``/CLI end to end, all with the closed-form timer of tests/latency_mocks.py (no real clock)."""

from __future__ import annotations

import json

import pytest
import torch

import filterprune as fp
import latency_mocks as mocks
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.latency_target import LatencyOptions, LatencyTarget, plan_cuts
from filterprune.metrics import latency_table
from filterprune.selection import SelectOptions, select

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _scores(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.size, generator=gen) for g in groups if g.prunable}


def _target(model, rest="fixed", **kw):
    return LatencyTarget(model, X, kw.pop("target", None), options=LatencyOptions(grid_points=4, rounds=1, repeats=1,
                                                                                 warmup=0, rest=rest, **kw),
                         timer=mocks.timer, profiler=mocks.profiler)


@pytest.mark.parametrize("where", [0.2, 0.4, 0.6, 0.8])
def test_selection_meets_the_predicted_target_as_a_brute_force(where):
    model = mocks.net()
    groups = trace_groups(model, X)
    scores = _scores(groups)
    lat = _target(model)
    # brute force: every prefix of the global score order (lowest first, at most 75% of a group), each
    # timed as the physically pruned model under the closed-form timer
    limit = {g.id: int(0.75 * g.size) for g in groups if g.prunable}
    order = sorted((float(s[c]), gid, c) for gid, s in scores.items() for c in range(len(s)))
    prefix, taken = [[]], {gid: [] for gid in limit}
    for _, gid, c in order:
        if len(taken[gid]) < limit[gid]:
            taken[gid].append(c)
            prefix.append([(g, list(cs)) for g, cs in taken.items() if cs])
    base = mocks.timer(model, X)

    def reduction(p):
        return 1 - mocks.timer(apply_plan(mocks.net(), groups, PrunePlan(dict(p))), X) / base

    values = [reduction(p) for p in prefix]
    assert values == sorted(values)
    goal = values[int(where * (len(prefix) - 1))] - 0.003
    k = next(i for i, v in enumerate(values) if v >= goal)  # the shortest prefix reaching the goal
    want = min([k - 1, k], key=lambda i: abs(values[i] - goal))
    opts = SelectOptions(target_latency=goal, normalize="none", max_ratio=0.75, tolerance=0.01)
    plan = select(model, X, groups, scores, opts, latency=lat.predictor(model))
    assert {g: sorted(c) for g, c in plan.prune_idxs.items()} == {g: sorted(c) for g, c in prefix[want]}
    assert lat.predictor(model)(plan_cuts(groups, plan)) == pytest.approx(values[want])


def test_refinement_moves_the_aim_by_the_measured_miss(monkeypatch):
    monkeypatch.setattr(mocks, "REST", 5e-5)  # about a third of the forward is untimed ops of fixed cost
    model = mocks.net()
    groups = trace_groups(model, X)
    # "scaled" assumes the untimed rest shrinks; the closed-form truth keeps it fixed, so the first
    # candidate misses and the aim must move by the miss (NetAdapt-style refinement)
    lat = _target(model, rest="scaled", target=0.3, tolerance=0.015, max_iters=5)
    plan = lat.select(model, groups, _scores(groups), SelectOptions(target_latency=0.3, normalize="none"))
    rows = lat.iterations
    assert rows[0]["aim"] == 0.3 and rows[0]["measured"] < 0.3 - 0.015 and len(rows) >= 2
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["aim"] == pytest.approx(before["aim"] + 0.3 - before["measured"])
    measured = 1 - mocks.timer(apply_plan(mocks.net(), groups, plan), X) / mocks.timer(model, X)
    rec = lat.record()
    # the plan returned is the candidate measured closest to the goal, and its numbers are the ones reported
    assert rec["measured"] == pytest.approx(measured) == min((r["measured"] for r in rows), key=lambda m: abs(m - 0.3))
    assert rec["met"] == (abs(measured - 0.3) <= 0.015) and rec["met"]
    assert rec["predicted"] > rec["measured"]  # the scaled rest over-predicts here


def test_prune_target_latency_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setattr(latency_table, "profile_layers", mocks.profiler)
    monkeypatch.setattr(latency_table, "perf_timer", mocks.timer)
    model = mocks.net()
    base = mocks.timer(model, X)
    path = tmp_path / "table.json"
    report = fp.prune(model, X, "l1", target_latency=0.35, latency_table=path,
                      latency_options=LatencyOptions(grid_points=4, rounds=1, repeats=1, warmup=0))
    lat = report.latency
    assert lat["met"] and abs(lat["measured"] - 0.35) <= 0.02 and lat["table"]["reused"] is False
    assert lat["measured"] == pytest.approx(1 - mocks.timer(model, X) / base)  # the model handed back is the one measured
    assert "latency" in report.table() and json.loads(path.read_text())["version"] == 2
    again = fp.prune(mocks.net(), X, "l1", target_latency=0.35, latency_table=path,
                     latency_options=LatencyOptions(grid_points=4, rounds=1, repeats=1, warmup=0))
    assert again.latency["table"]["reused"] is True


def test_prune_round_to_auto_and_bad_arguments(monkeypatch):
    monkeypatch.setattr(latency_table, "profile_layers", mocks.profiler)
    monkeypatch.setattr(latency_table, "perf_timer", lambda m, x: -(-m.in_channels // 4) * -(-m.out_channels // 4)
                        * 1e-6 if isinstance(m, torch.nn.Conv2d) else mocks.timer(m, x))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    x = torch.randn(1, 3, 6, 6)
    report = fp.prune(model, x, "l1", target_macs=0.4, round_to="auto")
    assert report.latency["round_to"]["round_to"] == 4
    assert all(w % 4 == 0 for name, w in report.widths_after.items() if name != "4")
    with pytest.raises(ValueError, match="round_to"):
        fp.prune(mocks.net(), X, "l1", target_macs=0.3, round_to=-2)
    with pytest.raises(ValueError, match="exactly one"):
        fp.prune(mocks.net(), X, "l1", target_macs=0.3, target_latency=0.3)
    with pytest.raises(ValueError, match="one tensor"):
        LatencyTarget(mocks.net(), [X], 0.3)
    with pytest.raises(ValueError, match="target_latency needs latency"):
        select(mocks.net(), X, trace_groups(mocks.net(), X), _scores(trace_groups(mocks.net(), X)),
               SelectOptions(target_latency=0.3))


def test_cost_allocation_ranks_by_score_per_measured_second():
    # allocation="cost" under a latency target with the table's cost_fn (seconds saved by n channels of
    # one group): a channel's score is weighed against the seconds it saves
    model = mocks.net()
    groups = trace_groups(model, X)
    by_id = {g.id: g for g in groups}
    lat = _target(model)
    saving = {gid: lat.table.cost_fn()(by_id[gid], 1) for gid in ("0", "3")}
    assert saving["0"] > 1.5 * saving["3"]  # closed form: a channel of "0" saves more time
    scores = {"0": torch.ones(8), "3": torch.full((12,), 0.9)}  # "3" slightly less important
    goal = lat.predictor(model)(plan_cuts(groups, PrunePlan({"0": [0, 1]})))
    plans = {alloc: select(model, X, groups, scores, SelectOptions(target_latency=goal, normalize="none",
                                                                   allocation=alloc, tolerance=0.005),
                           latency=lat.predictor(model), cost_fn=lat.table.cost_fn())
             for alloc in ("global", "cost")}
    # 1 / saving["0"] < 0.9 / saving["3"]: per second saved, "0" is the cheaper importance -> it goes first
    assert set(plans["cost"].prune_idxs) == {"0"} and len(plans["cost"].prune_idxs["0"]) == 2
    assert "3" in plans["global"].prune_idxs  # by score alone, "3" goes first
