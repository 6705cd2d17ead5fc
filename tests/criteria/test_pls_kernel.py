"""PLS2 from streamed cross products: equal to the data-matrix NIPALS and to scikit-learn, in any batching,
and over two gloo processes equal to one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from sklearn.cross_decomposition import PLSRegression
from test_pls_vip import labelled_batches, random_problem, sklearn_vip

from filterprune.criteria import ScoringContext, create_criterion
from filterprune.criteria._features import collect_pooled
from filterprune.criteria._pls import pls2, vip
from filterprune.criteria._pls_kernel import CrossProducts, pls2_kernel
from filterprune.criteria.pls_vip import PLSVIP
from filterprune.graph.trace import trace_groups
from models_zoo import build


def streamed(x: torch.Tensor, y: torch.Tensor, sizes=(7, 1, 30)) -> CrossProducts:
    """Statistics folded in batches of the given sizes, cycling, the last batch whatever is left."""
    stats, i, j = CrossProducts(x.shape[1]), 0, 0
    while i < len(x):
        b = sizes[j % len(sizes)]
        stats.update(x[i:i + b], y[i:i + b])
        i, j = i + b, j + 1
    return stats


def test_streamed_statistics_equal_the_centred_products_of_all_rows():
    x, y = (torch.from_numpy(a) for a in random_problem())
    s = streamed(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert s.n == len(x)
    torch.testing.assert_close(s.mean_x, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(s.sxx, xc.T @ xc, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(s.sxy, xc.T @ yc, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(s.syy, yc.T @ yc, rtol=1e-12, atol=1e-9)


def test_a_class_first_seen_late_grows_the_targets_exactly():
    x, y = (torch.from_numpy(a) for a in random_problem(k=4))
    order = torch.argsort(y.argmax(1), stable=True)  # class 3 appears only in the last batches
    x, y = x[order], y[order]
    s = CrossProducts(x.shape[1])
    for i in range(0, len(x), 10):
        labels = y[i:i + 10].argmax(1)
        s.update(x[i:i + 10], F.one_hot(labels, int(labels.max()) + 1))  # as wide as the batch needs
    full = streamed(x, y)
    for name in ("mean_y", "sxy", "syy"):
        torch.testing.assert_close(getattr(s, name), getattr(full, name), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_kernel_fit_equals_the_data_matrix_fit_and_sklearn(h):
    x, y = (torch.from_numpy(a) for a in random_problem(seed=h))
    fit, ref = pls2_kernel(streamed(x, y), h), pls2(x, y, h)
    torch.testing.assert_close(fit.x_weights, ref.x_weights, rtol=0, atol=1e-10)
    torch.testing.assert_close(fit.x_loadings, ref.x_loadings, rtol=0, atol=1e-10)
    torch.testing.assert_close(fit.y_loadings, ref.y_loadings, rtol=0, atol=1e-10)
    torch.testing.assert_close(fit.score_ss, ref.x_scores.square().sum(0), rtol=1e-10, atol=0)
    torch.testing.assert_close(vip(fit), vip(ref), rtol=0, atol=1e-10)
    sk = PLSRegression(n_components=h, scale=True, tol=1e-15, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(fit.x_weights.numpy(), sk.x_weights_, atol=1e-5)
    np.testing.assert_allclose(vip(fit).numpy(), sklearn_vip(x.numpy(), y.numpy(), h, tol=1e-15, max_iter=10_000),
                               rtol=1e-5, atol=1e-6)
    assert float(vip(fit)[6]) == 0.0  # the constant column


def test_kernel_fit_on_float32_rows_is_within_1e_6_of_the_float64_data_path():
    x, y = (torch.from_numpy(a) for a in random_problem(n=300, f=40))
    x32 = x.float()  # pooled features are float32
    got = vip(pls2_kernel(streamed(x32, y), 2))
    torch.testing.assert_close(got, vip(pls2(x32.double(), y, 2)), rtol=0, atol=1e-6)


def test_kernel_degenerate_and_bad_inputs():
    x = torch.ones(10, 5, dtype=torch.float64)
    y = F.one_hot(torch.arange(10) % 2).double()
    assert torch.equal(vip(pls2_kernel(streamed(x, y), 2)), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="no rows"):
        pls2_kernel(CrossProducts(3), 2)
    with pytest.raises(ValueError, match="n_components"):
        pls2_kernel(streamed(x, y), 0)


def _residual_ctx():
    model, x = build("residual")
    return model, x, trace_groups(model, x)


def test_criterion_equals_the_data_matrix_path_on_a_residual_net():
    model, x, groups = _residual_ctx()
    data = labelled_batches(n=6, size=10)
    crit = PLSVIP()
    got = crit.score(ScoringContext(model, x, groups, data=data))
    prunable = [g for g in groups if g.prunable]
    blocks, owner = crit.columns(model, prunable)
    feats, labels = collect_pooled(model, data, blocks, num_classes=10)
    ref = vip(pls2(feats.double(), F.one_hot(labels, 10).double(), 2)).float()
    per_channel = torch.zeros(sum(g.size for g in prunable)).scatter_reduce_(0, owner, ref, reduce="mean", include_self=False)
    want = dict(zip([g.id for g in prunable], per_channel.split([g.size for g in prunable]), strict=True))
    assert any(float(v.std()) > 0.1 for v in want.values())  # not vacuous
    for gid, v in want.items():
        torch.testing.assert_close(got[gid], v, rtol=0, atol=1e-6)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, x, groups = _residual_ctx()
        data = labelled_batches(n=5, size=10)  # 5 batches: rank 0 reads 3, rank 1 reads 2
        scores = create_criterion("pls-vip").score(ScoringContext(model, x, groups, data=data))
        xs, ys = (torch.from_numpy(a) for a in random_problem())
        part = streamed(xs[rank::world], ys[rank::world]).all_reduce()
        torch.save({"scores": scores, "sxx": part.sxx, "n": part.n}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~15 s on 2 shared cores
def test_two_processes_sum_their_statistics_into_the_single_process_scores(tmp_path):
    out = str(tmp_path / "scores")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    model, x, groups = _residual_ctx()
    single = create_criterion("pls-vip").score(ScoringContext(model, x, groups, data=labelled_batches(n=5, size=10)))
    xs, ys = (torch.from_numpy(a) for a in random_problem())
    whole = streamed(xs, ys)
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        assert got["n"] == whole.n
        torch.testing.assert_close(got["sxx"], whole.sxx, rtol=1e-12, atol=1e-9)
        for gid, v in single.items():
            torch.testing.assert_close(got["scores"][gid], v, rtol=0, atol=1e-6)
