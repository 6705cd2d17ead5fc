"""CAR / RAR: oracles against physically pruned copies, fast == naive, greedy, class-wise records, CLI."""

from __future__ import annotations

import copy
import csv
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from criteria_nets import two_conv
from torch import nn

from filterprune.criteria import ScoringContext, create_criterion
from filterprune.criteria.car import car_analysis, export_car_records
from filterprune.criteria.car_greedy import car_prune_layer, find_group, steps_for_k
from filterprune.graph import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.models.cifar_resnet import CifarResNet
from models_zoo import PRUNABLE, build


def data(n_batches: int = 3, batch: int = 16, shape=(3, 8, 8), seed: int = 0, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


def labelled(model, batches):
    """Half the labels are the model's own predictions, so that removing a channel changes accuracy.

    Random nets predict one class for every input (the classifier bias dominates), so the classifier's
    bias is first shifted to centre the logits over the data.
    """
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        fc.bias -= torch.cat([model.eval()(x) for x, _ in batches]).mean(0)
        out = []
        for x, y in batches:
            pred = model.eval()(x).argmax(1)
            out.append((x, torch.where(torch.arange(len(y)) % 2 == 0, pred, y)))
    return out


def pruned_stats(model, groups, gid, chans, batches, regression=False):
    """Accuracy (%), mean loss and per-class hits of a physically pruned copy: the independent oracle."""
    net = copy.deepcopy(model)
    if chans:
        apply_plan(net, groups, PrunePlan({gid: sorted(chans)}))
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(x) for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    if regression:
        return float((out.reshape(y.shape) - y).double().square().sum())
    hit = out.argmax(1) == y
    with torch.no_grad():
        loss = sum(F.cross_entropy(net(x), yy).double() * len(yy) for x, yy in batches) / len(y)
    return 100.0 * float(hit.double().mean()), float(loss), torch.bincount(y[hit], minlength=10).double()


def tiny_resnet() -> tuple[nn.Module, torch.Tensor]:
    """A CIFAR ResNet-8 with quarter widths: PadShortcut and residual stream groups, on 8x8 inputs."""
    torch.manual_seed(0)
    model = CifarResNet(8, width_mult=0.25)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval(), torch.randn(2, 3, 8, 8)


def ctx_for(model, x, batches, **kw):
    return ScoringContext(model, x, trace_groups(model, x), data=batches, num_batches=len(batches), **kw)


# ---- the index ------------------------------------------------------------------------------------


def test_car_equals_accuracy_drop_of_physically_pruned_copies():
    model, x, _ = two_conv()
    batches = labelled(model, data(2))
    groups = trace_groups(model, x)
    res = car_analysis(ctx_for(model, x, batches))
    base_acc, base_loss, base_hits = pruned_stats(model, groups, "conv1", [], batches)
    assert res.base == pytest.approx(base_acc) and res.base_loss == pytest.approx(base_loss)
    counts = torch.bincount(torch.cat([y for _, y in batches]), minlength=10).double()
    for gid, size in (("conv1", 4), ("conv2", 6)):
        for c in range(size):
            acc, loss, hits = pruned_stats(model, groups, gid, [c], batches)
            assert float(res.drop[gid][c]) == pytest.approx(base_acc - acc, abs=1e-9)
            assert float(res.delta_loss[gid][c]) == pytest.approx(loss - base_loss, abs=1e-5)
            expected = 100 * (base_hits - hits) / counts.clamp(min=1)
            torch.testing.assert_close(res.class_drop[gid][c], expected)


def small_vgg() -> tuple[nn.Module, torch.Tensor]:
    """convnet_small: in-place ReLU modules and a flatten into the classifier."""
    from filterprune.models import create_model

    torch.manual_seed(0)
    return create_model("convnet_small", in_chans=3).eval(), torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("name", [*PRUNABLE, "tiny_resnet", "small_vgg"])
def test_fast_equals_naive(name):
    model, x = {"tiny_resnet": tiny_resnet, "small_vgg": small_vgg}.get(name, lambda: build(name))()
    batches = labelled(model, data(3, 12))
    ctx = ctx_for(model, x, batches)
    fast = car_analysis(ctx, max_rows=30)  # 2 channels per suffix forward: exercises batching
    naive = car_analysis(ctx, fast=False)
    assert fast.fast and not naive.fast
    assert fast.base == naive.base and fast.drop.keys() == naive.drop.keys()
    for gid in fast.drop:
        assert torch.equal(fast.drop[gid], naive.drop[gid]), gid  # accuracies exactly equal
        assert torch.equal(fast.class_drop[gid], naive.class_drop[gid]), gid
        torch.testing.assert_close(fast.delta_loss[gid], naive.delta_loss[gid], rtol=1e-5, atol=2e-6)  # float32 loss noise
    assert any(bool((d != 0).any()) for d in fast.drop.values())  # the test is not vacuous


@pytest.mark.parametrize("fast", [True, False])
def test_shards_are_disjoint_and_sum_to_the_whole(fast):
    from filterprune.criteria._car_fast import CarEngine

    model, x = build("residual")
    groups = trace_groups(model, x)
    requests = [(g, c) for g in groups if g.prunable for c in range(g.size)]
    with torch.no_grad():
        engine = CarEngine(model, groups, labelled(model, data(2, 8)), fast=fast)
        whole = engine.evaluate(requests)
        parts = [engine.evaluate(requests, shard=(r, 2)) for r in (0, 1)]
    for r, part in enumerate(parts):
        assert torch.equal(part.base, whole.base)
        assert not part.rows[1 - r::2].any()  # rows of the other shard stay zero
    torch.testing.assert_close(parts[0].rows + parts[1].rows, whole.rows, rtol=1e-6, atol=1e-5)


def test_scores_order_by_car_then_loss():
    model, x = build("residual")
    res = car_analysis(ctx_for(model, x, labelled(model, data(2, 8))))
    scores = res.scores()
    car = torch.cat(list(res.drop.values()))
    dl = torch.cat(list(res.delta_loss.values()))
    s = torch.cat(list(scores.values())).double()
    assert (car[:, None] == car[None]).sum() > len(car)  # there are ties to break
    for i in range(len(s)):
        for j in range(len(s)):
            if car[i] < car[j] or (car[i] == car[j] and dl[i] < dl[j]):
                assert s[i] < s[j]


def test_eval_images_cuts_the_data():
    model, x, _ = two_conv()
    batches = data(3, 16)
    res = car_analysis(ctx_for(model, x, batches), eval_images=20)
    ref = car_analysis(ctx_for(model, x, [batches[0], (batches[1][0][:4], batches[1][1][:4])]))
    assert res.num_images == 20
    assert all(torch.equal(res.drop[k], ref.drop[k]) for k in res.drop)
    with pytest.raises(ValueError, match="eval_images"):
        create_criterion("car", eval_images=0)


def test_untraceable_model_falls_back_to_naive(caplog):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 1.0
            return self.fc(F.relu(self.conv2(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Branchy().eval()
    with caplog.at_level(logging.WARNING):
        res = car_analysis(ctx_for(model, torch.randn(2, 3, 8, 8), data(2, 8)))
    assert not res.fast and "fast path unavailable" in caplog.text
    assert res.drop["conv1"].shape == (4,)


def test_aliasing_inplace_op_falls_back_to_naive(caplog):
    class Aliasing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(8, 10)

        def forward(self, x):
            x = self.conv1(x)
            y = self.conv2(x)
            x.relu_()  # mutates x after conv2 read it; the later read below sees the mutation
            return self.fc(torch.cat([x.mean((2, 3)), y.mean((2, 3))], 1))

    torch.manual_seed(0)
    model = Aliasing().eval()
    batches = labelled(model, data(2, 8))
    with caplog.at_level(logging.WARNING):
        res = car_analysis(ctx_for(model, torch.randn(2, 3, 8, 8), batches))
    assert not res.fast and "in-place op" in caplog.text


# ---- class-wise records -----------------------------------------------------------------------------


def test_classwise_score_and_records(tmp_path):
    model, x, _ = two_conv()
    batches = labelled(model, data(2))
    ctx = ctx_for(model, x, batches)
    crit = create_criterion("car-classwise")
    scores = crit.score(ctx)
    res = crit.last_result
    for gid, s in scores.items():
        worst = res.class_drop[gid].max(1).values
        for i in range(len(s)):
            for j in range(len(s)):
                if worst[i] < worst[j]:
                    assert s[i] < s[j]
    names = [f"class{k}" for k in range(10)]
    js = json.loads(export_car_records(res, tmp_path / "car.json", names).read_text())
    assert js["num_images"] == 32 and len(js["records"]) == 10
    rec = js["records"][5]  # conv2, channel 1
    assert (rec["group"], rec["channel"]) == ("conv2", 1)
    assert rec["car"] == pytest.approx(float(res.drop["conv2"][1]))
    per = res.class_drop["conv2"][1]
    assert rec["most_affected"] == names[int(per.argmax())] and rec["least_affected"] == names[int(per.argmin())]
    rows = list(csv.DictReader((export_car_records(res, tmp_path / "car.csv", names)).open()))
    assert len(rows) == 10 and float(rows[5]["class_car:class3"]) == pytest.approx(float(per[3]))
    with pytest.raises(ValueError, match=".json or .csv"):
        export_car_records(res, tmp_path / "car.txt")


# ---- RAR on a regression CNN ------------------------------------------------------------------------


class Regressor(nn.Module):
    """Predicts one number per image (here: the mean of the red channel's centre)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.conv2(x)).mean((2, 3)))  # (N, 1): the tracer's probe needs a channel axis


def test_rar_on_a_regression_cnn():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(256, 3, 8, 8, generator=g)
    ys = xs[:, 0, 2:6, 2:6].mean((1, 2)).unsqueeze(1) * 3  # (N, 1)
    model = Regressor()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        i = torch.randint(0, 256, (64,), generator=g)
        opt.zero_grad()
        F.mse_loss(model(xs[i]), ys[i]).backward()
        opt.step()
    model.eval()
    batches = [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, 128, 32)]
    x = xs[:2]
    groups = trace_groups(model, x)
    ctx = ScoringContext(model, x, groups, data=batches, num_batches=4, loss_fn=F.mse_loss)
    r2 = car_analysis(ctx, metric="r2")
    assert r2.base > 0.5  # the net did learn the target
    y = torch.cat([b[1] for b in batches]).double()
    sst = float((y - y.mean()).square().sum())
    sse0 = pruned_stats(model, groups, "conv1", [], batches, regression=True)
    assert r2.base == pytest.approx(1 - sse0 / sst, rel=1e-6)
    for c in range(8):
        sse = pruned_stats(model, groups, "conv1", [c], batches, regression=True)
        assert float(r2.drop["conv1"][c]) == pytest.approx((sse - sse0) / sst, rel=1e-4, abs=1e-7)
    assert float(torch.cat(list(r2.drop.values())).max()) > 0.05  # some filters matter
    naive = car_analysis(ctx, metric="r2", fast=False)
    mse = car_analysis(ctx, metric="neg_mse")
    for gid in r2.drop:
        torch.testing.assert_close(r2.drop[gid], naive.drop[gid], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(mse.drop[gid], r2.drop[gid] * sst / 128)
    scores = create_criterion("car", metric="r2").score(ctx)
    torch.testing.assert_close(scores["conv2"], r2.drop["conv2"].float())
    with pytest.raises(ValueError, match="outputs per sample"):  # class labels are no regression targets
        m, xx, _ = two_conv()
        car_analysis(ctx_for(m, xx, data(1, 4)), metric="r2")


# ---- greedy -----------------------------------------------------------------------------------------


def brute_greedy(model, x, batches, gid, n_remove):
    """One channel at a time, each candidate evaluated on a physically pruned copy."""
    groups = trace_groups(model, x)
    removed: list[int] = []
    size = find_group(groups, gid).size
    while len(removed) < n_remove:
        base_acc, _, _ = pruned_stats(model, groups, gid, removed, batches)
        cands = []
        for c in (c for c in range(size) if c not in removed):
            acc, loss, _ = pruned_stats(model, groups, gid, removed + [c], batches)
            cands.append((round(base_acc - acc, 9), loss, c))
        removed.append(min(cands)[2])
    return removed


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_layer_pruning_matches_brute_force(fast):
    model, x = tiny_resnet()
    batches = labelled(model, data(2, 16))
    expected = brute_greedy(model, x, batches, "conv1", 2)  # the stem: tied to the whole first stage
    net = copy.deepcopy(model)
    result = car_prune_layer(net, x, batches, "conv1", 2, k=1, fast=fast)
    assert result.removed == expected and result.fast == fast
    assert net.conv1.out_channels == model.conv1.out_channels - 2
    assert net.layer1[0].conv2.out_channels == model.layer1[0].conv2.out_channels - 2
    assert len(result.history) == 2


def test_greedy_k_and_errors():
    model, x = build("conv_chain")
    batches = labelled(model, data(2, 8))
    net = copy.deepcopy(model)
    result = car_prune_layer(net, x, batches, "block2.0", 5, k=2)  # any conv of the group works
    assert len(result.history) == 3 and [len(h["removed"]) for h in result.history] == [2, 2, 1]
    assert net.block2[0].out_channels == 24 - 5
    plan_only = car_prune_layer(copy.deepcopy(model), x, batches, "block2.0", 5, k=2, apply=False)
    assert plan_only.removed == result.removed
    with pytest.raises(ValueError, match="n_remove"):
        car_prune_layer(copy.deepcopy(model), x, batches, "block2.0", 24)
    with pytest.raises(ValueError, match="no channel group"):
        car_prune_layer(copy.deepcopy(model), x, batches, "nope", 1)


def test_steps_for_k():
    model, x = build("conv_chain")
    assert steps_for_k(model, x, 1, ratio=0.5) == 36  # 72 prunable channels, half of them
    assert steps_for_k(model, x, 8, ratio=0.5) == 5
    # sensitivity curves do not exist yet when the steps are counted: counted with equal fractions
    assert steps_for_k(model, x, 8, ratio=0.5, allocation="sensitivity") == 5
    sens = steps_for_k(model, x, 3, target_macs=0.5, allocation="sensitivity")
    assert sens == steps_for_k(model, x, 3, target_macs=0.5, allocation="uniform")
    assert sens != steps_for_k(model, x, 3, target_macs=0.5)  # global ranking removes another count here
    with pytest.raises(ValueError, match="k must be"):
        steps_for_k(model, x, 0, ratio=0.5)


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_prune_with_car(tmp_path):
    from filterprune.cli.main import main

    out = tmp_path / "pruned"
    argv = ["-q", "prune", "--model", "convnet_small", "--data", "digits", "--criterion", "car",
            "--criterion-options", "eval_images=64,k=5", "--target-macs", "0.3", "--finetune-epochs", "0",
            "--finetune-device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.3, abs=0.01)
    assert len(summary["report"]["steps"]) >= 2  # about k=5 filters per step
