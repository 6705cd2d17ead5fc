"""The per-group latency table: interpolation and prediction against hand-computed values and a closed-form
timer (tests/latency_mocks.py); caching; the side-by-side measurement; ``round_to`` from measurements.
No assertion here depends on a real clock."""

from __future__ import annotations

import json

import pytest
import torch

import latency_mocks as mocks
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.metrics import measure_side_by_side
from filterprune.metrics.latency_table import (
    LatencyTable,
    interp1,
    load_or_measure_table,
    measure_table,
    module_widths,
)
from filterprune.metrics.round_to import choose_round_to, multiple_gains


def _synthetic(rest: str) -> LatencyTable:
    # layer "a": 4 s at (in 4, out 2); in-curve 1 s at 2, 4 s at 4; out-curve 2 s at 1, 4 s at 2. Layer "b": 1 s, fixed.
    layers = {"a": {"seconds": 4.0, "in": 4, "out": 2, "in_grid": [2, 4], "in_seconds": [1.0, 4.0],
                    "out_grid": [1, 2], "out_seconds": [2.0, 4.0]},
              "b": {"seconds": 1.0, "in": 3, "out": 3}}
    return LatencyTable({"rest": rest}, 10.0, layers, {})


def test_interp1_hand_values():
    assert interp1([2, 4, 8], [1.0, 3.0, 4.0], 3) == 2.0
    assert interp1([2, 4, 8], [1.0, 3.0, 4.0], 6) == 3.5
    assert interp1([2, 4, 8], [1.0, 3.0, 4.0], 8) == 4.0
    assert interp1([2, 4, 8], [1.0, 3.0, 4.0], 1) == 1.0  # below the grid: the smallest measured value
    with pytest.raises(ValueError, match="above the measured range"):
        interp1([2, 4], [1.0, 2.0], 5)


@pytest.mark.parametrize("rest", ["fixed", "scaled"])
def test_prediction_equals_hand_computed(rest):
    t = _synthetic(rest)
    # in 3 -> 2.5 s on the in-curve (ratio 0.625); out 1.5 -> 3 s on the out-curve (ratio 0.75)
    assert t.layer_seconds("a", 3, 1.5) == pytest.approx(4.0 * 0.625 * 0.75)
    assert t.layer_seconds("a") == 4.0 and t.layer_seconds("b", 1, 1) == 1.0  # no curve: fixed
    saved = 4.0 - 1.875
    want = saved if rest == "fixed" else saved * 10.0 / 5.0  # scaled: the untimed 5 s shrink along
    assert t.saved_seconds({"a": (3, 1.5)}) == pytest.approx(want)
    assert t.predict_seconds({"a": (3, 1.5)}) == pytest.approx(10.0 - want)
    assert t.reduction({"a": (3, 1.5)}) == pytest.approx(want / 10.0)


def test_table_roundtrip_and_refusals(tmp_path):
    t = _synthetic("fixed")
    t.save(tmp_path / "t.json")
    back = LatencyTable.from_dict(json.loads((tmp_path / "t.json").read_text()))
    assert back.layer_seconds("a", 3, 1.5) == t.layer_seconds("a", 3, 1.5)
    with pytest.raises(ValueError, match="version"):
        LatencyTable.from_dict({"version": 0})
    with pytest.raises(ValueError, match="malformed"):
        LatencyTable.from_dict({"version": 2, "meta": {}, "base_seconds": 1.0, "layers": {"a": {}}, "groups": {}})


