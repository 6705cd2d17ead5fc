"""Per-filter interpretation of one layer: CAR, class-wise CAR, colour selectivity, and the CAR paper's
statistic (how many of the k lowest-CAR filters are colour-selective, against L1 and random choice).

Source: Abbasi-Asl & Yu, arXiv 1705.07356 / 1711.02329: "of the top-20 CAR-pruned filters, 17 in layer
1 and 14 in layer 2 are colour-selective"; class-wise CAR names the classes a filter matters for.

* CAR and class-wise CAR of every filter of the layer's channel group come from
  :func:`filterprune.criteria.car.car_analysis` (reversible masks; per-class accuracy reductions).
  For a group tied by residual adds (a ResNet stem), a "filter" is the channel of the whole group.
* Colour selectivity: :mod:`.colour` (the kernel rule when the layer reads the image, else the
  response rule on each filter's top images; the all-positions variant is recorded next to it as
  ``colour_index_all_positions``).
* The statistic, for ``k``: ``car_count`` = colour-selective filters among the k lowest CAR
  (removed first), ``l1_count`` the same for the k lowest L1 norms of the layer's kernels, and for
  ``draws`` random k-subsets (seeded) their mean count and the one-sided p-value of CAR's count,
  ``p = (1 + #{draws with count >= car_count}) / (1 + draws)``; the exact hypergeometric tail
  ``P(X >= car_count)`` (k of n filters, m colour-selective) is given next to it.
  :func:`subset_statistic` gives the same numbers for any chosen k filters (e.g. the first k that
  greedy CAR removes, one per step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .colour import (
    THRESHOLD,
    activation_module,
    kernel_colour_index,
    response_colour_index,
    top_response_colour_index,
)

logger = logging.getLogger(__name__)

__all__ = ["TOP_IMAGES", "LayerStudy", "hypergeom_tail", "k_lowest_statistic", "study_layer", "subset_statistic"]

TOP_IMAGES = 50  # top images per filter for the deeper-layer colour index (Rafegas & Vanrell use 100 of ImageNet)


def hypergeom_tail(n: int, m: int, k: int, x: int) -> float:
    """``P(X >= x)`` for X = colour-selective filters among k drawn without replacement from n (m selective)."""
    total = math.comb(n, k)
    return sum(math.comb(m, i) * math.comb(n - m, k - i) for i in range(x, min(m, k) + 1)) / total


def subset_statistic(chosen: Sequence[int], selective: Tensor, draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Colour-selective filters among ``chosen`` against random subsets of the same size (module docstring).

    Args:
        chosen: k distinct filter indices.
        selective: ``(C,)`` bool, one per filter of the layer.
        draws: random k-subsets (seeded, without replacement).
        seed: their generator's seed.

    Returns:
        ``count``, ``k``, ``random_mean``, ``random_std``, ``random_draws``, ``p_value`` (Monte Carlo,
        ``(1 + #{count_random >= count}) / (1 + draws)``) and ``p_value_exact`` (hypergeometric tail).

    Raises:
        ValueError: repeated or out-of-range indices.

    >>> subset_statistic([0, 1], torch.tensor([True, True, False, False]), draws=10)["p_value_exact"]
    0.16666666666666666
    """
    n, k = selective.numel(), len(chosen)
    if len(set(chosen)) != k or not all(0 <= int(c) < n for c in chosen):
        raise ValueError(f"chosen must be distinct filter indices in [0, {n}), got {list(chosen)}")
    sel = selective.bool().cpu()
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([int(sel[torch.randperm(n, generator=g)[:k]].sum()) for _ in range(draws)])
    count = int(sel[torch.as_tensor(list(chosen), dtype=torch.long)].sum()) if k else 0
    return {"count": count, "k": k, "random_mean": float(counts.double().mean()),
            "random_std": float(counts.double().std()), "random_draws": draws,
            "p_value": (1 + int((counts >= count).sum())) / (1 + draws),
            "p_value_exact": hypergeom_tail(n, int(sel.sum()), k, count)}


