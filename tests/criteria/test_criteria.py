"""Every registered criterion on every tiny topology (contract, purity, determinism), plus oracles."""

from __future__ import annotations

import copy

import pytest
import torch
from criteria_nets import batches, traced_groups, two_conv
from torch import nn

from filterprune.criteria import ScoringContext, ScoringError, create_criterion, list_criteria

ALL = list_criteria()


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"state_dict[{k}] changed"
    for n, g in before["grad"].items():
        h = after["grad"][n]
        assert (g is None) == (h is None) and (g is None or torch.equal(g, h)), f"{n}.grad changed"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]


def prepare(model: nn.Module, x: torch.Tensor) -> None:
    """Give the model non-trivial state a criterion must not touch: grads, a frozen param, train mode."""
    model.eval()
    model(x).square().mean().backward()
    next(iter(model.parameters())).requires_grad_(False)
    model.train()


def check_criterion(name: str, model: nn.Module, x: torch.Tensor, groups) -> None:
    prepare(model, x)
    crit = create_criterion(name)
    ctx = ScoringContext(model, x, groups, data=batches(3, (4, *x.shape[1:])), seed=3, num_batches=2)
    before = snapshot(model)
    needs_bn = name == "bn" and any(
        not any(m.module_type.startswith("BatchNorm") for m in g.members) for g in groups if g.prunable
    )
    if needs_bn:
        with pytest.raises(ScoringError, match="no affine BatchNorm"):
            crit.score(ctx)
        assert_same(before, snapshot(model))
        return
    scores = crit.score(ctx)
    assert_same(before, snapshot(model))
    assert list(scores) == [g.id for g in groups if g.prunable]
    for g in groups:
        if g.prunable:
            s = scores[g.id]
            assert s.shape == (g.size,) and s.dtype == torch.float32 and s.device.type == "cpu"
            assert torch.isfinite(s).all()
    again = crit.score(ctx)
    assert all(torch.equal(scores[k], again[k]) for k in scores), "not deterministic under a fixed seed"
    if crit.requires_data:
        with pytest.raises(ValueError, match="needs data"):
            crit.score(ScoringContext(model, x, groups))
        assert_same(before, snapshot(model))


@pytest.mark.parametrize("name", ALL)
def test_contract_on_two_conv(name):
    model, x, groups = two_conv()
    check_criterion(name, model, x, groups)


@pytest.mark.parametrize("name", ALL)
def test_contract_on_tiny_models(name, tiny):
    _, model, x = tiny
    groups = traced_groups(model, x)
    check_criterion(name, model, x, groups)


def test_registered():
    assert {"l1", "l2", "bn", "taylor", "random"} <= set(ALL)
    assert list_criteria("l*") == ["l1", "l2"]
    assert create_criterion("taylor").requires_data and not create_criterion("l1").requires_data


# ---- oracles on the hand-described 2-conv net ------------------------------------------------------


def score(name: str, model, x, groups, **kw) -> dict:
    ctx_kw = {k: kw.pop(k) for k in ("data", "seed", "num_batches") if k in kw}
    return create_criterion(name, **kw).score(ScoringContext(model, x, groups, **ctx_kw))


def test_l1_l2_equal_hand_computation():
    model, x, groups = two_conv()
    w1, w2, wfc = model.conv1.weight.detach(), model.conv2.weight.detach(), model.fc.weight.detach()
    l1 = score("l1", model, x, groups)
    torch.testing.assert_close(l1["conv1"], w1.abs().sum(dim=(1, 2, 3)))  # conv bias, BN not included
    torch.testing.assert_close(l1["conv2"], w2.abs().sum(dim=(1, 2, 3)))
    l2 = score("l2", model, x, groups)
    torch.testing.assert_close(l2["conv1"], w1.flatten(1).norm(dim=1))
    with_consumers = score("l1", model, x, groups, include_consumers=True)
    torch.testing.assert_close(with_consumers["conv1"], w1.abs().sum(dim=(1, 2, 3)) + w2.abs().sum(dim=(0, 2, 3)))
    torch.testing.assert_close(with_consumers["conv2"], w2.abs().sum(dim=(1, 2, 3)) + wfc.abs().sum(0))
    l2c = score("l2", model, x, groups, include_consumers=True)  # per-member norms, then summed
    torch.testing.assert_close(l2c["conv1"], w1.flatten(1).norm(dim=1) + w2.transpose(0, 1).flatten(1).norm(dim=1))


