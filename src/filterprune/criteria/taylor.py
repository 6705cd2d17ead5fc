"""``taylor``: first-order Taylor estimate of the loss change from removing a channel's parameters.

Provenance: P. Molchanov, A. Mallya, S. Tyree, I. Frosio, J. Kautz, "Importance Estimation for
Neural Network Pruning", CVPR 2019, arXiv:1906.10771, eq. (8): for a set S of parameters removed
together, I_S = (sum_{s in S} g_s w_s)^2, with g = dL/dw. Reference code: github.com/NVlabs/Taylor_pruning.
No code adapted. Torch-Pruning's ``GroupTaylorImportance`` (1.6.1) skips BatchNorm in its "# BN"
branch (it tests for GroupNorm); this implementation includes BN gamma and beta.

What is computed, for channel c of a group, on each of ``ctx.num_batches`` batches b:

    t_b[c] = sum over the group's "out" members m, over their parameters P (conv/Linear weight and
             bias, BatchNorm gamma and beta) of sum(P_m[c] * dL_b/dP_m[c])
             (+ with include_consumers: the same over the "in" members' input-channel slices)
    score[c] = mean over batches b of t_b[c]^2

That is eq. (8) per batch, averaged over batches (not the square of the gradient accumulated over
batches, which lets batches with opposite signs cancel). ``L_b`` is ``ctx.loss_fn(model(x), y)``, the
batch-mean loss.

Mode. By default the forward runs in eval mode (BatchNorm uses its running statistics), which scores
the network as it will be deployed. ``train_mode=True`` runs in train mode as the paper does during
fine-tuning: BatchNorm uses batch statistics, dropout is seeded by ``ctx.seed``, and the conv weights
feeding a BN then contribute ~0 (BN makes the loss invariant to their scale, so sum(w * g) = 0): the
score is carried by gamma and beta, which is the paper's "gate after BN" variant.

Purity. Gradients are taken with ``torch.autograd.grad`` on detached aliases of the parameters through
``torch.func.functional_call`` with cloned buffers: the model's ``.grad``, ``requires_grad``, running
statistics and parameters are never touched; train/eval flags are restored and the global RNG state
is forked.

Data-parallel processes (``torchrun``). When ``ctx.data`` is a loader that yields this process's share
of every global batch (``shard = (rank, world)`` with ``world > 1``, see
:class:`~filterprune.data.BatchLoader`), each process computes ``t_b`` from the gradient of its own
share's mean loss; since ``t_b`` is linear in the gradient, the global batch's ``t_b`` is the
share-size-weighted mean ``sum_r n_r t_b^(r) / sum_r n_r``, gathered with one ``all_reduce`` per batch
before squaring. Every process then holds the single-process scores (up to float summation order).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.func import functional_call

from ..distributed import all_reduce_sum
from ..graph.groups import ChannelGroup
from ..types import Scores
from ..utils.modes import modes_kept
from ._weights import group_slices
from .base import Criterion, ScoringContext, register_criterion

logger = logging.getLogger(__name__)


@register_criterion("taylor")
class Taylor(Criterion):
    """First-order group Taylor importance (Molchanov et al. 2019), averaged over batches.

    Args:
        include_consumers: also add the consuming layers' input-channel slices to each channel's sum.
        train_mode: run the forward in train mode (batch statistics, seeded dropout) instead of eval.
    """

    requires_data = True

    def __init__(self, include_consumers: bool = False, train_mode: bool = False) -> None:
        self.include_consumers = include_consumers
        self.train_mode = train_mode

    def compute(self, ctx: ScoringContext) -> Scores:
        """``(C,)`` per group: mean over ``ctx.num_batches`` batches of (sum_{s in S_c} w_s dL/dw_s)^2
        (Molchanov et al. 2019, eq. 8); see the module docstring.

        Raises:
            ScoringError: no data.
        """
        model = ctx.model
        groups = ctx.prunable_groups()
        kinds = ("out", "in") if self.include_consumers else ("out",)
        params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # BN updates in train mode land here
        sums: dict[str, Tensor] = {}
        n_batches = 0
        world = getattr(ctx.data, "shard", (0, 1))[1]  # > 1: each batch is this process's share
        sizes = [g.size for g in groups]
        device = ctx.resolved_device()
        rng_devices = [device] if device.type == "cuda" else []  # fork_rng restores these RNGs too
        with modes_kept(model):
            model.train(self.train_mode)
            with torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
                torch.manual_seed(ctx.seed)
                for x, y in ctx.batches():  # raises ScoringError if there is none
                    loss = ctx.loss_fn(functional_call(model, (params, buffers), (x,)), y)
                    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                    # w * dL/dw per parameter entry; a parameter the loss does not reach contributes 0
                    wg = {
                        n: (p.detach() * g).float()
                        for (n, p), g in zip(params.items(), grads, strict=True)
                        if g is not None
                    }
                    ts = [self._channel_sum(ctx, g, kinds, wg) for g in groups]  # t_b[c] = sum_{s in S_c} w_s g_s
                    if world > 1:
                        ts = self._global_batch(ts, sizes, len(y))
                    for group, t in zip(groups, ts, strict=True):
                        sums[group.id] = sums[group.id] + t.pow(2) if group.id in sums else t.pow(2)
                    n_batches += 1
        logger.debug("taylor: scored %d groups on %d batches", len(groups), n_batches)
        return {gid: s / n_batches for gid, s in sums.items()}  # mean over batches of t_b^2

    @staticmethod
    def _global_batch(ts: list[Tensor], sizes: list[int], n: int) -> list[Tensor]:
        """The global batch's ``t_b`` from every process's share (module docstring): one all-reduce of
        ``n_r * t_b^(r)`` and ``n_r``."""
        flat = all_reduce_sum(torch.cat([*ts, torch.ones(1)]) * float(n))  # (sum C + 1,)
        return list((flat[:-1] / flat[-1]).split(sizes))

    @staticmethod
    def _channel_sum(ctx: ScoringContext, group: ChannelGroup, kinds: tuple[str, ...], wg: dict[str, Tensor]) -> Tensor:
        total = torch.zeros(group.size)
        for sl in group_slices(ctx.model, group, kinds=kinds, tensors=wg):
            total = total + sl.per_channel(sl.rows).cpu()
        return total

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, include_consumers={self.include_consumers}, "
                f"train_mode={self.train_mode})")