def k_lowest_statistic(car: Tensor, l1: Tensor, selective: Tensor, k: int, draws: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    """Colour-selective filters among the k lowest by CAR, by L1 and at random (module docstring).

    Args:
        car: ``(C,)`` CAR (ties broken by the caller's score; lower = removed first).
        l1: ``(C,)`` L1 norms.
        selective: ``(C,)`` bool.
        k: filters per choice (clipped to C).
        draws: random subsets.
        seed: their generator's seed.
    """
    n = car.numel()
    k = min(k, n)
    sel = selective.bool().cpu()
    car_idx = torch.argsort(car.double().cpu(), stable=True)[:k]
    l1_idx = torch.argsort(l1.double().cpu(), stable=True)[:k]
    rand = subset_statistic(car_idx.tolist(), sel, draws, seed)
    return {"k": k, "filters": n, "colour_selective": int(sel.sum()),
            "car_count": rand["count"], "car_filters": car_idx.tolist(),
            "l1_count": int(sel[l1_idx].sum()), "l1_filters": l1_idx.tolist(),
            **{key: rand[key] for key in ("random_mean", "random_std", "random_draws", "p_value", "p_value_exact")}}


@dataclass
class LayerStudy:
    """What :func:`study_layer` found; ``filters`` has one record per filter, ``statistic`` per k."""

    layer: str
    group: str
    rule: str
    input_std: list[float]
    eval_images: int
    base_acc: float
    filters: list[dict[str, Any]]
    statistic: dict[str, Any]
    activation: str = ""


def _reads_image(model: nn.Module, layer: str, in_chans: int) -> bool:
    first = next(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    return model.get_submodule(layer) is first and first.in_channels == in_chans


def study_layer(model: nn.Module, layer: str, batches: Sequence[tuple[Tensor, Tensor]], *, mean: Sequence[float],
                std: Sequence[float], class_names: Sequence[str], k: int = 20, draws: int = 1000,
                seed: int = 0) -> LayerStudy:
    """CAR, class-wise CAR, colour index and L1 of every filter of ``layer``, and the k-lowest statistic.

    Args:
        model: a trained classifier (not changed).
        layer: a conv layer's qualified name.
        batches: the evaluation set, normalised ``(x, y)`` batches (training images, not augmented).
        mean, std: the input normalisation (``x = (pixels - mean) / std``).
        class_names: names of the classes, in label order.
        k: filters in the statistic (the paper: 20).
        draws: random subsets for the baseline.
        seed: their seed.

    Raises:
        ValueError: ``layer`` is not a conv layer or not prunable.
    """
    from ..criteria import ScoringContext
    from ..criteria.car import car_analysis
    from ..criteria.car_greedy import find_group
    from ..graph.trace import trace_groups

    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, nn.modules.conv._ConvNd):
        raise ValueError(f"{layer!r} is not a conv layer of the model")
    x0 = batches[0][0][:2]
    groups = trace_groups(model, x0)
    group = find_group(groups, layer)
    ctx = ScoringContext(model, x0, groups, data=list(batches), num_batches=len(batches))
    res = car_analysis(ctx, groups=[group.id])
    car, score = res.drop[group.id].double().cpu(), res.scores("car")[group.id].double().cpu()
    class_car = res.class_drop[group.id].double().cpu()  # (C, K)
    l1 = module.weight.detach().abs().sum(dim=tuple(range(1, module.weight.dim()))).double().cpu()
    if _reads_image(model, layer, len(std)):
        rule = "kernel: ||W_p - mean_c W_p||^2 / ||W_p||^2, W_p[c] = W[c] / std[c]"
        index = kernel_colour_index(module.weight, std)
        activation = layer
        extra: dict[str, Tensor] = {}
    else:
        activation = activation_module(model, layer, x0[:1])
        top = min(TOP_IMAGES, sum(int(y.shape[0]) for _, y in batches))
        rule = (f"response: 1 - R_grey / R_colour, R = mean over each filter's top {top} images of relu(output of "
                f"{activation}) at its strongest position (Rafegas & Vanrell 2018)")
        index, r_colour, r_grey = top_response_colour_index(model, layer, batches, mean, std, at=activation, top=top)
        index_all, _, _ = response_colour_index(model, layer, batches, mean, std, at=activation)
        extra = {"response_colour": r_colour, "response_grey": r_grey, "colour_index_all_positions": index_all}
    selective = torch.nan_to_num(index, nan=0.0) >= THRESHOLD
    filters = []
    for c in range(car.numel()):
        order = torch.argsort(class_car[c], descending=True, stable=True).tolist()
        rec = {"index": c, "car": float(car[c]), "car_score": float(score[c]),
               "class_car": {class_names[j]: float(class_car[c, j]) for j in range(class_car.shape[1])},
               "most_helped_classes": [class_names[j] for j in order[:3]],
               "least_helped_classes": [class_names[j] for j in order[-3:][::-1]],
               "colour_index": float(index[c]), "colour_selective": bool(selective[c]), "l1": float(l1[c]),
               **{name: float(v[c]) for name, v in extra.items()}}
        filters.append(rec)
    stat = k_lowest_statistic(score, l1, selective, k, draws, seed)
    return LayerStudy(layer, group.id, rule, [float(s) for s in std], res.num_images, float(res.base), filters,
                      stat, activation)
