"""PLS+VIP: the PLS2/VIP numbers against scikit-learn, the features against a hand forward pass, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from criteria_nets import member, two_conv
from sklearn.cross_decomposition import PLSRegression

from filterprune.criteria import ScoringContext, ScoringError, create_criterion
from filterprune.criteria._features import Block, collect_pooled
from filterprune.criteria._pls import pls2, vip
from filterprune.graph import ChannelGroup
from filterprune.graph.trace import trace_groups
from models_zoo import build


def sklearn_vip(x: np.ndarray, y: np.ndarray, n_components: int = 2, **kw) -> np.ndarray:
    """VIP from sklearn's fitted PLSRegression, written as the reference code's ``VIPPruning.vip``."""
    pls = PLSRegression(n_components=n_components, scale=True, **kw).fit(x, y)
    t, w, q = pls.x_scores_, pls.x_weights_, pls.y_loadings_
    f, h = w.shape
    s = np.diag(t.T @ t @ q.T @ q).reshape(h, -1)  # s_a = (t_a't_a)(q_a'q_a)
    return np.sqrt(f * (np.square(w / np.linalg.norm(w, axis=0)) @ s).ravel() / s.sum())


def random_problem(n: int = 120, f: int = 25, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = rng.normal(size=(n, f)) * rng.uniform(0.1, 10, size=f) + rng.normal(size=f) * 5  # unequal scales
    x[:, :4] = rng.normal(size=(k, 4))[labels] * 3 + rng.normal(size=(n, 4)) * 0.5  # informative columns
    x[:, 6] = 3.0  # a dead filter: constant column
    return x, np.eye(k)[labels]


def test_vip_matches_sklearn_pls_regression():
    x, y = random_problem()
    ours = vip(pls2(torch.from_numpy(x), torch.from_numpy(y), 2)).numpy()
    # sklearn's NIPALS stops at ||dw||^2 < tol (1e-6): equal to ~1e-3 by default, to ~1e-6 when tight
    np.testing.assert_allclose(ours, sklearn_vip(x, y), atol=5e-3)
    np.testing.assert_allclose(ours, sklearn_vip(x, y, tol=1e-15, max_iter=10_000), rtol=1e-5, atol=1e-6)
    ours32 = vip(pls2(torch.from_numpy(x).float(), torch.from_numpy(y), 2)).numpy()  # float32 features
    np.testing.assert_allclose(ours32, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_pls_factors_match_sklearn_and_vip_squares_sum_to_f(h):
    x, y = random_problem(seed=h)
    fit = pls2(torch.from_numpy(x), torch.from_numpy(y), h)
    ref = PLSRegression(n_components=h, scale=True, tol=1e-15, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(fit.x_weights.numpy(), ref.x_weights_, atol=1e-5)  # same sign convention
    np.testing.assert_allclose(fit.x_scores.numpy(), ref.x_scores_, atol=1e-4)
    np.testing.assert_allclose(fit.y_loadings.numpy(), ref.y_loadings_, atol=1e-5)
    v = vip(fit)
    assert float(v.square().sum()) == pytest.approx(x.shape[1], rel=1e-10)  # sum VIP^2 = F
    assert float(v[6]) == 0.0  # constant column: std 1 after centring -> zero weight
    assert torch.argsort(v, descending=True)[:4].sort().values.tolist() == [0, 1, 2, 3]


def test_pls_does_not_touch_its_input_unless_asked():
    x, y = (torch.from_numpy(a) for a in random_problem())
    before = x.clone()
    pls2(x, y)
    assert torch.equal(x, before)
    pls2(x, y, overwrite_x=True)
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1], dtype=x.dtype), atol=1e-12, rtol=0)


def test_pls_degenerate_inputs_give_uniform_vip():
    x = torch.ones(10, 5, dtype=torch.float64)  # nothing varies
    y = F.one_hot(torch.arange(10) % 2).double()
    assert torch.equal(vip(pls2(x, y)), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="same N"):
        pls2(torch.zeros(4, 3), torch.zeros(5, 2))


# ---- the criterion on the hand-described 2-conv net ---------------------------------------------


def labelled_batches(n: int = 4, size: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(n)]


def hand_features(model, data, pooling="max", position="pre_bn") -> tuple[np.ndarray, np.ndarray]:
    """Pooled conv1 and conv2 outputs by an explicit forward pass (no hooks), and one-hot labels (10 classes)."""
    pool = (lambda t: t.amax((2, 3))) if pooling == "max" else (lambda t: t.mean((2, 3)))
    rows, labels = [], []
    with torch.no_grad():
        for x, y in data:
            c1 = model.conv1(x)
            a1 = F.relu(model.bn1(c1))
            c2 = model.conv2(a1)
            feats = (c1, c2) if position == "pre_bn" else (a1, F.relu(model.bn2(c2)))
            rows.append(torch.cat([pool(t) for t in feats], 1))
            labels.append(y)
    y = torch.cat(labels)
    return torch.cat(rows).double().numpy(), F.one_hot(y, 10).double().numpy()


@pytest.mark.parametrize("pooling,position", [("max", "pre_bn"), ("avg", "post_act")])
def test_criterion_equals_sklearn_on_hand_features(pooling, position):
    model, x, groups = two_conv()
    data = labelled_batches()
    scores = create_criterion("pls-vip", pooling=pooling, position=position).score(
        ScoringContext(model, x, groups, data=data))
    feats, onehot = hand_features(model, data, pooling, position)
    ref = sklearn_vip(feats, onehot, tol=1e-15, max_iter=10_000)
    torch.testing.assert_close(scores["conv1"], torch.from_numpy(ref[:4]).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores["conv2"], torch.from_numpy(ref[4:]).float(), rtol=1e-4, atol=1e-5)


def test_tied_channels_average_their_producers_vips():
    model, x, _ = two_conv()
    # conv1 and conv2's first 4 filters tied by a residual add: 4 channels, 8 columns
    tied = [ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("bn1", "out", "BatchNorm2d", 4),
                                      member("conv2", "out", "Conv2d", 4), member("bn2", "out", "BatchNorm2d", 4)))]
    data = labelled_batches()
    feats, onehot = hand_features(model, data)
    ref = torch.from_numpy(sklearn_vip(feats[:, :8], onehot, tol=1e-15, max_iter=10_000)).float()
    for reduce, expected in (("mean", (ref[:4] + ref[4:]) / 2), ("max", torch.maximum(ref[:4], ref[4:]))):
        s = create_criterion("pls-vip", reduce=reduce).score(ScoringContext(model, x, tied, data=data))["conv1"]
        torch.testing.assert_close(s, expected, rtol=1e-4, atol=1e-5)


def test_scoring_leaves_the_model_as_it_was():
    model, x = build("residual")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    groups = trace_groups(model, x)
    scores = create_criterion("pls-vip", samples=12).score(ScoringContext(model, x, groups, data=labelled_batches()))
    assert set(scores) == {g.id for g in groups if g.prunable}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())


def test_samples_are_class_stratified_and_stop_reading_early():
    model, _, _ = two_conv()
    labels = torch.tensor([0] * 12 + [1] * 4 + [2] * 8 + [0, 1, 2] * 8)  # class 0 comes first
    data = [(torch.randn(4, 3, 8, 8), labels[i:i + 4]) for i in range(0, len(labels), 4)]
    read = []

    def stream():
        for i, batch in enumerate(data):
            read.append(i)
            yield batch

    xmat, y = collect_pooled(model, stream(), [Block("conv1", (0, 1, 2, 3))], samples=9, num_classes=3)
    assert xmat.shape == (9, 4) and xmat.dtype == torch.float32
    assert torch.bincount(y, minlength=3).tolist() == [3, 3, 3]
    assert len(read) < len(data)
    # every image, sized from len(data)
    xall, yall = collect_pooled(model, data, [Block("conv2", (5, 0))], pooling="avg")
    assert xall.shape == (len(labels), 2) and torch.equal(yall, labels)
    with torch.no_grad():
        out = model.conv2(F.relu(model.bn1(model.conv1(data[0][0]))))
    torch.testing.assert_close(xall[:4], out.mean((2, 3))[:, [5, 0]])


@pytest.mark.parametrize("kwargs,needle", [
    ({"pooling": "median"}, "pooling"), ({"position": "after"}, "position"), ({"n_components": 0}, "n_components"),
    ({"samples": 0}, "samples"), ({"reduce": "sum"}, "reduce"), ({"p": 0.1}, "unexpected keyword"),
])
def test_bad_options_raise_value_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_criterion("pls-vip", **kwargs)


def test_pls_without_a_dead_column_and_unscaled_match_sklearn():
    # issue 14: random_problem's constant column makes one row of Xᵀ Y exactly zero, which hid an
    # inverted "nothing left to explain" test; and scale=False was never compared
    x, y = random_problem(seed=5)
    x = np.delete(x, 6, axis=1)
    for scale in (True, False):
        fit = pls2(torch.from_numpy(x), torch.from_numpy(y), 2, scale=scale)
        ref = PLSRegression(n_components=2, scale=scale, tol=1e-15, max_iter=10_000).fit(x, y)
        np.testing.assert_allclose(fit.x_weights.numpy(), ref.x_weights_, atol=1e-5)
        np.testing.assert_allclose(fit.y_loadings.numpy(), ref.y_loadings_, atol=1e-5)
        np.testing.assert_allclose(fit.x_mean.numpy(), x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(fit.x_std.numpy(), x.std(0, ddof=1) if scale else np.ones(x.shape[1]), rtol=1e-12)


@pytest.mark.parametrize("x, y, n, message", [
    (torch.zeros(4), torch.zeros(4, 2), 2, r"x and y must be \(N, F\) and \(N, K\) with the same N, got \(4,\) and \(4, 2\)"),
    (torch.zeros(4, 3), torch.zeros(4), 2, r"got \(4, 3\) and \(4,\)"),
    (torch.zeros(4, 3), torch.zeros(4, 2), 0, r"^n_components must be >= 1, got 0$"),
])
def test_pls_refuses_bad_shapes_and_counts_in_one_line(x, y, n, message):
    with pytest.raises(ValueError, match=message):
        pls2(x, y, n)


def test_chunked_standardisation_and_products_equal_one_chunk(monkeypatch):
    # issue 14: with fewer rows than a chunk (4096) every chunked sum ran once, so "+=" and "=" agreed
    import filterprune.criteria._pls as pls_mod
    from filterprune.criteria._pls import standardize_

    x, y = (torch.from_numpy(a) for a in random_problem(n=50))
    whole = pls2(x, y, 2)
    monkeypatch.setattr(pls_mod, "_CHUNK", 7)  # 8 chunks, the last one short
    chunked = pls2(x, y, 2)
    for name in ("x_weights", "x_scores", "y_loadings", "x_mean", "x_std"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-10, atol=1e-12)
    z = x.clone()
    mean, std = standardize_(z)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(std, torch.where(x.std(0) > 0, x.std(0), torch.ones(x.shape[1], dtype=x.dtype)))
    assert float(std[6]) == 1.0  # the constant column: std set to 1, not left 0


@pytest.mark.parametrize("rows", [1, 2])
def test_standardisation_of_one_and_two_rows(rows):
    from filterprune.criteria._pls import standardize_

    x = torch.tensor([[1.0, 4.0], [3.0, 4.0]], dtype=torch.float64)[:rows]
    mean, std = standardize_(x.clone())
    assert mean.tolist() == x.mean(0).tolist()
    # ddof=1 over max(n - 1, 1): one row has no spread (std 1); two rows 1 and 3: sqrt(2)
    assert std.tolist() == pytest.approx([1.0, 1.0] if rows == 1 else [2.0 ** 0.5, 1.0], rel=1e-15)


def test_pls_defaults_to_two_components():
    x, y = (torch.from_numpy(a) for a in random_problem())
    assert pls2(x, y).x_weights.shape[1] == 2


def test_collect_pooled_refuses_no_image_and_keeps_what_len_promised(caplog):
    model, _, _ = two_conv()
    with pytest.raises(Exception, match=r"^pls-vip: the data yielded no image$"):
        collect_pooled(model, [], [Block("conv1", (0, 1))])

    class Short(list):  # promises 2 batches (of the first one's 4 images: 8 rows), yields 4 + 6 images
        def __len__(self):
            return 2

    data = Short([(torch.randn(b, 3, 8, 8), torch.arange(b)) for b in (4, 6)])
    with caplog.at_level("WARNING"):
        xmat, y = collect_pooled(model, data, [Block("conv1", (0, 1))])
    assert xmat.shape == (8, 2) and xmat.dtype == torch.float32 and len(y) == 8
    assert "pls-vip: more images than len(data) promised; using the first 8" in caplog.text
    exact = Short([(torch.randn(4, 3, 8, 8), torch.arange(4)) for _ in range(2)])
    assert collect_pooled(model, exact, [Block("conv1", (0, 1))])[0].shape == (8, 2)


class _Sharded(list):
    shard = (1, 3)  # a loader built with shard=: it already yields this process's share


@pytest.mark.parametrize("distributed, data_cls, shard, interleave", [
    ("auto", list, (1, 3), True), (True, list, (1, 3), True), (False, list, (0, 1), True),
    ("auto", _Sharded, (1, 3), False), (False, _Sharded, (0, 1), False),
])
def test_pls_vip_reads_its_share_of_the_data(monkeypatch, distributed, data_cls, shard, interleave):
    # issue 14: how PLS+VIP hands its options and the process's shard to the feature reader (the
    # distributed paths ran only under torchrun, in subprocesses)
    import filterprune.criteria._features as features_mod
    import filterprune.criteria.pls_vip as pls_vip_mod
    import filterprune.distributed as dist_mod

    model, x, groups = two_conv()
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return features_mod.iter_pooled(*args, **{**kwargs, "shard": (0, 1), "interleave": True})

    monkeypatch.setattr(pls_vip_mod, "iter_pooled", spy)
    monkeypatch.setattr(dist_mod, "current_shard", lambda: (1, 3))
    monkeypatch.setattr(pls_vip_mod.CrossProducts, "all_reduce", lambda self: self)
    data = data_cls(labelled_batches(n=6))
    crit = create_criterion("pls-vip", samples=20, pooling="avg", distributed=distributed)
    crit.score(ScoringContext(model, x, groups, data=data))
    (kw,) = calls
    assert kw["shard"] == shard and kw["interleave"] is interleave
    assert kw["samples"] == 20 and kw["pooling"] == "avg" and kw["num_classes"] == 10
    assert kw["device"] == torch.device("cpu")


# ---- issue 14, session 15: survivors of PLSVIP.compute / columns and of _pls.vip ---------------------


class _SharedInTwo(list):
    shard = (1, 2)  # a loader built with shard= for 2 processes


def test_pls_vip_reads_a_loader_sharded_over_two_processes_as_it_is(monkeypatch):
    import filterprune.criteria._features as features_mod
    import filterprune.criteria.pls_vip as pls_vip_mod
    import filterprune.distributed as dist_mod

    model, x, groups = two_conv()
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return features_mod.iter_pooled(*args, **{**kwargs, "shard": (0, 1)})

    monkeypatch.setattr(pls_vip_mod, "iter_pooled", spy)
    monkeypatch.setattr(dist_mod, "current_shard", lambda: (1, 2))
    monkeypatch.setattr(pls_vip_mod.CrossProducts, "all_reduce", lambda self: self)
    create_criterion("pls-vip").score(ScoringContext(model, x, groups, data=_SharedInTwo(labelled_batches())))
    (kw,) = calls
    assert kw["shard"] == (1, 2) and kw["interleave"] is False


@pytest.mark.parametrize("distributed, world, reduced", [(True, 2, 1), ("auto", 2, 1), (False, 3, 0), (True, 1, 0)])
def test_pls_vip_sums_its_statistics_over_processes_only_when_distributed(monkeypatch, distributed, world, reduced):
    import filterprune.criteria.pls_vip as pls_vip_mod
    import filterprune.distributed as dist_mod

    model, x, groups = two_conv()
    calls = []

    def all_reduce(self):
        calls.append(self.n)
        return self

    monkeypatch.setattr(dist_mod, "current_shard", lambda: (0, world))
    monkeypatch.setattr(pls_vip_mod.CrossProducts, "all_reduce", all_reduce)
    create_criterion("pls-vip", distributed=distributed).score(ScoringContext(model, x, groups, data=labelled_batches()))
    assert len(calls) == reduced


class _TwoOutputs(torch.nn.Module):
    """The 2-conv net returning ``(logits, features)``: no ``(B, K)`` output to count the classes from."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x


