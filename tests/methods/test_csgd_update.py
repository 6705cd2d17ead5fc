"""The centripetal gradient: matrix form, per-filter form, decay rate, wrapping, refusals."""

import dataclasses
import math

import pytest
import torch
from csgd_helpers import RandomLoader, Wrapper, plain_sgd
from torch import nn

from filterprune.errors import PruningError
from filterprune.graph.trace import trace_groups
from filterprune.methods import CentripetalSGD, cluster_groups, decay_matrix, merge_matrix, predicted_decay
from filterprune.train import build_optimizer, fit
from models_zoo import build

ETA, EPS, RATIO = 1e-3, 0.2, 0.1


def _hooked(name="residual", ratio=RATIO):
    model, x = build(name)
    groups = trace_groups(model, x)
    widths = {g.id: max(1, g.size // 3) for g in groups if g.prunable}
    clusters = cluster_groups(model, groups, widths, seed=0)
    hook = CentripetalSGD(model, groups, clusters, centripetal=EPS, weight_decay=ETA, vector_ratio=ratio)
    return model, x, groups, clusters, hook


def test_matrix_form_equals_per_filter_formula_and_the_hook():
    model, x, groups, clusters, hook = _hooked()
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    hook.after_backward(model, 0)
    cl = clusters["stem"]
    M, Gamma = merge_matrix(cl, 16), decay_matrix(cl, 16, ETA, EPS)
    for name, eta, eps in (("block1.conv2.weight", ETA, EPS), ("bn.weight", 0.0, RATIO * EPS)):
        p = model.get_parameter(name)
        W, G = p.detach().double().reshape(16, -1), raw[name].double().reshape(16, -1)
        gamma = Gamma if name.endswith("conv2.weight") else decay_matrix(cl, 16, eta, eps)
        matrix = M @ G + gamma @ W
        per_filter = torch.empty_like(W)
        for members in cl:  # g~_i = mean_C dL/dw + eta w_i + eps (w_i - mean_C w)
            for i in members:
                per_filter[i] = G[members].mean(0) + eta * W[i] + eps * (W[i] - W[members].mean(0))
        assert torch.allclose(matrix, per_filter, atol=1e-10)
        assert torch.allclose(p.grad.double().reshape(16, -1), matrix, atol=1e-5)
    untouched = "fc.weight"  # the classifier's own rows are not clustered
    assert torch.equal(model.get_parameter(untouched).grad, raw[untouched])


def test_plain_sgd_deviation_decays_exactly_as_predicted():
    model, x, groups, clusters, hook = _hooked(ratio=0.5)
    lr, steps = 0.05, 6
    start = hook.deviation(model)
    history = fit(model, RandomLoader(x.shape[1:], steps), None, plain_sgd(epochs=2, lr=lr, weight_decay=ETA),
                  hooks=[hook])
    for epoch, rec in enumerate(history, start=1):
        t = steps * epoch
        assert rec["csgd_deviation"] / start.kernel == pytest.approx((1 - lr * (ETA + EPS)) ** (2 * t), rel=1e-3)
        assert rec["csgd_deviation_vec"] / start.vector == pytest.approx((1 - lr * 0.5 * EPS) ** (2 * t), rel=1e-3)
    assert hook.steps == 2 * steps


def test_momentum_deviation_decays_about_as_predicted():
    model, x, groups, clusters, hook = _hooked()
    lr, steps = 0.01, 40
    cfg = plain_sgd(lr=lr, weight_decay=ETA, momentum=0.9)
    start = hook.deviation(model)
    rec, = fit(model, RandomLoader(x.shape[1:], steps, batch=2), None, cfg, hooks=[hook])
    measured = rec["csgd_deviation"] / start.kernel
    # exact: the optimizer's own recursion on the deviation
    assert measured == pytest.approx(predicted_decay(cfg, steps, ETA + EPS) ** 2, rel=1e-3)
    # approximate: the closed form; the momentum buffer starts empty, so the first steps lag it a little
    assert math.log(measured) == pytest.approx(2 * steps * math.log(1 - lr * (ETA + EPS) / 0.1), rel=0.15)


def test_works_under_a_data_parallel_style_prefix_and_moves_decay_out_of_the_optimizer():
    model, x, groups, clusters, hook = _hooked()
    wrapped = Wrapper(model)
    names = hook.no_weight_decay(wrapped)
    assert "module.block1.conv2.weight" in names and "module.stem.weight" in names
    assert not any(n.startswith("module.fc") for n in names)
    opt = build_optimizer(wrapped, plain_sgd(weight_decay=ETA), names)
    hook.on_fit_start(wrapped, opt)
    with pytest.raises(PruningError, match="also decays"):
        hook.on_fit_start(wrapped, build_optimizer(wrapped, plain_sgd(weight_decay=ETA)))
    before = hook.deviation(wrapped)
    fit(wrapped, RandomLoader(x.shape[1:], 3), None, plain_sgd(lr=0.05, weight_decay=ETA), hooks=[hook])
    assert hook.deviation(model).kernel < 0.99 * before.kernel


def test_refuses_a_step_where_a_clustered_parameter_has_no_gradient():
    model, x, groups, clusters, hook = _hooked()
    model.zero_grad(set_to_none=True)
    with pytest.raises(PruningError, match="no gradient"):
        hook.after_backward(model, 7)
    with pytest.raises(PruningError, match="no layer"):
        hook.after_backward(nn.Sequential(nn.Linear(2, 2)), 0)


def test_rejects_bad_strengths_and_frozen_producers():
    model, x, groups, clusters, _ = _hooked()
    with pytest.raises(ValueError):
        CentripetalSGD(model, groups, clusters, centripetal=-1.0)
    model.stem.weight.requires_grad_(False)
    with pytest.raises(PruningError, match="frozen"):
        CentripetalSGD(model, groups, clusters)


def test_merge_and_decay_matrices_written_out_in_float64():
    # issue 14: clusters {0, 2}, {1}, {3, 4, 5}; M averages within a cluster, Gamma = eta I + eps (I - M),
    # exactly in float64 (a float32 identity would round eta = 0.1 on the diagonal)
    cl = [[0, 2], [1], [3, 4, 5]]
    M = merge_matrix(cl, 6)
    h, t = 1 / 2, 1 / 3
    expected = torch.tensor([[h, 0, h, 0, 0, 0], [0, 1, 0, 0, 0, 0], [h, 0, h, 0, 0, 0],
                             [0, 0, 0, t, t, t], [0, 0, 0, t, t, t], [0, 0, 0, t, t, t]], dtype=torch.float64)
    assert M.dtype == torch.float64 and torch.equal(M, expected)
    G = decay_matrix(cl, 6, 0.1, 0.3)
    assert G.dtype == torch.float64
    assert torch.equal(G, 0.1 * torch.eye(6, dtype=torch.float64) + 0.3 * (torch.eye(6, dtype=torch.float64) - expected))


def test_fp_csgd_hands_every_argument_to_csgd_prune(monkeypatch):
    # issue 14: fp.csgd is a thin wrapper; each argument must reach the function the CLI runs too
    import filterprune.methods.csgd_run as run_mod
    from filterprune.config import PruneRunConfig, TrainConfig
    from filterprune.methods.csgd_run import CSGDOptions, csgd

    seen = {}

    def spy(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return "result"

    monkeypatch.setattr(run_mod, "csgd_prune", spy)
    model, x, data, val = object(), object(), object(), object()
    opts = CSGDOptions(centripetal=0.25)
    cfg = TrainConfig(epochs=9, lr=0.5)
    assert csgd(model, x, data, target_params=0.3, epochs=4, lr=0.02, train=cfg, val_data=val, options=opts,
                global_ranking=False, allocation="uniform", min_channels=3, round_to=2, seed=7,
                run_dir="somewhere") == "result"
    args, kw = seen["args"], seen["kwargs"]
    assert args[:4] == (model, x, data, val)
    assert args[4] == dataclasses.replace(cfg, epochs=4, lr=0.02)  # epochs and lr override the recipe
    assert kw == {"target_macs": None, "target_params": 0.3, "ratio": None, "global_ranking": False,
                  "allocation": "uniform", "min_channels": 3, "round_to": 2, "seed": 7, "options": opts,
                  "run_dir": "somewhere"}
    csgd(model, x, data, ratio=0.5, options={"centripetal": 0.5})  # a dict becomes CSGDOptions
    assert seen["kwargs"]["ratio"] == 0.5 and seen["kwargs"]["options"] == CSGDOptions(centripetal=0.5)
    defaults = {k: seen["kwargs"][k] for k in ("global_ranking", "allocation", "min_channels", "round_to", "seed",
                                               "run_dir")}
    assert defaults == {"global_ranking": True, "allocation": "global", "min_channels": 1, "round_to": 1, "seed": 0,
                        "run_dir": None}
    assert seen["args"][3] is None and seen["args"][4] == PruneRunConfig().finetune  # the CLI's fine-tune recipe
