"""C-SGD end to end on a tiny net (``csgd_prune``, ``squeeze``, ``csgd_stages``, ``CSGDOptions``): fast oracles.

The recipe collapses every cluster in ONE plain-SGD step: with momentum 0, weight decay 0, lr 0.1 and
centripetal strength 10 (vector_ratio 1), ``w_i <- w_i - lr (mean grad + eps (w_i - mean w)) = mean w -
lr mean grad`` for every member, so the trim afterwards is lossless and every run takes a fraction of a
second. Oracles: the report's numbers against MACs/params counted independently, widths against the
target worked out by hand, exact option and refusal messages, the stage names the run records, and what
a run folder holds afterwards (clusters, checkpoints; a resumed run trains no further).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from csgd_helpers import RandomLoader
from torch import nn

from filterprune.api import StepRecord
from filterprune.config import PruneConfig, TrainConfig
from filterprune.errors import PruningError
from filterprune.graph.trace import trace_groups
from filterprune.methods import _csgd_stages, csgd_run, load_clusters
from filterprune.methods.csgd_run import (
    CSGDOptions,
    _device_of,
    _has_checkpoints,
    centripetal_hook,
    csgd_prune,
    squeeze,
    trim_checked,
)
from filterprune.metrics import count

ONE_STEP = CSGDOptions(centripetal=10.0, vector_ratio=1.0)  # lr 0.1 x 10 = 1: collapsed after one step


def _cfg(epochs: int = 1) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", device="cpu",
                       amp="off")


def _net(width: int = 4, seed: int = 0) -> nn.Sequential:
    """conv(1->w) relu conv(w->w) relu GAP linear(w->2): prunable groups "0" and "2", both of ``width``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def _x():
    return torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def _loader(steps: int = 1):
    return RandomLoader((1, 6, 6), steps, num_classes=2)


def _val():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 1, 6, 6, generator=g), torch.tensor([0, 1, 1, 0]))]


def _prune(model, **kw):
    kw.setdefault("ratio", 0.5)
    kw.setdefault("options", ONE_STEP)
    return csgd_prune(model, _x(), _loader(), _val(), _cfg(), **kw)


def _recorder(log: list, cache: dict | None = None):
    """A runner-like ``stage``: records (name, snapshot); recalls the results held in ``cache``."""

    def stage(name, fn, *, snapshot=False):
        log.append((name, snapshot))
        if cache is not None and name in cache:
            return cache[name]
        out = fn()
        if cache is not None:
            cache[name] = out
        return out

    return stage


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- csgd_prune


def test_csgd_prune_reports_counts_measured_before_and_after_and_one_step_record():
    model = _net()
    macs0, params0 = count(copy.deepcopy(model), _x())
    result = _prune(model)
    r = result.report
    macs1, params1 = count(model, _x())
    assert (r.criterion, r.target_name, r.target) == ("csgd", "ratio", 0.5)
    assert (r.macs_before, r.params_before, r.widths_before) == (macs0, params0, {"0": 4, "2": 4})
    assert (r.macs_after, r.params_after) == (macs1, params1)
    assert sum(r.widths_after.values()) == 4  # ratio 0.5 of the 8 prunable channels
    assert r.steps == (StepRecord(1, 0.5, 4, macs1, params1, result.trim.logit_diff),)
    assert r.max_error == result.trim.logit_diff < 1e-5  # collapsed: trimming is lossless


def test_csgd_prune_uses_the_given_baseline_for_the_before_numbers():
    # a resumed run starts from a snapshot: the unpruned model's numbers come from the caller
    result = _prune(_net(), baseline=(123456, 789, {"0": 40, "2": 40}))
    r = result.report
    assert (r.macs_before, r.params_before, r.widths_before) == (123456, 789, {"0": 40, "2": 40})


def test_csgd_prune_allocation_reaches_the_selection():
    # uniform: the same fraction of every group; global ranking of l1 would cut the groups unevenly here
    with torch.no_grad():
        model = _net()
        model[0].weight[1:] *= 1e-3  # three tiny filters in group "0": a global ranking removes them first
    assert _prune(copy.deepcopy(model), allocation="uniform").report.widths_after == {"0": 2, "2": 2}
    assert _prune(model, allocation="global").report.widths_after == {"0": 1, "2": 3}


def test_csgd_prune_ranks_with_the_width_criterion(monkeypatch):
    seen = []
    real = csgd_run.target_widths
    monkeypatch.setattr(csgd_run, "target_widths", lambda *a, **k: seen.append(k["criterion"]) or real(*a, **k))
    _prune(_net(), options=CSGDOptions(centripetal=10.0, vector_ratio=1.0, width_criterion="l2"))
    assert seen == ["l2"]