def test_pls_vip_of_a_model_without_a_class_output_counts_the_classes_from_the_labels():
    net, x, groups = two_conv()
    model = _TwoOutputs(net)
    groups = [ChannelGroup(g.id, g.size, tuple(type(m)(f"net.{m.module}", m.kind, m.module_type, m.idxs)
                                                for m in g.members), g.prunable) for g in groups]
    data = [(b, y + 20 * (i == 3)) for i, (b, y) in enumerate(labelled_batches())]  # the last batch: labels 20..24
    scores = create_criterion("pls-vip").score(ScoringContext(model, x, groups, data=data))
    feats, _ = hand_features(net, [(b, y % 10) for b, y in data])  # the features alone
    labels = torch.cat([y for _, y in data])
    ref = sklearn_vip(feats, F.one_hot(labels).double().numpy(), tol=1e-15, max_iter=10_000)
    torch.testing.assert_close(scores["conv1"], torch.from_numpy(ref[:4]).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores["conv2"], torch.from_numpy(ref[4:]).float(), rtol=1e-4, atol=1e-5)


def test_pls_vip_labels_beyond_the_model_outputs_are_classes_of_their_own():
    model, x, groups = two_conv()  # 10 outputs
    data = [(b, y + 8) for b, y in labelled_batches()]  # labels 8..12
    scores = create_criterion("pls-vip").score(ScoringContext(model, x, groups, data=data))
    feats, _ = hand_features(model, [(b, y % 10) for b, y in data])  # the features alone
    labels = torch.cat([y for _, y in data])
    ref = sklearn_vip(feats, F.one_hot(labels).double().numpy(), tol=1e-15, max_iter=10_000)
    torch.testing.assert_close(scores["conv1"], torch.from_numpy(ref[:4]).float(), rtol=1e-4, atol=1e-5)