def test_measured_table_predicts_the_closed_form_truth():
    model, x = mocks.net(), torch.randn(2, 3, 6, 6)
    groups = trace_groups(model, x)
    t = measure_table(model, x, groups, grid_points=4, repeats=1, warmup=0, rest="fixed", profiler=mocks.profiler)
    assert t.base_seconds == pytest.approx(mocks.timer(model, x))
    assert t.groups["0"]["grid"] == [2, 4, 6, 8] and t.groups["3"]["grid"] == [3, 6, 9, 12]
    by_id = {g.id: g for g in groups}
    for keep0, keep3 in [(8, 12), (5, 12), (2, 7), (7, 3), (3, 10)]:  # grid points and between them
        plan = PrunePlan({k: list(range(n, by_id[k].size)) for k, n in (("0", keep0), ("3", keep3))
                          if n < by_id[k].size})
        pruned = apply_plan(mocks.net(), groups, plan)
        widths = module_widths(pruned, t.layers)
        assert t.predict_seconds(widths) == pytest.approx(mocks.timer(pruned, x), rel=1e-9)
    # the group's own table: the summed time of the layers it touches, at each width
    per, _ = mocks.layer_costs(apply_plan(mocks.net(), groups, PrunePlan({"0": [4, 5, 6, 7]})), x)
    assert t.groups["0"]["seconds"][1] == pytest.approx(per["0"] + per["1"] + per["3"])
    # cost_fn for allocation="cost": seconds saved by n channels of one group alone
    saved = t.cost_fn()(by_id["3"], 6)
    alone = apply_plan(mocks.net(), groups, PrunePlan({"3": list(range(6, 12))}))
    assert saved == pytest.approx(mocks.timer(model, x) - mocks.timer(alone, x))


def test_monotone_curves_remove_inverted_noise():
    model, x = mocks.net(), torch.randn(2, 3, 6, 6)
    calls = {"n": 0}

    def noisy(m, xx, names):  # every other configuration 3x slower: noise that inverts the order of widths
        calls["n"] += 1
        per, total = mocks.profiler(m, xx, names)
        k = 3.0 if calls["n"] % 2 == 0 else 1.0
        return {n: v * k for n, v in per.items()}, total * k

    t = measure_table(model, x, trace_groups(model, x), grid_points=4, repeats=1, warmup=0, profiler=noisy)
    for info in t.layers.values():
        for axis in ("in", "out"):
            v = info.get(f"{axis}_seconds")
            if v:
                assert v == sorted(v) and v[-1] == info["seconds"]


def test_cache_reused_on_resume_and_refused_when_foreign(tmp_path):
    model, x = mocks.net(), torch.randn(2, 3, 6, 6)
    groups = trace_groups(model, x)
    calls = {"n": 0}

    def counting(m, xx, names):
        calls["n"] += 1
        return mocks.profiler(m, xx, names)

    path = tmp_path / "latency_table.json"
    first, reused = load_or_measure_table(path, model, x, groups, grid_points=4, profiler=counting)
    assert not reused and path.exists() and calls["n"] > 0
    calls["n"] = 0
    pruned = apply_plan(mocks.net(), groups, PrunePlan({"0": [0, 1]}))  # a resumed run: the model is narrower now
    again, reused = load_or_measure_table(path, pruned, x, trace_groups(pruned, x), grid_points=4, profiler=counting)
    # reused: no grid measured again, only the drift check's one median of the model (``repeats`` forwards)
    assert reused and calls["n"] == again.meta["repeats"] and again.to_dict() == json.loads(path.read_text())
    # another batch size: a stale table; refused unless the file belongs to the run
    with pytest.raises(ValueError, match="batch_size"):
        load_or_measure_table(path, model, torch.randn(3, 3, 6, 6), groups, grid_points=4, profiler=counting)
    with pytest.raises(ValueError, match="grid_points"):
        load_or_measure_table(path, model, x, groups, grid_points=5, profiler=counting)
    _, reused = load_or_measure_table(path, model, torch.randn(3, 3, 6, 6), groups, grid_points=4, owned=True,
                                      profiler=counting)
    assert not reused and json.loads(path.read_text())["meta"]["batch_size"] == 3
    (tmp_path / "other.json").write_text("{not json")
    with pytest.raises(ValueError, match="other.json"):
        load_or_measure_table(tmp_path / "other.json", model, x, groups, profiler=counting)
    assert (tmp_path / "other.json").read_text() == "{not json"  # not overwritten