def test_csgd_prune_runs_four_named_stages_snapshotting_training_and_trim():
    log = []
    _prune(_net(), stage=_recorder(log))
    assert log == [("csgd.widths", False), ("csgd.clusters", False), ("csgd.centripetal", True),
                   ("csgd.trim", True)]


def test_csgd_prune_history_holds_the_validation_of_the_trained_model():
    model = _net()
    result = _prune(model)
    (record,) = result.history
    vx, vy = _val()[0]
    with torch.no_grad():
        loss = float(F.cross_entropy(model.eval()(vx), vy))  # the trim is lossless: same as before it
    assert record["val_loss"] == pytest.approx(loss, rel=1e-4)


def test_csgd_prune_writes_clusters_and_checkpoints_into_an_existing_run_dir(tmp_path):
    result = _prune(_net(), run_dir=tmp_path)  # tmp_path exists already
    assert load_clusters(tmp_path / "clusters.json") == result.clusters
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*.safetensors")) == ["epoch_000.safetensors"]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


def test_csgd_prune_with_a_stage_resumes_finished_training_without_training_again(tmp_path):
    """A run stopped after its centripetal epochs were checkpointed continues from the checkpoint: the
    resumed run iterates no batch and ends with the first run's trimmed model."""
    cache, log = {}, []
    first = _net()
    _prune(first, run_dir=tmp_path, stage=_recorder(log, cache))
    cache = {k: v for k, v in cache.items() if k in ("csgd.widths", "csgd.clusters")}

    class NoMoreTraining:
        def __len__(self):
            return 1

        def __iter__(self):
            raise AssertionError("the resumed run trained again")

    second = _net(seed=5)  # other weights: only the checkpoint can give the first run's model
    csgd_prune(second, _x(), NoMoreTraining(), _val(), _cfg(), ratio=0.5, options=ONE_STEP, run_dir=tmp_path,
               stage=_recorder([], cache))
    assert _same_state(second, first)


def test_csgd_prune_without_a_stage_does_not_resume_from_old_checkpoints(tmp_path):
    _prune(_net(), run_dir=tmp_path)
    model, fresh = _net(seed=5), _net(seed=5)
    _prune(model, run_dir=tmp_path)  # trains seed 5 from scratch, as a run without run records must
    _prune(fresh)
    assert _same_state(model, fresh)


# ---------------------------------------------------------------------------------------------- squeeze


def _squeeze(wide, reference, **kw):
    return squeeze(wide, reference, _x(), _loader(), _val(), _cfg(), options=ONE_STEP, **kw)


def test_squeeze_trims_to_the_reference_and_reports_one_step():
    wide, reference = _net(6), _net(4)
    macs0, params0 = count(copy.deepcopy(wide), _x())
    result = _squeeze(wide, reference)
    r = result.report
    macs1, params1 = count(reference, _x())
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert (r.criterion, r.target_name, r.target) == ("csgd", "squeeze", 0.0)
    assert (r.macs_before, r.params_before, r.macs_after, r.params_after) == (macs0, params0, macs1, params1)
    assert result.trim.logit_diff is not None and result.trim.logit_diff < 1e-5
    assert r.steps == (StepRecord(1, 0.0, 4, macs1, params1, result.trim.logit_diff),)  # 2 of 6 in two groups


def test_squeeze_saves_its_clusters_in_a_new_nested_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "squeeze"
    result = _squeeze(_net(6), _net(4), run_dir=run_dir)
    assert load_clusters(run_dir / "clusters.json") == result.clusters


def test_squeeze_without_resume_ignores_a_stale_clusters_file(tmp_path):
    (tmp_path / "clusters.json").write_text(json.dumps({"0": [[0, 1, 2, 3, 4, 5]]}))  # not 4 clusters
    result = _squeeze(_net(6), _net(4), run_dir=tmp_path)
    assert {gid: len(cl) for gid, cl in result.clusters.items()} == {"0": 4, "2": 4}
    assert load_clusters(tmp_path / "clusters.json") == result.clusters


def test_squeeze_refuses_a_reference_with_other_groups():
    reference = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 2))
    with pytest.raises(PruningError, match=r"^squeeze: the wide model and the reference have different channel "
                                           r"groups$"):
        _squeeze(_net(6), reference)


def test_squeeze_names_the_first_state_entry_that_differs_from_the_reference():
    reference = _net(4)
    reference.register_buffer("extra", torch.zeros(1))  # the trimmed wide model has no such entry
    with pytest.raises(PruningError, match=r"^squeeze: the trimmed model does not match the reference "
                                           r"\(extra: None vs \(1,\)\)$"):
        _squeeze(_net(6), reference)


