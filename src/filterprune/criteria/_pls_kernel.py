"""PLS2 from streamed sufficient statistics: means, XᵀX and XᵀY, never the N x F data matrix.

Provenance: the kernel form of PLS follows B. S. Dayal and J. F. MacGregor, "Improved PLS
algorithms", Journal of Chemometrics 11(1), 73-85, 1997 (kernel algorithm #2: the whole fit is
written on the cross products XᵀX and XᵀY, only XᵀY is deflated, and the x scores are reached
through the rotations r_a, t_a = X r_a), with S. de Jong's SIMPLS rotations ("SIMPLS: an
alternative approach to partial least squares regression", Chemometrics and Intelligent Laboratory
Systems 18, 251-263, 1993). The streaming co-moment update is Chan, Golub and LeVeque's pairwise
formula ("Updating formulae and a pairwise algorithm for computing sample variances", Stanford
CS-TR-79-773, 1979), used in float64. No code adapted.

Why our own: scikit-learn's ``PLSRegression`` and :func:`._pls.pls2` both need the data matrix;
no kept library fits PLS from cross products. The fit is the same NIPALS model (Wegelin 2000, 4.1,
regression deflation) as :func:`._pls.pls2`, only reached through the covariances:

    standardised  Cxx = D⁻¹ Sxx D⁻¹ (F x F),  Cxy = D⁻¹ Sxy E⁻¹ (F x K)
    (S: centred co-moments Σ (x - x̄)(y - ȳ)ᵀ; D, E: column standard deviations, ddof = 1, 1 when
    constant, as sklearn's ``_center_scale_xy``)

    for a = 1..h, with G_1 = Cxy:
        w_a  = dominant left singular vector of G_a        (X_aᵀ Y_a = G_a; sign: largest |w| > 0)
        r_a  = w_a - R_{a-1} (P_{a-1}ᵀ w_a)                 (t_a = X r_a = X_a w_a)
        tt_a = r_aᵀ Cxx r_a                                 (t_aᵀ t_a)
        p_a  = Cxx r_a / tt_a,   q_a = Cxyᵀ r_a / tt_a      (x and y loadings)
        G_{a+1} = G_a - tt_a p_a q_aᵀ                       (X_{a+1}ᵀ Y_{a+1}, Dayal-MacGregor eq. for XᵀY)

The VIP then needs only w, tt and q (:func:`._pls.vip`). Cxx is never formed: D⁻¹ is applied to the
vectors. Memory is F² + F K + K² float64 numbers whatever N (ResNet-56, F = 2032: 33 MB), and
processes just add their co-moments (:meth:`CrossProducts.all_reduce`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ._pls import PLSResult

logger = logging.getLogger(__name__)

_TINY = 1e-12  # relative size below which XᵀY is explained / a score vector is zero


class CrossProducts:
    """Running count, means and centred co-moments of ``(x, y)`` rows, all float64 on the CPU.

    Attributes:
        n: rows seen.
        mean_x: ``(F,)``; mean_y: ``(K,)``.
        sxx: ``(F, F)`` Σ (x - x̄)(x - x̄)ᵀ;  sxy: ``(F, K)``;  syy: ``(K, K)``.

    ``K`` grows when a batch has more target columns than seen so far (a class that appears late):
    the earlier rows had 0 there, so the new columns start at mean 0 and co-moment 0, exactly.

    >>> s = CrossProducts(3)
    >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[torch.arange(10) % 2]
    >>> s.update(x[:4], y[:4]); s.update(x[4:], y[4:])
    >>> torch.allclose(s.sxx, (x - x.mean(0)).T @ (x - x.mean(0)))
    True
    """

    def __init__(self, num_features: int, num_targets: int = 0) -> None:
        f, k = num_features, num_targets
        self.n = 0
        self.mean_x = torch.zeros(f, dtype=torch.float64)
        self.mean_y = torch.zeros(k, dtype=torch.float64)
        self.sxx = torch.zeros(f, f, dtype=torch.float64)
        self.sxy = torch.zeros(f, k, dtype=torch.float64)
        self.syy = torch.zeros(k, k, dtype=torch.float64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the statistics."""
        return sum(t.numel() * t.element_size() for t in (self.mean_x, self.mean_y, self.sxx, self.sxy, self.syy))

    def _grow_targets(self, k: int) -> None:
        extra = k - self.mean_y.shape[0]
        if extra > 0:
            f = self.mean_x.shape[0]
            self.mean_y = torch.cat([self.mean_y, self.mean_y.new_zeros(extra)])
            self.sxy = torch.cat([self.sxy, self.sxy.new_zeros(f, extra)], 1)
            self.syy = torch.nn.functional.pad(self.syy, (0, extra, 0, extra))

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the rows of one batch: ``x`` ``(B, F)``, ``y`` ``(B, K')`` (any float dtype, any device).

        Chan et al.'s merge: with batch mean m_b and δ = m_b - x̄,
        S ← S + Σ_b (x - m_b)(x - m_b)ᵀ + (n n_b / (n + n_b)) δ δᵀ; done in place (no F x F temporary).
        """
        b = x.shape[0]
        if b == 0:
            return
        self._grow_targets(y.shape[1])
        x = x.detach().to("cpu", torch.float64)
        y = y.detach().to("cpu", torch.float64)
        if y.shape[1] < self.mean_y.shape[0]:
            y = torch.nn.functional.pad(y, (0, self.mean_y.shape[0] - y.shape[1]))
        mx, my = x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my  # (B, F), (B, K)
        dx, dy = mx - self.mean_x, my - self.mean_y
        coef = self.n * b / (self.n + b)
        self.sxx.addmm_(xc.T, xc).addr_(dx, dx, alpha=coef)
        self.sxy.addmm_(xc.T, yc).addr_(dx, dy, alpha=coef)
        self.syy.addmm_(yc.T, yc).addr_(dy, dy, alpha=coef)
        self.mean_x += dx * (b / (self.n + b))
        self.mean_y += dy * (b / (self.n + b))
        self.n += b

    def all_reduce(self) -> CrossProducts:
        """Combine the statistics of every ``torch.distributed`` process in place (no-op for one process).

        Each process re-centres its co-moments on the global mean, S_r + n_r (m_r - m)(m_r - m)ᵀ,
        and the results are summed: the exact statistics of all rows together.
        """
        from ..distributed import all_reduce_max, all_reduce_sum, current_shard

        if current_shard()[1] == 1:
            return self
        self._grow_targets(int(all_reduce_max(torch.tensor([self.mean_y.shape[0]]))[0]))
        n = float(all_reduce_sum(torch.tensor([float(self.n)], dtype=torch.float64))[0])
        if n == 0:
            return self
        mean_x = all_reduce_sum(self.mean_x * self.n) / n
        mean_y = all_reduce_sum(self.mean_y * self.n) / n
        dx, dy = self.mean_x - mean_x, self.mean_y - mean_y
        self.sxx = all_reduce_sum(self.sxx.addr_(dx, dx, alpha=self.n))
        self.sxy = all_reduce_sum(self.sxy.addr_(dx, dy, alpha=self.n))
        self.syy = all_reduce_sum(self.syy.addr_(dy, dy, alpha=self.n))
        self.mean_x, self.mean_y, self.n = mean_x, mean_y, int(round(n))
        return self


def _std(s: Tensor, n: int, scale: bool) -> Tensor:
    """Column standard deviations (ddof = 1) from a co-moment matrix; 1 for constant columns."""
    if not scale:
        return torch.ones(s.shape[0], dtype=torch.float64)
    std = (s.diagonal().clamp_min(0) / max(n - 1, 1)).sqrt()
    std[std == 0] = 1.0
    return std


def pls2_kernel(stats: CrossProducts, n_components: int = 2, *, scale: bool = True) -> PLSResult:
    """Fit PLS2 of y on x from their streamed statistics (module docstring for the algorithm).

    Args:
        stats: the accumulated :class:`CrossProducts`.
        n_components: latent components h.
        scale: standardise the columns (sklearn ``scale=True``).

    Returns:
        A :class:`._pls.PLSResult` with ``x_scores=None`` and ``score_ss`` = t_aᵀ t_a; components
        after XᵀY is explained (relative size < 1e-12) or with a zero score vector are zero.

    Raises:
        ValueError: ``n_components`` is not positive or no row was accumulated.
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if stats.n == 0:
        raise ValueError("pls2_kernel: no rows were accumulated")
    f, k = stats.sxy.shape
    dx, dy = _std(stats.sxx, stats.n, scale), _std(stats.syy, stats.n, scale)
    cxy = stats.sxy / dx[:, None] / dy[None, :]  # standardised Xᵀ Y   (F, K)

    def cxx(v: Tensor) -> Tensor:  # standardised Xᵀ X v = D⁻¹ Sxx D⁻¹ v   (F,)
        return (stats.sxx @ (v / dx)) / dx

    h = n_components
    w_all, r_all, p_all = (torch.zeros(f, h, dtype=torch.float64) for _ in range(3))
    q_all, tt_all = torch.zeros(k, h, dtype=torch.float64), torch.zeros(h, dtype=torch.float64)
    cross = cxy.clone()  # G_a = X_aᵀ Y_a
    size0 = float(cxy.abs().max()) if cxy.numel() else 0.0
    trace = float(stats.sxx.diagonal().div(dx * dx).sum())
    for a in range(h):
        if size0 == 0.0 or float(cross.abs().max()) <= _TINY * size0:
            logger.debug("pls2_kernel: Xᵀ Y explained after %d components", a)
            break
        u, _, _ = torch.linalg.svd(cross, full_matrices=False)
        w = u[:, 0]  # (F,)
        w = w * torch.sign(w[torch.argmax(w.abs())])  # sklearn's _svd_flip_1d
        r = w - r_all[:, :a] @ (p_all[:, :a].T @ w)  # t_a = X r_a
        xr = cxx(r)
        tt = float(r @ xr)  # t_aᵀ t_a
        if tt <= _TINY * trace:
            logger.debug("pls2_kernel: zero x scores at component %d", a + 1)
            break
        p, q = xr / tt, (cxy.T @ r) / tt  # x loadings, y loadings
        cross -= tt * torch.outer(p, q)  # G_{a+1} = G_a - tt p qᵀ
        w_all[:, a], r_all[:, a], p_all[:, a], q_all[:, a], tt_all[a] = w, r, p, q, tt
    return PLSResult(w_all, None, p_all, q_all, stats.mean_x.clone(), dx, score_ss=tt_all)
