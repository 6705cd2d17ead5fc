"""From scores to a :class:`PrunePlan`: which channels to remove to reach a target.

Targets (exactly one), each a fraction of the *baseline* (the model before the first pruning step):

* ``ratio``: fraction of the prunable channels removed;
* ``target_macs``: fraction of MACs removed; ``target_params``: fraction of parameters removed;
* ``target_latency``: fraction of the latency removed, as predicted by ``select(..., latency=f)``
  (:data:`LatencyFn`; :mod:`filterprune.latency_target` builds ``f`` from a measured per-group table
  and verifies the result by measuring).

The *allocation* decides how the target is shared among the groups (:mod:`.allocation`): ``global``
(default: channels of all groups in one list, lowest per-group normalised score first), ``uniform``
(the same fraction of every group), ``cost`` (normalised score per unit of the target's cost saved,
or of a measured cost such as latency through ``cost_fn``) and ``sensitivity`` (per-group measured
curves, equal predicted drop; :mod:`.sensitivity`). Either way the candidates form a nested family
"remove the first k units"; ``k`` is found by bisection on an analytic MACs/params model built from
the member shapes (one forward pass for spatial sizes), then confirmed with the metrics ``count`` on a
pruned copy, and bisected on real counts if the two disagree. The result must land within
``tolerance`` (absolute) of the request, or :class:`PruningError` says what is reachable.

Modules: :mod:`.options` (what is asked), :mod:`.cost` (MACs/params model, counters), :mod:`.family`
(units, analytic counts, the solver), :mod:`.allocation` (unit order), :mod:`.engine` (``select``),
:mod:`.sensitivity` (curves: measure, cache, monotone fit).

>>> import torch
>>> from torch import nn
>>> from filterprune.graph.trace import trace_groups
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
>>> x = torch.randn(1, 3, 8, 8)
>>> groups = trace_groups(model, x)
>>> plan = select(model, x, groups, {"0": torch.arange(8.0)}, SelectOptions(ratio=0.5))
>>> plan.prune_idxs
{'0': [0, 1, 2, 3]}
"""

from .allocation import cost_keys, unit_key
from .cost import CostFn, CostModel, Counter, LatencyFn, _analytic_count, baseline, default_counter
from .engine import _limits, select
from .family import _GRID_BUDGET, _candidates, _Family, _normalized
from .options import ALLOCATIONS, NORMALIZERS, Baseline, SelectOptions
from .sensitivity import SensitivityCurves, loss_and_accuracy, measure_curves, monotone_fit, ratio_grid

__all__ = ["ALLOCATIONS", "NORMALIZERS", "Baseline", "CostFn", "CostModel", "Counter", "LatencyFn", "SelectOptions",
           "SensitivityCurves", "baseline", "cost_keys", "default_counter", "loss_and_accuracy", "measure_curves",
           "monotone_fit", "ratio_grid", "select", "unit_key"]
# private names re-exported for the tests written against the single-module selection.py
_PRIVATE = (_GRID_BUDGET, _Family, _analytic_count, _candidates, _limits, _normalized)
