"""``pls-vip``: the VIP score of each filter in one PLS2 model of the class from all filters' pooled outputs.

Provenance: A. Jordao, R. Kloss, F. Yamada, W. R. Schwartz, "Pruning Deep Neural Networks using
Partial Least Squares", BMVC Workshops 2019, arXiv:1810.07610; reference code
github.com/arturjordao/PruningNeuralNetworks (``VIPPruning.py``, commit 98a5bc9). No code adapted.
The iterative schedule of the paper (remove the lowest-VIP 10% of the remaining filters, refit PLS,
fine-tune, repeat) is :func:`filterprune.workflows.pls_iterate.pls_vip_iterate`.

What is computed:

1. Features. Every column of the design matrix X (N images x F features) is one output channel of
   one layer, reduced to a number per image by global max pooling (``pooling="max"``, the paper's
   default) or global average pooling. ``position="pre_bn"`` (default, as the paper's Keras models,
   whose Conv2D output precedes separate BN and ReLU layers) reads the output of every conv (or
   Linear) that produces a group's channels; ``position="post_act"`` reads ReLU(BN output) of the
   group's BatchNorm layers instead (ReLU(conv output) for a group without BN). Only prunable
   groups contribute columns. Collection streams batch by batch (:mod:`._features`): each batch's
   pooled features are folded into the float64 means, XᵀX and XᵀY (:mod:`._pls_kernel`) and
   dropped; neither feature maps nor the N x F matrix are stored.
2. PLS2: Y is the one-hot class (N x K); X and Y are standardised (sklearn ``scale=True``:
   constant columns keep std 1, so a dead filter gets VIP 0); ``n_components`` latent components,
   the NIPALS model of ``sklearn.cross_decomposition.PLSRegression`` and of :func:`._pls.pls2`,
   reached from the cross products by the kernel algorithm of Dayal & MacGregor (1997)
   (:func:`._pls_kernel.pls2_kernel`). One PLS model is fit over the columns of every layer at once.
3. VIP of column j: VIP_j = sqrt(F · Σ_a s_a (w_ja / ||w_a||)² / Σ_a s_a) with
   s_a = (t_aᵀ t_a)(q_aᵀ q_a) (x weights w, x scores t, y loadings q). Σ_j VIP_j² = F.
4. Score of a group channel: the mean of the VIPs of its columns (``reduce="mean"``). A plain
   conv's channel has one column, so its score is its VIP, exactly the paper. A residual group
   (several convs tied by adds: stem and every block's last conv of a ResNet stage) has one column
   per producer conv. The mean is chosen because it is the paper's own rule for a filter
   represented by several features (``score_by_filter`` averages them), and because it keeps the
   score on the VIP scale (mean VIP² = 1), so raw scores stay comparable across groups in one
   global ranking; a channel only some producers use well scores in between. ``reduce="max"``
   keeps a residual channel if any producer finds it discriminative; it ranks residual channels
   systematically higher than single-conv ones (a max of several VIPs), which the paper never had to
   arbitrate since its ResNets prune only each block's first conv.

Data. Images are read from ``ctx.data`` (``ctx.num_batches`` is not used): ``samples=N`` takes a
class-stratified sample of N images (the first N // K of each class in the data's order), ``None``
all of them (the paper uses the whole training set). Pass unaugmented data for the paper's setting.
The model runs in eval mode under ``no_grad``; it is not modified. Memory: F² + F K + K² float64
numbers whatever N (ResNet-56, F = 2032: 33 MB) plus one batch of activations.

>>> import torch
>>> from filterprune.criteria import ScoringContext, create_criterion
>>> from filterprune.graph.trace import trace_groups
>>> from filterprune.models import create_model
>>> model, x = create_model("resnet20"), torch.randn(4, 3, 32, 32)
>>> data = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 10) for _ in range(2)]
>>> scores = create_criterion("pls-vip").score(ScoringContext(model, x, trace_groups(model, x), data=data))
>>> scores["layer1.0.conv1"].shape
torch.Size([16])
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph.groups import ChannelGroup
from ..graph.trace import forward
from ..types import Scores
from ..utils.modes import evaluating
from ._features import POOLINGS, Block, iter_pooled
from ._pls import vip
from ._pls_kernel import CrossProducts, pls2_kernel
from .base import Criterion, ScoringContext, ScoringError, register_criterion

logger = logging.getLogger(__name__)

POSITIONS = ("pre_bn", "post_act")
REDUCTIONS = ("mean", "max")
_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase,)


@register_criterion("pls-vip")
class PLSVIP(Criterion):
    """VIP of each filter's pooled output in a PLS2 model of the one-hot class (Jordao et al.).

    Args:
        n_components: PLS latent components (the paper: 2, "not recommended" to change).
        samples: images for the fit, class-stratified; ``None`` uses every image of ``ctx.data``.
        pooling: ``"max"`` or ``"avg"``: global pooling of each feature map to one number.
        position: ``"pre_bn"`` (conv output) or ``"post_act"`` (ReLU of the BN output).
        reduce: ``"mean"`` or ``"max"`` over the columns of a channel tied across several convs.
        distributed: under ``torch.distributed`` (``"auto"``: when a process group is initialised,
            or ``True`` / ``False``), process ``r`` of ``w`` reads batches ``r, r + w, ...`` of
            ``ctx.data`` (or all of it, when ``ctx.data`` is a loader already sharded with
            ``shard=``) and its share of ``samples``; the cross products are summed over processes.
            With ``samples=None`` the scores equal one process's.
    """

    requires_data = True

    def __init__(self, n_components: int = 2, samples: int | None = None, pooling: str = "max",
                 position: str = "pre_bn", reduce: str = "mean", distributed: bool | str = "auto") -> None:
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        if distributed not in ("auto", True, False):
            raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise ValueError(f"samples must be a positive integer or None, got {samples!r}")
        for name, value, allowed in (("pooling", pooling, POOLINGS), ("position", position, POSITIONS),
                                     ("reduce", reduce, REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.n_components = n_components
        self.samples = samples
        self.pooling = pooling
        self.position = position
        self.reduce = reduce
        self.distributed = distributed

    def columns(self, model: nn.Module, groups: list[ChannelGroup]) -> tuple[list[Block], Tensor]:
        """The design matrix's column blocks, and the index of the group channel of every column.

        Group channel ``c`` of the ``g``-th group has index ``sum(sizes of groups before g) + c``.
        """
        blocks: list[Block] = []
        owners: list[Tensor] = []
        offset = 0
        for g in groups:
            members = g.members_of("out")
            producers = [m for m in members if isinstance(model.get_submodule(m.module), _PRODUCERS)]
            chosen, relu = producers, False
            if self.position == "post_act":
                norms = [m for m in members if isinstance(model.get_submodule(m.module), _NORMS)]
                chosen, relu = (norms or producers), True
            chosen = chosen or members  # no conv/Linear/BN output carries it: read whatever does
            if not chosen:
                raise ScoringError(f"pls-vip: group {g.id} has no layer whose output carries its channels")
            for m in chosen:
                blocks.append(Block(m.module, tuple(i for ix in m.idxs for i in ix), relu))
                owners.append(offset + torch.repeat_interleave(torch.arange(g.size),
                                                               torch.tensor([len(ix) for ix in m.idxs])))
            offset += g.size
        return blocks, torch.cat(owners)

    def compute(self, ctx: ScoringContext) -> Scores:
        """``(C,)`` per group: the VIP of each filter's pooled-activation columns in a PLS model of the
        labels (Jordao et al. 2018, arXiv 1810.07610), from ``ctx.data``.

        Raises:
            ScoringError: no data.
        """
        from ..distributed import current_shard

        model, groups = ctx.model, ctx.prunable_groups()
        blocks, owner = self.columns(model, groups)
        num_classes = _num_classes(model, ctx.example_inputs)
        shard = current_shard() if self.distributed in ("auto", True) else (0, 1)
        sharded_data = getattr(ctx.data, "shard", (0, 1))[1] > 1  # a loader that yields this process's share
        start = time.perf_counter()
        stats = CrossProducts(len(owner), num_classes or 0)
        for x, y in iter_pooled(model, ctx.data, blocks, samples=self.samples, pooling=self.pooling,
                                device=ctx.resolved_device(), num_classes=num_classes, shard=shard,
                                interleave=not sharded_data):
            k = max(num_classes or 0, int(y.max()) + 1)
            stats.update(x, F.one_hot(y, k))  # (B, F), (B, K): folded into float64 cross products
        if shard[1] > 1:
            stats.all_reduce()  # every process: the statistics of all images
        if stats.n == 0:
            raise ScoringError("pls-vip: the data yielded no image")
        collected = time.perf_counter()
        scores = vip(pls2_kernel(stats, self.n_components, scale=True)).float()  # (F,)
        logger.info("pls-vip: %d images x %d features, %d classes; features %.1fs, PLS fit %.1fs",
                    stats.n, len(owner), stats.mean_y.shape[0], collected - start, time.perf_counter() - collected)
        total = sum(g.size for g in groups)
        how = "mean" if self.reduce == "mean" else "amax"
        per_channel = torch.zeros(total).scatter_reduce_(0, owner, scores, reduce=how, include_self=False)
        out, offset = {}, 0
        for g in groups:
            out[g.id] = per_channel[offset:offset + g.size].clone()
            offset += g.size
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n_components={self.n_components}, "
                f"samples={self.samples}, pooling={self.pooling!r}, position={self.position!r}, "
                f"reduce={self.reduce!r}, distributed={self.distributed!r})")


def _num_classes(model: nn.Module, example_inputs) -> int | None:
    """Width of the model's output if it is one ``(B, K)`` tensor (the classes), else ``None``."""
    with evaluating(model):
        out = forward(model, example_inputs)
    return int(out.shape[1]) if isinstance(out, Tensor) and out.dim() == 2 else None