def test_pls_vip_without_images_refuses_and_one_image_explains_nothing():
    model, x, groups = two_conv()
    crit = create_criterion("pls-vip")
    with pytest.raises(ScoringError, match=r"^pls-vip: the data yielded no image$"):
        crit.score(ScoringContext(model, x, groups, data=[]))
    one = [(labelled_batches()[0][0][:1], torch.tensor([3]))]
    scores = crit.score(ScoringContext(model, x, groups, data=one))
    # one row: nothing varies, no component; every VIP is 1, and so every channel's mean
    assert {gid: s.tolist() for gid, s in scores.items()} == {"conv1": [1.0] * 4, "conv2": [1.0] * 6}


@pytest.mark.parametrize("h", [1, 3])
def test_pls_vip_fits_the_number_of_components_asked(h):
    model, x, groups = two_conv()
    data = labelled_batches()
    scores = create_criterion("pls-vip", n_components=h).score(ScoringContext(model, x, groups, data=data))
    feats, onehot = hand_features(model, data)
    ref = torch.from_numpy(sklearn_vip(feats, onehot, h, tol=1e-15, max_iter=10_000)).float()
    torch.testing.assert_close(torch.cat([scores["conv1"], scores["conv2"]]), ref, rtol=1e-4, atol=1e-5)
    two = create_criterion("pls-vip").score(ScoringContext(model, x, groups, data=data))
    assert not torch.allclose(two["conv1"], scores["conv1"], atol=1e-3)  # h matters on this problem


