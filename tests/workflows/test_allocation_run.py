"""``--allocation`` end to end (CLI on digits) and ``fp.prune(allocation=...)``.

Oracles: the sensitivity pass's recorded cost equals the passes counted from outside (one per grid
point per group, plus the base); a run interrupted inside the pass and resumed measures only the
groups it had not finished (counted); targets are met (``metrics.count`` of the saved model).
"""

from __future__ import annotations

import json

import pytest
import torch

import filterprune.train as train_pkg
from filterprune.api import load, prune, save, score
from filterprune.cli.main import main
from filterprune.criteria.car_greedy import steps_for_k
from filterprune.graph.trace import trace_groups
from filterprune.metrics import count
from filterprune.models import create_model
from filterprune.selection import SelectOptions, SensitivityCurves, select
from filterprune.workflows.records import read_sensitivity


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    """An untrained (seeded) digits ConvNet saved as a filterprune checkpoint: allocation needs no accuracy."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "model.safetensors"
    model = create_model("convnet_small").eval()
    save(model, path, example_inputs=torch.randn(2, 1, 8, 8))
    return path


def _argv(weights, out, *extra):
    return ["-q", "prune", "--weights", str(weights), "--data", "digits", "--target-macs", "0.5",
            "--finetune-epochs", "0", "--finetune-device", "cpu", "--num-batches", "2", "--out", str(out), *extra]


SENS = ("--allocation", "sensitivity", "--sensitivity-points", "3", "--sensitivity-images", "64")


class _CountingEvaluate:
    """Wraps ``train.evaluate``: counts calls on 64-image loaders (the sensitivity subset), and raises
    KeyboardInterrupt (Ctrl-C) at the ``stop_at``-th of them."""

    def __init__(self, stop_at=None):
        self.inner, self.calls, self.stop_at = train_pkg.evaluate, 0, stop_at

    def __call__(self, model, loader, *args, **kwargs):
        out = self.inner(model, loader, *args, **kwargs)
        if out["n"] == 64:
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
        return out


def test_sensitivity_run_records_curves_plot_and_the_cost_of_the_pass(base_weights, tmp_path, monkeypatch):
    counting = _CountingEvaluate()
    monkeypatch.setattr(train_pkg, "evaluate", counting)
    out = tmp_path / "sens"
    assert main(_argv(base_weights, out, *SENS)) == 0
    summary = json.loads((out / "summary.json").read_text())
    curves = json.loads((out / "sensitivity.json").read_text())
    groups = curves["groups"]
    assert curves["format"] == "filterprune.sensitivity/1" and curves["grid"] == [0.25, 0.5, 0.75]
    (entry,) = summary["sensitivity"]
    assert entry["file"] == "sensitivity.json"
    assert entry["cost"]["passes"] == counting.calls == 1 + 3 * len(groups)
    assert entry["cost"]["images"] == 64 * counting.calls and entry["cost"]["seconds"] > 0
    # the plan is equal-drop: no pruned group's predicted drop exceeds the reported threshold
    assert set(entry["ratios"]) <= set(groups)
    # filterprune plot / the report read the same file: the accuracy curve from the unpruned point
    curves_read = read_sensitivity(out)
    assert set(curves_read) == set(groups)
    first = next(iter(groups))
    assert curves_read[first]["accuracy"] == [curves["base"]["acc"], *groups[first]["acc"]]
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)
    model = load(out / "model.safetensors")
    assert count(model, torch.randn(1, 1, 8, 8))[0] == summary["macs"]["pruned"]
    pytest.importorskip("matplotlib")
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_interrupted_in_the_pass_measures_only_the_unfinished_groups(base_weights, tmp_path, monkeypatch):
    out = tmp_path / "sens"
    # Ctrl-C at the 6th measurement: the base and the first group (3 points) are done, the second is not
    monkeypatch.setattr(train_pkg, "evaluate", _CountingEvaluate(stop_at=6))
    assert main(_argv(base_weights, out, *SENS)) == 130
    assert len(json.loads((out / "sensitivity.json").read_text())["groups"]) == 1
    counting = _CountingEvaluate()
    monkeypatch.setattr(train_pkg, "evaluate", counting)
    assert main(["--debug", *_argv(base_weights, out, *SENS), "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    n_groups = len(json.loads((out / "sensitivity.json").read_text())["groups"])
    assert counting.calls == 3 * (n_groups - 1)  # the base and the finished group are not measured again
    assert summary["sensitivity"][0]["cost"]["groups_reused"] == 1


@pytest.mark.parametrize("allocation", ["uniform", "cost"])
def test_uniform_and_cost_runs_meet_the_target(base_weights, tmp_path, allocation):
    out = tmp_path / allocation
    assert main(_argv(base_weights, out, "--allocation", allocation)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["prune"]["allocation"] == allocation
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)
    assert not (out / "sensitivity.json").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--allocation", "greedy"], "must be auto, global, uniform, cost or sensitivity, got 'greedy'"),
    (["--allocation", "sensitivity", "--step-ratio", "0.2"], "sensitivity is not available with --step-ratio"),
    (["--allocation", "cost", "--global-ranking", "false"], "cannot be cost with global_ranking off"),
    (["--sensitivity-metric", "top5"], "must be loss or acc, got 'top5'"),
])
def test_bad_allocation_flags_are_refused_in_one_line(base_weights, tmp_path, extra, needle, capsys):
    out = tmp_path / "bad"
    assert main(_argv(base_weights, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert not out.exists()


def test_car_greedy_with_sensitivity_allocation_measures_curves_at_every_step(base_weights, tmp_path):
    # CAR's k= counts its steps before any curve exists (it was refused: "needs sensitivity curves");
    # the count uses equal fractions, each step then measures its own curves and the target is met
    out = tmp_path / "car"
    assert main(_argv(base_weights, out, "--criterion", "car", "--criterion-options", "k=8,eval_images=64",
                      *SENS)) == 0
    summary = json.loads((out / "summary.json").read_text())
    model, x = load(base_weights), torch.randn(2, 1, 8, 8)
    steps = steps_for_k(model, x, 8, options=SelectOptions(target_macs=0.5, allocation="uniform"))
    assert steps > 1 and [e["step"] for e in summary["sensitivity"]] == list(range(1, steps + 1))
    assert (out / f"sensitivity-step{steps}.json").is_file()
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("allocation", ["uniform", "cost", "sensitivity"])
def test_car_layer_scope_refuses_an_allocation_in_one_line(base_weights, tmp_path, allocation, capsys):
    # scope=layer prunes the --layer-ratio layers by their own fractions: an allocation was silently
    # ignored (the summary said "sensitivity", nothing was measured)
    out = tmp_path / "layer"
    argv = ["-q", "prune", "--weights", str(base_weights), "--data", "digits", "--criterion", "car",
            "--criterion-options", "scope=layer,k=1,eval_images=64", "--layer-ratio", "features.0=0.5",
            "--allocation", allocation, "--finetune-epochs", "0", "--finetune-device", "cpu", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"allocation {allocation!r} does not apply (drop --allocation)" in err and "\n" not in err
    assert not out.exists()
    model, x = load(base_weights), torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="does not apply"):
        prune(model, x, "car", data=[(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))],
              criterion_kwargs={"scope": "layer"}, layer_ratios={"features.0": 0.5}, allocation=allocation)


def _resnet():
    torch.manual_seed(0)
    return create_model("resnet20", width_mult=0.25).eval(), torch.randn(2, 3, 16, 16)


def test_api_sensitivity_writes_one_cache_per_step_and_meets_the_target(tmp_path):
    model, x = _resnet()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))]
    report = prune(model, x, "l1", target_macs=0.4, allocation="sensitivity", data=data, steps=2,
                   sensitivity_points=2, sensitivity_cache=tmp_path / "curves.json")
    assert abs(report.macs_reduction - 0.4) <= 0.01
    assert json.loads((tmp_path / "curves.json").read_text())["grid"] == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    assert (tmp_path / "curves-step2.json").is_file()


def test_api_refusals_and_the_cost_fn_hook():
    model, x = _resnet()
    with pytest.raises(ValueError, match="allocation='sensitivity' needs data"):
        prune(model, x, "l1", target_macs=0.3, allocation="sensitivity")
    with pytest.raises(ValueError, match="allocation must be one of"):
        prune(model, x, "l1", target_macs=0.3, allocation="greedy")
    seen = set()

    def cost_fn(group, n):
        seen.add(group.id)
        return float(n)

    report = prune(model, x, "l1", ratio=0.2, allocation="cost", cost_fn=cost_fn)
    assert seen and report.target_name == "ratio"


@pytest.mark.slow  # C-SGD's centripetal epoch: ~10 s alone, over a minute on the shared machine
def test_csgd_widths_follow_the_sensitivity_curves(base_weights, tmp_path):
    # C-SGD clusters each group to the width the equal-drop rule gives with the width criterion (l1)
    out = tmp_path / "csgd"
    assert main(_argv(base_weights, out, "--criterion", "csgd", "--criterion-options", "force=True", "--finetune-epochs", "1", *SENS)) == 0
    summary = json.loads((out / "summary.json").read_text())
    curves = SensitivityCurves.load(out / "sensitivity.json")
    assert summary["sensitivity"][0]["cost"]["passes"] == 1 + 3 * len(curves.groups)
    model, x = load(base_weights), torch.randn(2, 1, 8, 8)
    groups = trace_groups(model, x)
    plan = select(model, x, groups, score(model, x, "l1"), SelectOptions(target_macs=0.5, allocation="sensitivity"),
                  curves=curves)
    expected = {g.id: g.size - len(plan.prune_idxs.get(g.id, [])) for g in groups if g.prunable}
    assert summary["csgd"]["clusters"] == expected


def test_the_default_allocation_is_sensitivity_and_measures_the_same_curves(base_weights, tmp_path, monkeypatch):
    # issue 15: the comparison made sensitivity the default (auto) where it applies; the same run as an
    # explicit --allocation sensitivity one: same curves file, same kept channels
    grid = SENS[2:]  # the grid flags without --allocation
    counting = _CountingEvaluate()
    monkeypatch.setattr(train_pkg, "evaluate", counting)
    assert main(_argv(base_weights, tmp_path / "auto", *grid)) == 0
    assert main(_argv(base_weights, tmp_path / "explicit", *SENS)) == 0
    auto = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert auto["config"]["prune"]["allocation"] == "auto" and auto["allocation"] == "sensitivity"
    n_groups = len(json.loads((tmp_path / "auto" / "sensitivity.json").read_text())["groups"])
    assert counting.calls == 2 * (1 + 3 * n_groups)  # both runs measured the whole pass
    measured = [{gid: (g["acc"], g["drop"]) for gid, g in json.loads((tmp_path / run / "sensitivity.json")
                                                                  .read_text())["groups"].items()}
                for run in ("auto", "explicit")]
    assert measured[0] == measured[1]
    a, b = load(tmp_path / "auto" / "model.safetensors"), load(tmp_path / "explicit" / "model.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("flags", [
    ("--step-ratio", "0.2"),                                   # iterations rank raw scores
    ("--layer-ratio", "features.0=0.5"),                       # fractions given, no network-wide target
    ("--global-ranking", "false"),                             # the same fraction everywhere (uniform)
])
def test_the_default_allocation_is_global_where_sensitivity_does_not_apply(base_weights, tmp_path, flags):
    argv = _argv(base_weights, tmp_path / "run", *flags)
    if flags[0] == "--layer-ratio":
        argv.remove("--target-macs"), argv.remove("0.5")
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["allocation"] == "global" and not (tmp_path / "run" / "sensitivity.json").exists()


@pytest.mark.parametrize("fields, expected", [
    ({"target_macs": 0.5}, "sensitivity"),
    ({"target_latency": 0.4}, "sensitivity"),
    ({"target_macs": 0.5, "criterion": "car", "criterion_options": "k=8"}, "sensitivity"),
    ({"target_macs": 0.5, "step_ratio": 0.1}, "global"),
    ({"layer_ratio": ("a=0.5",)}, "global"),
    ({"criterion": "car", "criterion_options": "scope=layer", "layer_ratio": ("a=0.5",)}, "global"),
    ({"target_macs": 0.5, "global_ranking": False}, "global"),
    ({"target_macs": 0.5, "allocation": "cost"}, "cost"),        # an explicit choice is kept as given
    ({"target_macs": 0.5, "allocation": "global"}, "global"),
])
def test_auto_allocation_resolves_by_what_the_run_does(fields, expected):
    from filterprune.config import PruneConfig

    assert PruneConfig(**fields).allocation_mode() == expected