def test_l1_sums_over_coupled_producers():
    model, x, groups = two_conv()
    # pretend conv1 and conv2's first 4 filters are tied by a residual add
    from criteria_nets import member

    from filterprune.graph import ChannelGroup

    tied = [ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("bn1", "out", "BatchNorm2d", 4),
                                      member("conv2", "out", "Conv2d", 4), member("bn2", "out", "BatchNorm2d", 4)))]
    s = score("l1", model, x, tied)["conv1"]
    w1, w2 = model.conv1.weight.detach(), model.conv2.weight.detach()
    torch.testing.assert_close(s, w1.abs().sum(dim=(1, 2, 3)) + w2[:4].abs().sum(dim=(1, 2, 3)))
    bn = score("bn", model, x, tied)["conv1"]
    torch.testing.assert_close(bn, model.bn1.weight.detach().abs() + model.bn2.weight.detach()[:4].abs())


def test_lp_norm_refuses_a_non_positive_order_and_names_a_group_without_weights():
    from filterprune.criteria.magnitude import LpNorm

    for p in (0, 0.0, -1):  # p = 0 is the boundary: it is no norm
        with pytest.raises(ValueError, match=f"p must be > 0, got {p}"):
            LpNorm(p=p)
    crit = LpNorm(p=0.5, include_consumers=True)
    assert crit.p == 0.5 and repr(crit) == "LpNorm(name='', p=0.5, include_consumers=True)"
    model, x, groups = two_conv()
    only_bn = [type(g)(g.id, g.size, tuple(m for m in g.members if m.module_type == "BatchNorm2d")) for g in groups[:1]]
    with pytest.raises(ScoringError, match="criterion 'l1': group conv1 has no conv or Linear weights"):
        score("l1", model, x, only_bn)


def test_bn_equals_abs_gamma():
    model, x, groups = two_conv()
    s = score("bn", model, x, groups)
    torch.testing.assert_close(s["conv1"], model.bn1.weight.detach().abs())
    torch.testing.assert_close(s["conv2"], model.bn2.weight.detach().abs())
    assert (model.bn1.weight < 0).any()  # the fixture has signed gammas, so abs matters


def test_bn_refuses_group_without_bn():
    model, x, groups = two_conv()
    no_bn = [type(g)(g.id, g.size, tuple(m for m in g.members if m.module_type != "BatchNorm2d")) for g in groups[:1]]
    with pytest.raises(ValueError, match=r"^criterion 'bn': group conv1 has no affine BatchNorm; use another "
                                         r"criterion or leave the group out \(ignored_layers\)$"):
        score("bn", model, x, no_bn)