@pytest.mark.parametrize("factor,stale", [(1.4, False), (1.6, True), (1 / 1.6, True)])
def test_cached_table_measured_under_another_load_is_measured_again(tmp_path, factor, stale):
    """A table whose timings are ``factor`` x what the model takes now (another load): within DRIFT (1.5)
    it is reused; beyond, refused when foreign and measured again when the run owns it."""
    model, x = mocks.net(), torch.randn(2, 3, 6, 6)
    groups = trace_groups(model, x)
    path = tmp_path / "latency_table.json"
    fresh, _ = load_or_measure_table(path, model, x, groups, grid_points=4, profiler=mocks.profiler)
    d = fresh.to_dict()
    d["base_seconds"] *= factor  # every prediction scales with it ("scaled" rest)
    for info in d["layers"].values():
        for key in ("seconds", "in_seconds", "out_seconds"):
            if key in info:
                info[key] = [v * factor for v in info[key]] if isinstance(info[key], list) else info[key] * factor
    path.write_text(json.dumps(d))
    if stale:
        with pytest.raises(ValueError, match="timings drifted"):
            load_or_measure_table(path, model, x, groups, grid_points=4, profiler=mocks.profiler)
    table, reused = load_or_measure_table(path, model, x, groups, grid_points=4, owned=True, profiler=mocks.profiler)
    assert reused is not stale
    assert table.base_seconds == pytest.approx(fresh.base_seconds * (1 if stale else factor))


def test_side_by_side_interleaves_and_takes_per_round_ratios():
    order = []
    times = {"base": [4.0, 8.0, 4.0], "half": [2.0, 4.0, 2.0]}  # a slow round hits both alike

    class Named(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name
            self.calls = 0

        def forward(self, x):
            return x

    def fake(m, x):
        order.append(m.name)
        m.calls += 1
        return times[m.name][(m.calls - 1) // 2]  # two repeats per round

    r = measure_side_by_side({"base": Named("base"), "half": Named("half")}, torch.zeros(1), rounds=3, repeats=2,
                             warmup=0, timer=fake)
    assert order == ["base", "base", "half", "half", "half", "half", "base", "base", "base", "base", "half", "half"]
    assert r["models"]["half"]["round_ms"] == [2000.0, 4000.0, 2000.0]
    assert r["models"]["half"]["ratio"] == 0.5 and r["models"]["half"]["reduction"] == 0.5
    assert r["models"]["base"]["median_ms"] == 4000.0
    with pytest.raises(ValueError):
        measure_side_by_side({}, torch.zeros(1))


def _staircase(step):
    def timer(m, x):  # a conv's time as if its channels were padded up to a multiple of `step`
        up = lambda c: -(-c // step) * step  # noqa: E731
        return up(m.in_channels) * up(m.out_channels) * 1e-6
    return timer


@pytest.mark.parametrize(("step", "expected"), [(1, 1), (4, 4), (8, 8)])
def test_round_to_follows_the_measured_staircase(step, expected):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1),
                                torch.nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    t = measure_table(model, x, trace_groups(model, x), grid_points=2, repeats=1, warmup=0, profiler=mocks.profiler)
    choice, evidence = choose_round_to(t, model, x, repeats=1, warmup=0, timer=_staircase(step))
    assert choice == expected and evidence["round_to"] == expected
    # 16 is left out when the narrowest group has 16 channels (it could only stay whole or halve)
    choice, evidence = choose_round_to(t, model, x, narrowest=16, timer=_staircase(16), repeats=1, warmup=0)
    assert evidence["allowed"] == [1, 4, 8] and choice in (4, 8)


def test_multiple_gains_hand_values():
    t = {w: float(-(-w // 4) * 4) ** 2 for w in range(8, 17)}  # time of the next multiple of 4, squared
    g = multiple_gains(t, (1, 4))
    # pairs 9..11 -> 12 and 13..15 -> 16: ratios u^2/w^2; median of the six
    ratios = sorted([144 / 81, 144 / 100, 144 / 121, 256 / 169, 256 / 196, 256 / 225])
    assert g[1] == 0.0 and g[4] == pytest.approx((ratios[2] + ratios[3]) / 2 - 1)
