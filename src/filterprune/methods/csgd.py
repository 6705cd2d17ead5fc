"""C-SGD, Centripetal SGD: train the filters of each cluster to become identical, then keep one.

Provenance: Ding, Ding, Guo, Han, "Centripetal SGD for Pruning Very Deep Convolutional Networks with
Complicated Structure", CVPR 2019, arXiv 1904.03837; journal version "Manipulating Identical Filters
for Redundancy Optimization" arXiv 2107.14444. Reference code DingXiaoH/Centripetal-SGD @ c561153
(Apache-2.0: ``csgd/ddp_csgd_train.py``, ``csgd/csgd_prune.py``), read for the algorithm only; no code
copied.

The update (:class:`CentripetalSGD`, a :class:`~filterprune.train.TrainHook`): after backward and
before the optimizer step, every clustered parameter's gradient is replaced by

    G~ = M G + Gamma W,     per channel i in cluster C:
    g~_i = (1/|C|) sum_{k in C} dL/dw_k  +  eta w_i  +  eps (w_i - mean_{k in C} w_k)

with the merge matrix ``M`` (1/|C| inside a cluster) and the decay matrix ``Gamma`` (eta + eps - eps/|C|
on the diagonal, -eps/|C| off it, inside a cluster): :func:`merge_matrix`, :func:`decay_matrix`. Kernels
use eta = the weight decay and eps = ``centripetal``; vectors (BN gamma/beta, biases) use eta = 0 and
``vector_ratio * centripetal`` (0.1 by default, as in the reference's current code). The optimizer's
weight decay is switched off for all of them (:meth:`CentripetalSGD.no_weight_decay`), so L2 lives only
in Gamma. Inside a cluster every member gets the same merged gradient, so the deviation from the
cluster mean shrinks by ``1 - lr (eta + eps)`` per plain-SGD step, whatever the loss, and by about
``1 - lr (eta + eps) / (1 - momentum)`` with momentum (but never faster than about ``sqrt(momentum)``
per step): the collapse is exponential, and ``eps`` must be chosen with the learning-rate schedule;
:func:`predicted_decay` gives the exact factor for a recipe.

Then :func:`~filterprune.methods.trim` keeps one channel per cluster and sums the removed channels'
input slices into the kept one in every consumer, which is exact once the clusters have collapsed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..errors import PruningError
from ..graph.groups import ChannelGroup
from ..train.hooks import TrainHook
from ..train.optim import lr_at
from ._clusters import Clusters, labels_of
from ._slots import ClusteredParam, Deviation, clustered_params, deviation, resolve

logger = logging.getLogger(__name__)


def merge_matrix(clusters: list[list[int]], size: int) -> Tensor:
    """``M`` (``(size, size)``): ``1/|C|`` where both channels are in cluster ``C``, else 0."""
    labels = labels_of(clusters, size)
    same = (labels[:, None] == labels[None, :]).double()
    return same / same.sum(1, keepdim=True)


def decay_matrix(clusters: list[list[int]], size: int, decay: float, strength: float) -> Tensor:
    """``Gamma``: ``decay * I + strength * (I - M)`` (so ``Gamma W = eta W + eps (W - M W)``)."""
    eye = torch.eye(size, dtype=torch.float64)
    return decay * eye + strength * (eye - merge_matrix(clusters, size))


def predicted_decay(cfg: TrainConfig, steps_per_epoch: int, strength: float, *, epochs: float | None = None) -> float:
    """The factor by which the deviation from the cluster means shrinks over a run of ``cfg``.

    Inside a cluster the deviation sees only the linear force ``strength * deviation`` (``strength =
    eta + eps`` for kernels): the merged loss gradient is the same for every member. So the optimizer's
    recursion on one scalar (SGD with ``cfg``'s momentum/Nesterov, a fresh momentum buffer and ``cfg``'s
    learning-rate schedule) gives the factor exactly. For plain SGD it is ``prod_t (1 - lr_t strength)``;
    with momentum mu it is close to ``prod_t (1 - lr_t strength / (1 - mu))`` while
    ``lr strength`` is small, and never faster than about ``sqrt(mu)`` per step.

    >>> cfg = TrainConfig(epochs=1, lr=0.1, momentum=0.0, schedule="constant")
    >>> round(predicted_decay(cfg, 10, 1.0), 6) == round(0.9 ** 10, 6)
    True
    """
    total = round((cfg.epochs if epochs is None else epochs) * steps_per_epoch)
    delta, buf = 1.0, 0.0
    for t in range(total):
        grad = strength * delta
        buf = cfg.momentum * buf + grad
        step = grad + cfg.momentum * buf if cfg.nesterov and cfg.momentum > 0 else buf
        delta -= lr_at(cfg, t, steps_per_epoch) * step
    return abs(delta)


class CentripetalSGD(TrainHook):
    """The C-SGD gradient transform as a training hook (see the module docstring).

    Args:
        model: the model ``groups`` were traced from (it may later be passed to ``fit`` wrapped).
        groups: its channel groups.
        clusters: per group, clusters of channels (see :func:`~filterprune.methods.cluster_groups`).
        centripetal: eps, the centripetal strength on kernels.
        weight_decay: eta, the L2 on clustered kernels (the optimizer's decay is turned off for them).
        vector_ratio: vectors (BN gamma/beta, biases) get ``vector_ratio * centripetal``.
        vector_decay: L2 on clustered vectors.

    Raises:
        ValueError: a negative strength or decay.
        PruningError: see :func:`~filterprune.methods._slots.clustered_params`.

    >>> import torch
    >>> from torch import nn
    >>> from filterprune.graph.trace import trace_groups
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> groups = trace_groups(net, torch.randn(1, 3, 8, 8))
    >>> hook = CentripetalSGD(net, groups, {"0": [[0, 1], [2], [3]]}, centripetal=0.1)
    >>> sorted(hook.no_weight_decay(net))
    ['0.bias', '0.weight']
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        clusters: Clusters,
        *,
        centripetal: float = 3e-3,
        weight_decay: float = 0.0,
        vector_ratio: float = 0.1,
        vector_decay: float = 0.0,
    ) -> None:
        if min(centripetal, weight_decay, vector_ratio, vector_decay) < 0:
            raise ValueError("centripetal, weight_decay, vector_ratio and vector_decay must be >= 0")
        self.clusters = {gid: [list(c) for c in cl] for gid, cl in clusters.items()}
        self.params: list[ClusteredParam] = clustered_params(model, groups, self.clusters)
        self.centripetal, self.weight_decay = centripetal, weight_decay
        self.vector_ratio, self.vector_decay = vector_ratio, vector_decay
        self.steps = 0
        self._resolved: tuple[int, list[tuple[str, nn.Module]]] | None = None

    def coefficients(self, p: ClusteredParam) -> tuple[float, float]:
        """(decay eta, strength eps) for one clustered parameter."""
        if p.kernel:
            return self.weight_decay, self.centripetal
        return self.vector_decay, self.vector_ratio * self.centripetal

    def _modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if self._resolved is None or self._resolved[0] != id(model):
            self._resolved = (id(model), resolve(model, self.params))
        return self._resolved[1]

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        """Qualified names of the clustered parameters: the optimizer must not decay them (the hook applies
        its own decay matrix, Ding et al. 2019).
        """
        return {f"{full}.{p.attr}" for p, (full, _) in zip(self.params, self._modules(model), strict=True)}

    def on_fit_start(self, model: nn.Module, optimizer: Any) -> None:
        """Resolve the clustered parameters in ``model`` (wrappers allowed) before the first step.

        Raises:
            PruningError: the optimizer also applies weight decay to a clustered parameter.
        """
        self._resolved = None
        decayed = {id(q) for g in getattr(optimizer, "param_groups", ()) if g.get("weight_decay", 0) > 0
                   for q in g["params"]}
        for p, (full, module) in zip(self.params, self._modules(model), strict=True):
            if id(getattr(module, p.attr)) in decayed:
                raise PruningError(f"C-SGD: the optimizer also decays {full}.{p.attr}; build it without decay "
                                   "on no_weight_decay() (fit does)")
        logger.info("C-SGD: %d clustered parameters in %d groups, eps=%g, eta=%g", len(self.params),
                    len(self.clusters), self.centripetal, self.weight_decay)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        """Replace each clustered gradient by ``M G + Gamma W``; raise if any is missing."""
        done = 0
        for p, (full, module) in zip(self.params, self._modules(model), strict=True):
            param = getattr(module, p.attr)
            if param.grad is None:
                raise PruningError(f"C-SGD: {full}.{p.attr} has no gradient at step {step}; the centripetal "
                                   "update cannot be applied (is it used in the forward pass?)")
            decay, strength = self.coefficients(p)
            g, w = p.rows(param.grad), p.rows(param.detach())  # (n, K)
            labels = p.labels.to(g.device)
            new = p.cluster_mean(g)[labels] + decay * w + strength * (w - p.cluster_mean(w)[labels])
            p.write_rows(param.grad, new)
            done += 1
        if done != len(self.params):  # pragma: no cover - the loop above raises first
            raise PruningError(f"C-SGD: transformed {done} of {len(self.params)} parameters")
        self.steps += 1

    def deviation(self, model: nn.Module) -> Deviation:
        """The current intra-cluster deviation (see :class:`~filterprune.methods._slots.Deviation`)."""
        return deviation(model, self.params)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Log and return the intra-cluster deviation after an epoch (kernel, vector, max relative)."""
        dev = self.deviation(model)
        logger.info("C-SGD epoch %d: deviation %.3g (kernels), %.3g (vectors), max relative %.3g",
                    epoch + 1, dev.kernel, dev.vector, dev.max_relative)
        return dev.to_dict()