def test_random_seeded():
    model, x, groups = two_conv()
    a, b, c = (score("random", model, x, groups, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1"], c["conv1"])
    rev = score("random", model, x, list(reversed(groups)), seed=0)  # independent of group order
    assert all(torch.equal(a[k], rev[k]) for k in a)


def _taylor_brute_force(model: nn.Module, data, group_params: list[tuple[str, int]], size: int,
                        train: bool = False) -> torch.Tensor:
    """mean_b (d/de L_b(theta + e * theta_S_c) at e=0)^2 per channel c, by central differences in float64.

    ``group_params`` lists (parameter name, dim) pairs whose index c along dim belongs to channel c.
    No autograd and no slicing helper: an independent oracle for eq. (8). ``train``: BatchNorm uses
    the batch statistics (the copy's running statistics change; the caller's model does not).
    """
    model = copy.deepcopy(model).double().train(train)
    params = dict(model.named_parameters())
    eps = 1e-5
    out = torch.zeros(size, dtype=torch.float64)
    with torch.no_grad():
        for x, y in data:
            for c in range(size):
                losses = []
                for sign in (1, -1):
                    saved = {n: params[n].clone() for n, _ in group_params}
                    for name, dim in group_params:
                        params[name].select(dim, c).mul_(1 + sign * eps)  # theta + e * theta_S_c
                    losses.append(nn.functional.cross_entropy(model(x.double()), y))
                    for n, v in saved.items():
                        params[n].copy_(v)
                out[c] += ((losses[0] - losses[1]) / (2 * eps)) ** 2
    return (out / len(data)).float()


def test_taylor_equals_brute_force():
    model, x, groups = two_conv()
    data = batches(3)
    s = score("taylor", model, x, groups, data=data, num_batches=3)
    own = {"conv1": [("conv1.weight", 0), ("conv1.bias", 0), ("bn1.weight", 0), ("bn1.bias", 0)],
           "conv2": [("conv2.weight", 0), ("bn2.weight", 0), ("bn2.bias", 0)]}
    for gid, size in (("conv1", 4), ("conv2", 6)):
        torch.testing.assert_close(s[gid], _taylor_brute_force(model, data, own[gid], size), rtol=1e-3, atol=1e-9)
    # consumers add their input-channel slices
    sc = score("taylor", model, x, groups, data=data, num_batches=3, include_consumers=True)
    brute = _taylor_brute_force(model, data, own["conv1"] + [("conv2.weight", 1)], 4)
    torch.testing.assert_close(sc["conv1"], brute, rtol=1e-3, atol=1e-9)
    # only num_batches batches are used
    s1 = score("taylor", model, x, groups, data=data, num_batches=1)
    torch.testing.assert_close(s1["conv2"], _taylor_brute_force(model, data[:1], own["conv2"], 6), rtol=1e-3, atol=1e-9)


def test_taylor_includes_batchnorm():
    """Torch-Pruning 1.6.1 drops BN gamma/beta from its Taylor score; ours must not."""
    model, x, groups = two_conv()
    data = batches(2)
    only_bn = [type(g)(g.id, g.size, tuple(m for m in g.members if m.module_type == "BatchNorm2d")) for g in groups[:2]]
    s = score("taylor", model, x, only_bn, data=data, num_batches=2)
    for gid, bn, size in (("conv1", "bn1", 4), ("conv2", "bn2", 6)):
        brute = _taylor_brute_force(model, data, [(f"{bn}.weight", 0), (f"{bn}.bias", 0)], size)
        assert float(brute.min()) > 0  # gamma and beta matter: a score without them would be 0
        torch.testing.assert_close(s[gid], brute, rtol=1e-3, atol=1e-9)


def test_taylor_train_mode_keeps_running_stats():
    model, x, groups = two_conv()
    before = snapshot(model)
    data = batches(2)
    s = score("taylor", model, x, groups, data=data, num_batches=2, train_mode=True)
    assert_same(before, snapshot(model))
    # the oracle in train mode (batch statistics): conv weights feeding a BN contribute ~0 there,
    # gamma and beta carry the score
    own = {"conv1": [("conv1.weight", 0), ("conv1.bias", 0), ("bn1.weight", 0), ("bn1.bias", 0)],
           "conv2": [("conv2.weight", 0), ("bn2.weight", 0), ("bn2.bias", 0)]}
    for gid, size in (("conv1", 4), ("conv2", 6)):
        brute = _taylor_brute_force(model, data, own[gid], size, train=True)
        torch.testing.assert_close(s[gid], brute, rtol=1e-3, atol=1e-9)
    eval_scores = score("taylor", model, x, groups, data=data, num_batches=2)
    assert not torch.allclose(s["conv2"], eval_scores["conv2"], rtol=1e-2)  # the mode matters


@pytest.mark.parametrize("name", ALL)
def test_repr_names_the_class_and_the_registered_name(name):
    crit = create_criterion(name)
    assert repr(crit).startswith(f"{type(crit).__name__}(name={name!r}")


def test_bn_reads_only_the_norm_layers_that_output_the_channels():
    # issue 14, session 15: a norm layer listed as an "in" member (its rows are the same gamma) is not
    # counted: the score is |gamma| of the "out" norm layers only, as documented
    from criteria_nets import member

    from filterprune.graph import ChannelGroup

    model, x, groups = two_conv()
    g = groups[0]
    with_in = [ChannelGroup(g.id, g.size, (*g.members, member("bn1", "in", "BatchNorm2d", 4)))]
    s = score("bn", model, x, with_in)["conv1"]
    torch.testing.assert_close(s, model.bn1.weight.detach().abs())