def test_squeeze_refuses_a_reordering_that_changes_the_outputs(monkeypatch):
    def bad_align(model, reference, groups):
        with torch.no_grad():
            model[6].bias += 1.0

    monkeypatch.setattr(csgd_run, "align_shortcuts", bad_align)
    with pytest.raises(PruningError, match=r"^squeeze: reordering channels to match the reference changed the "
                                           r"outputs$"):
        _squeeze(_net(6), _net(4))


# ---------------------------------------------------------------------------------------------- small helpers


def test_device_of_a_parameterless_model_is_the_cpu_and_otherwise_the_parameters_device():
    assert _device_of(nn.ReLU()) == torch.device("cpu")
    assert _device_of(nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_has_checkpoints_needs_an_epoch_checkpoint_file(tmp_path):
    assert not _has_checkpoints(None)
    assert not _has_checkpoints(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch_000.safetensors").write_bytes(b"")
    assert _has_checkpoints(tmp_path) and _has_checkpoints(str(tmp_path))


def _collapsed_pair():
    """conv(1->4) GAP linear: filters 0 and 1 identical, clustered together."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]
        model[0].bias[1] = model[0].bias[0]
    return model, trace_groups(model, _x()), {"0": [[0, 1], [2], [3]]}


def test_trim_checked_without_a_probe_trims_and_measures_nothing():
    model, groups, clusters = _collapsed_pair()
    result = trim_checked(model, groups, clusters, CSGDOptions(), None)
    assert model[0].out_channels == 3 and result.logit_diff is None


def test_centripetal_hook_logs_a_too_short_recipe_unless_forced(caplog):
    model, groups, clusters = _collapsed_pair()
    weak = CSGDOptions(centripetal=1e-3)  # lr 0.1 x 1e-3 over 1 step: the deviation shrinks by x0.9999
    with caplog.at_level(logging.INFO, logger="filterprune.methods.csgd_run"):
        centripetal_hook(model, groups, clusters, _cfg(), weak, 1)
    assert any("trimming will likely be refused" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="filterprune.methods.csgd_run"):
        centripetal_hook(model, groups, clusters, _cfg(), CSGDOptions(centripetal=1e-3, force=True), 1)
    assert not any("trimming will likely be refused" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- CSGDOptions


def test_options_refuse_an_unknown_clustering_with_the_list_of_valid_ones():
    with pytest.raises(ValueError, match=r"^C-SGD clustering must be one of kmeans, even, got 'magic'$"):
        CSGDOptions(clustering="magic")


def test_options_refuse_each_negative_strength_alone_and_allow_zero():
    msg = r"^C-SGD centripetal, vector_ratio, max_deviation must be >= 0 and n_init >= 1$"
    for bad in ({"centripetal": -1.0}, {"vector_ratio": -0.1}, {"max_deviation": -1e-3}, {"n_init": 0}):
        with pytest.raises(ValueError, match=msg):
            CSGDOptions(**bad)
    assert CSGDOptions(centripetal=0.0, vector_ratio=0.0, max_deviation=0.0).vector_ratio == 0.0


def test_options_from_kwargs_turn_integer_strengths_into_floats():
    opts = CSGDOptions.from_kwargs({"centripetal": 2, "vector_ratio": 1, "max_deviation": 0})
    assert (opts.centripetal, opts.vector_ratio, opts.max_deviation) == (2.0, 1.0, 0.0)
    assert all(type(v) is float for v in (opts.centripetal, opts.vector_ratio, opts.max_deviation))


@pytest.mark.parametrize(("key", "value", "want"), [("keep", 3, "str"), ("n_init", 2.5, "int"),
                                                     ("force", 1, "bool"), ("n_init", True, "int")])
def test_options_from_kwargs_name_the_expected_type(key, value, want):
    with pytest.raises(ValueError, match=rf"^C-SGD option {key} must be {want}, got {value!r}$"):
        CSGDOptions.from_kwargs({key: value})


# ---------------------------------------------------------------------------------------------- csgd_stages


def _job(done=(), **prune):
    prune = {"criterion": "csgd", "ratio": 0.5, "criterion_options": "centripetal=0.5", **prune}
    runner = SimpleNamespace(stage=object(), done=lambda name: name in done)
    return SimpleNamespace(cfg=SimpleNamespace(prune=PruneConfig(**prune), finetune=TrainConfig(epochs=3)),
                           model="model", x="x", train="train", val="val", folder=Path("/runs/r"), runner=runner,
                           baseline=SimpleNamespace(macs=100, params=10), widths_before={"0": 4})


@pytest.mark.parametrize("bad", [{"steps": 2}, {"step_ratio": 0.1}])
def test_csgd_stages_refuse_several_rounds(bad, monkeypatch):
    monkeypatch.setattr(_csgd_stages, "csgd_prune", lambda *a, **k: pytest.fail("must refuse first"))
    with pytest.raises(ValueError, match=r"^C-SGD prunes in one round: leave --steps at 1 and --step-ratio unset$"):
        _csgd_stages.csgd_stages(_job(**bad))


def test_csgd_stages_hand_the_runner_stage_and_the_baseline_to_csgd_prune(monkeypatch):
    seen = {}
    monkeypatch.setattr(_csgd_stages, "csgd_prune", lambda *a, **k: seen.update(args=a, **k) or "done")
    job = _job()
    assert _csgd_stages.csgd_stages(job) == "done"
    assert seen["args"] == ("model", "x", "train", "val", job.cfg.finetune)
    assert seen["stage"] is job.runner.stage and seen["baseline"] == (100, 10, {"0": 4})
    assert seen["run_dir"] == Path("/runs/r/centripetal") and seen["options"] == CSGDOptions(centripetal=0.5)


def _refused(*a, **k):
    raise PruningError("C-SGD clusters have not collapsed")


def test_a_refused_trim_after_training_says_how_to_force_it_or_train_longer(monkeypatch):
    monkeypatch.setattr(_csgd_stages, "csgd_prune", _refused)
    with pytest.raises(PruningError) as e:
        _csgd_stages.csgd_stages(_job(done={"csgd.centripetal"}))
    assert str(e.value) == (
        "C-SGD clusters have not collapsed. The trained, untrimmed model is kept: trim it with filterprune prune "
        "--resume --out /runs/r --criterion-options centripetal=0.5,force=True, or train longer with --resume "
        "--out /runs/r --finetune-epochs 6")


@pytest.mark.parametrize("done", [(), ("csgd.trim",), ("csgd.centripetal", "csgd.trim")])
def test_a_refusal_before_training_or_after_the_trim_is_passed_on_unchanged(done, monkeypatch):
    monkeypatch.setattr(_csgd_stages, "csgd_prune", _refused)
    with pytest.raises(PruningError, match=r"^C-SGD clusters have not collapsed$"):
        _csgd_stages.csgd_stages(_job(done=set(done)))


def test_trim_checked_runs_the_masked_vs_pruned_check_on_the_probe(monkeypatch):
    import filterprune.methods._trim as trim_mod

    seen = []
    real = trim_mod.apply_plan_checked
    monkeypatch.setattr(trim_mod, "apply_plan_checked", lambda m, g, p, inputs: seen.append(inputs) or real(m, g, p, inputs))
    model, groups, clusters = _collapsed_pair()
    probe = _x()
    trim_checked(model, groups, clusters, CSGDOptions(), probe)
    assert len(seen) == 2 and all(torch.equal(s, probe) for s in seen)  # on the trial copy, then on the model


# ---------------------------------------------------------------------------------------------- predicted_decay


@pytest.mark.parametrize(("nesterov", "momentum", "want"), [
    # lr 1/8, strength 1, two steps of the scalar recursion delta <- delta - lr * step, worked by hand:
    (False, 0.5, 0.703125),  # heavy ball: steps 1, then 0.5 * 1 + 0.875 = 1.375
    (True, 0.5, 0.62890625),  # Nesterov: steps 1 + 0.5 * 1 = 1.5, then 0.8125 + 0.5 * 1.3125 = 1.46875
    (True, 0.0, 0.765625),  # plain SGD: 0.875 ** 2
    (False, 0.0, 0.765625),
])
def test_predicted_decay_follows_the_optimizer_recursion(nesterov, momentum, want):
    from filterprune.methods import predicted_decay

    cfg = TrainConfig(epochs=1, lr=0.125, momentum=momentum, nesterov=nesterov, schedule="constant")
    assert predicted_decay(cfg, 2, 1.0) == want


# ---------------------------------------------------------------------------------------------- CentripetalSGD


@pytest.mark.parametrize("bad", ["centripetal", "weight_decay", "vector_ratio", "vector_decay"])
def test_centripetal_sgd_refuses_each_negative_coefficient(bad):
    from filterprune.methods import CentripetalSGD

    model, groups, clusters = _collapsed_pair()
    with pytest.raises(ValueError, match=r"^centripetal, weight_decay, vector_ratio and vector_decay must be >= 0$"):
        CentripetalSGD(model, groups, clusters, **{bad: -1.0})


def test_centripetal_sgd_refuses_an_optimizer_that_decays_a_clustered_parameter():
    from filterprune.methods import CentripetalSGD

    model, groups, clusters = _collapsed_pair()
    hook = CentripetalSGD(model, groups, clusters)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    with pytest.raises(PruningError, match=r"^C-SGD: the optimizer also decays 0\.weight; build it without decay "
                                           r"on no_weight_decay\(\) \(fit does\)$"):
        hook.on_fit_start(model, optimizer)
