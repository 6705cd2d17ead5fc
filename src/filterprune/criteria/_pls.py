"""PLS2 regression by NIPALS (sklearn's ``PLSRegression`` numbers) and the VIP score of each feature.

Provenance: the VIP formula is the one of Jordao et al., "Discriminative Layer Pruning for
Convolutional Neural Networks" / "Pruning Deep Neural Networks using Partial Least Squares",
arXiv:1810.07610 (reference code ``arturjordao/PruningNeuralNetworks``, ``VIPPruning.vip``, itself
"adapted from scikit-learn issue #7050"). PLS2 follows Wegelin (2000), section 4.1, the algorithm
of scikit-learn's ``PLSRegression(scale=True)``. No code adapted.

What is computed (``X`` is N x F, ``Y`` is N x K, both centred and, with ``scale``, divided by their
column standard deviation with ddof=1; a constant column keeps std 1, as in sklearn), for components
a = 1..h with X_1 = X, Y_1 = Y:

    w_a  = the dominant left singular vector of X_aᵀ Y_a  (unit norm; sklearn reaches it by power
           iteration, we take it from an SVD of the F x K matrix)
    t_a  = X_a w_a                      x scores
    p_a  = X_aᵀ t_a / (t_aᵀ t_a)        x loadings;  X_{a+1} = X_a - t_a p_aᵀ
    q_a  = Y_aᵀ t_a / (t_aᵀ t_a)        y loadings;  Y_{a+1} = Y_a - t_a q_aᵀ  (regression deflation)

    VIP_j = sqrt( F · Σ_a s_a (w_ja / ||w_a||)² / Σ_a s_a ),   s_a = (t_aᵀ t_a)(q_aᵀ q_a)

Since every ||w_a|| = 1, Σ_j VIP_j² = F.

Deflation is implicit: ``X`` is never rewritten after standardisation. The scores are orthogonal and
X_a is orthogonal to the earlier scores, so X_aᵀ Y_a = Xᵀ Y - P (Tᵀ Y) and X_a w = X w - T (Pᵀ w);
each component is then two passes over ``X`` (X w, Xᵀ t) and the whole fit 1 + 2h passes. Products
over the N rows are accumulated in float64 over row chunks, so a float32 ``X`` of 50k x 2k rows costs
no copy and loses no precision to long float32 sums.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_CHUNK = 4096  # rows per chunk for the float64-accumulated products


@dataclass(frozen=True)
class PLSResult:
    """A fitted PLS2 model, in sklearn's names (all float64, on the CPU).

    Attributes:
        x_weights: ``(F, h)``, unit-norm columns (sklearn ``x_weights_``).
        x_scores: ``(N, h)`` (sklearn ``x_scores_``); ``None`` from the kernel fit
            (:func:`._pls_kernel.pls2_kernel`), which never sees the rows.
        x_loadings: ``(F, h)`` (sklearn ``x_loadings_``).
        y_loadings: ``(K, h)`` (sklearn ``y_loadings_``).
        x_mean: ``(F,)`` column means of the input.
        x_std: ``(F,)`` column standard deviations used to scale (1 where the column is constant).
        score_ss: ``(h,)`` t_aᵀ t_a of each component; ``None``: computed from ``x_scores``.
    """

    x_weights: Tensor
    x_scores: Tensor | None
    x_loadings: Tensor
    y_loadings: Tensor
    x_mean: Tensor
    x_std: Tensor
    score_ss: Tensor | None = None


def standardize_(x: Tensor, scale: bool = True) -> tuple[Tensor, Tensor]:
    """Centre (and scale) the columns of ``x`` in place; return the float64 ``(mean, std)``.

    Two passes over row chunks (sums in ``x``'s dtype within a chunk, float64 across chunks): the
    mean, then centring and the squared deviations. std has ddof=1 and is set to 1 for constant
    columns (sklearn's ``_center_scale_xy``).
    """
    n = x.shape[0]
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for rows in x.split(_CHUNK):
        total += rows.sum(0).double()  # in x's dtype within a chunk, float64 across chunks
    mean = total / max(n, 1)
    sq = torch.zeros_like(total)
    for rows in x.split(_CHUNK):
        rows.sub_(mean.to(x.dtype))  # centre in place (rows is a view of x)
        sq += rows.square().sum(0).double()
    std = (sq / max(n - 1, 1)).sqrt() if scale else torch.ones_like(mean)
    std[std == 0] = 1.0
    if scale:
        x.div_(std.to(x.dtype))
    return mean, std


def _xt_dot(x: Tensor, v: Tensor) -> Tensor:
    """``xᵀ v`` for ``x`` (N, F) and ``v`` (N, K), accumulated in float64 over row chunks -> (F, K)."""
    out = torch.zeros(x.shape[1], v.shape[1], dtype=torch.float64)
    for rows, vs in zip(x.split(_CHUNK), v.split(_CHUNK), strict=True):
        out += (vs.to(x.dtype).T @ rows).T.double()  # (K, chunk) @ (chunk, F): rows read in order
    return out


def pls2(x: Tensor, y: Tensor, n_components: int = 2, *, scale: bool = True, overwrite_x: bool = False) -> PLSResult:
    """Fit a PLS2 regression of ``y`` on ``x`` (NIPALS, regression deflation).

    Args:
        x: ``(N, F)`` predictors, float32 or float64, on the CPU.
        y: ``(N, K)`` responses (one-hot targets for classification).
        n_components: number of latent components h.
        scale: divide centred columns by their standard deviation (sklearn ``scale=True``).
        overwrite_x: standardise ``x`` in place instead of on a copy (saves N x F memory).

    Returns:
        The fitted :class:`PLSResult`. Components after ``x`` or ``y`` has been explained exactly
        (zero scores) are zero and contribute nothing to VIP.

    Raises:
        ValueError: shapes disagree or ``n_components`` is not positive.

    >>> x = torch.randn(50, 6, dtype=torch.float64)
    >>> y = torch.nn.functional.one_hot(torch.arange(50) % 3).double()
    >>> round(float(vip(pls2(x, y)).square().sum()), 6)
    6.0
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be (N, F) and (N, K) with the same N, got {tuple(x.shape)} and {tuple(y.shape)}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if not overwrite_x:
        x = x.clone()
    x_mean, x_std = standardize_(x, scale)
    y = y.double().clone()
    standardize_(y, scale)
    n, f = x.shape
    h = n_components
    w_all = torch.zeros(f, h, dtype=torch.float64)
    t_all = torch.zeros(n, h, dtype=torch.float64)
    p_all = torch.zeros(f, h, dtype=torch.float64)
    q_all = torch.zeros(y.shape[1], h, dtype=torch.float64)
    xty = _xt_dot(x, y)  # (F, K), computed once
    for a in range(h):
        t_prev, p_prev, q_prev = t_all[:, :a], p_all[:, :a], q_all[:, :a]
        cross = xty - p_prev @ (t_prev.T @ y)  # X_aᵀ Y_a = Xᵀ Y - P (Tᵀ Y)   (F, K)
        if not torch.any(cross != 0):
            logger.debug("pls2: Xᵀ Y explained after %d components", a)
            break
        u, _, vh = torch.linalg.svd(cross, full_matrices=False)
        w = u[:, 0]  # dominant left singular vector, unit norm   (F,)
        top = torch.argmax(w.abs())
        w = w * torch.sign(w[top])  # sklearn's _svd_flip_1d: largest |w_j| positive
        t = (x @ w.to(x.dtype)).double() - t_prev @ (p_prev.T @ w)  # t_a = X_a w_a   (N,)
        tt = float(t @ t)
        if tt == 0.0:
            logger.debug("pls2: zero x scores at component %d", a + 1)
            break
        p = (_xt_dot(x, t[:, None])[:, 0] - p_prev @ (t_prev.T @ t)) / tt  # p_a = X_aᵀ t_a / tᵀt
        q = (y.T @ t - q_prev @ (t_prev.T @ t)) / tt  # q_a = Y_aᵀ t_a / tᵀt
        w_all[:, a], t_all[:, a], p_all[:, a], q_all[:, a] = w, t, p, q
    return PLSResult(w_all, t_all, p_all, q_all, x_mean, x_std)


def vip(fit: PLSResult) -> Tensor:
    """Variable importance in projection of every column of ``x``: ``(F,)`` float64.

    VIP_j = sqrt(F · Σ_a s_a (w_ja / ||w_a||)² / Σ_a s_a) with s_a = (t_aᵀ t_a)(q_aᵀ q_a). If no
    component explains anything (Σ s_a = 0), every VIP is 1: the features are indistinguishable.
    """
    w, q = fit.x_weights, fit.y_loadings
    f = w.shape[0]
    tt = fit.score_ss if fit.score_ss is not None else fit.x_scores.square().sum(0)  # t_aᵀt_a   (h,)
    s = tt * (q * q).sum(0)  # s_a = (t_aᵀt_a)(q_aᵀq_a)   (h,)
    total = float(s.sum())
    if total == 0.0:
        return torch.ones(f, dtype=torch.float64)
    norms = w.norm(dim=0)
    wn = torch.where(norms > 0, w / norms.clamp_min(1e-300), torch.zeros_like(w))  # w_ja / ||w_a||
    return (f * (wn.square() @ s) / total).sqrt()