def test_columns_read_conv_outputs_before_bn_without_relu_and_bn_outputs_after_it_with_relu():
    from filterprune.criteria.pls_vip import PLSVIP

    model, _, groups = two_conv()
    blocks, owner = PLSVIP().columns(model, groups[:2])
    assert blocks == [Block("conv1", (0, 1, 2, 3), False), Block("conv2", (0, 1, 2, 3, 4, 5), False)]
    assert owner.tolist() == list(range(10))
    blocks, _ = PLSVIP(position="post_act").columns(model, groups[:2])
    assert blocks == [Block("bn1", (0, 1, 2, 3), True), Block("bn2", (0, 1, 2, 3, 4, 5), True)]


def test_columns_number_the_channels_of_three_groups_one_after_another():
    from filterprune.criteria.pls_vip import PLSVIP

    model, _, groups = two_conv()  # sizes 4, 6, 10
    _, owner = PLSVIP().columns(model, groups)
    assert owner.tolist() == list(range(20))


def test_columns_refuse_a_group_that_no_layer_outputs():
    from filterprune.criteria.pls_vip import PLSVIP

    model, _, _ = two_conv()
    only_in = ChannelGroup("conv9", 2, (member("conv2", "in", "Conv2d", 2),))
    with pytest.raises(ScoringError, match=r"^pls-vip: group conv9 has no layer whose output carries its channels$"):
        PLSVIP().columns(model, [only_in])


def test_vip_divides_each_weight_column_by_its_norm():
    # hand-built fit: w_1 = (0.3, 0.4, 0) has norm 0.5, w_2 = (0, 1.2, 1.6) norm 2; s_1 = 2 * 1, s_2 = 1 * 4
    from filterprune.criteria._pls import PLSResult

    w = torch.tensor([[0.3, 0.0], [0.4, 1.2], [0.0, 1.6]], dtype=torch.float64)
    q = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    fit = PLSResult(w, None, torch.zeros(3, 2, dtype=torch.float64), q, torch.zeros(3, dtype=torch.float64),
                    torch.ones(3, dtype=torch.float64), score_ss=torch.tensor([2.0, 1.0], dtype=torch.float64))
    # VIP_j^2 = 3 * (2 * wn_j1^2 + 4 * wn_j2^2) / 6, wn_1 = (0.6, 0.8, 0), wn_2 = (0, 0.6, 0.8)
    expected = torch.tensor([3 * 2 * 0.36 / 6, 3 * (2 * 0.64 + 4 * 0.36) / 6, 3 * 4 * 0.64 / 6], dtype=torch.float64).sqrt()
    torch.testing.assert_close(vip(fit), expected, rtol=1e-12, atol=0)


def test_vip_of_a_fit_that_explains_nothing_is_float64_ones():
    x = torch.ones(10, 5, dtype=torch.float64)
    y = F.one_hot(torch.arange(10) % 2).double()
    v = vip(pls2(x, y))
    assert v.dtype == torch.float64 and v.tolist() == [1.0] * 5
