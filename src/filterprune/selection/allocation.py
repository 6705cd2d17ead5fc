"""Allocation: how a target is shared among the groups, as the order in which selection takes *units*.

Selection grows a plan one unit at a time (a unit takes one group from one allowed removal count to the
next: one channel, or ``round_to`` of them) along one sorted sequence, and bisects on the prefix length
(:class:`~filterprune.selection.family._Family`). An allocation is the sort key of unit ``(g, n)``,
the unit that brings group ``g`` to ``n`` removed channels (its ``n`` lowest-scored ones). Notation:
``s`` the group's scores, ``ŝ = s / norm(s)`` normalised per group by ``normalize`` (mean, max, l2 of
``|s|``, or none), ``B_g`` the group's baseline width, ``a_g`` channels it already lost.

* ``global``: ``ŝ`` of the unit's last channel. One ranking of normalised scores (today's default).
* ``uniform``: ``(a_g + n) / B_g``, the fraction of its baseline width the group has then lost; every
  prefix removes the same fraction of every group to within one unit, subject to ``min_channels``,
  ``max_ratio``, ``round_to`` and ``ignored_layers`` (a capped group stays at its cap).
* ``cost``: importance per unit of cost saved. With ``C_g(n)`` the cost saved by removing the group's
  ``n`` lowest-scored channels, the other groups as they are now (first order: a conv feeding a pruned
  consumer is costed at the consumer's current width), expressed as a fraction of the baseline total:

      key(g, n) = sum(ŝ_c - m for c in the unit's channels) / (C_g(n) - C_g(n_prev))

  where ``n_prev`` is the previous allowed count and ``m = min(0, min over all candidate ŝ)`` shifts
  scores to be non-negative (a ratio of a negative importance to a cost would rank backwards). ``C``
  is MACs for ``target_macs``, parameters for ``target_params``, one channel per channel for ``ratio``
  (then ``cost`` ranks as ``global``) unless ``cost_of`` names MACs or params (the iterative schedule's
  ratio steps charge MACs), or ``cost_fn(group, n)`` when given (a measured latency table:
  :data:`~filterprune.selection.cost.CostFn`). A unit that saves nothing (``ΔC <= 0``, a flat step of a
  measured table) is merged into the next unit that saves something; units that never do sort last.
  Keys are made non-decreasing within a group (running maximum), so every prefix is a valid plan. So
  of two channels with the same score, the one whose removal saves more cost goes first.
* ``sensitivity``: ``(d_g(n / W_g), n / W_g)`` where ``d_g`` is the group's monotone sensitivity curve
  (predicted drop of the validation metric with this group alone pruned to that fraction of its current
  width ``W_g``; :mod:`filterprune.selection.sensitivity`). A prefix of this order is "every group
  pruned as far as its predicted drop stays within a threshold t"; the bisection on the prefix is the
  bisection on the equal-drop threshold ``t``, ties broken by the fraction removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .cost import CostFn
from .family import _Family
from .options import SelectOptions

_FLAT = 1e-12  # a cost step at most this (in fractions of the total) saves nothing


def unit_key(fam: _Family, opts: SelectOptions, now: tuple[int, int], *, cost_fn: CostFn | None = None,
             curves: Any = None) -> Callable[[int, int], Any]:
    """The sort key of unit ``(gi, n)`` for ``opts.mode`` (module docstring).

    Raises:
        ValueError: ``sensitivity`` without ``curves``, or ``curves`` missing a candidate group.
    """
    mode, cands = opts.mode, fam.cands
    if mode == "global":
        return lambda gi, n: float(cands[gi][3][cands[gi][1][n - 1]])
    if mode == "uniform":
        def fraction(gi: int, n: int) -> float:
            g = cands[gi][0]
            base_size = fam.base.channels.get(g.id, g.size)
            return (base_size - g.size + n) / base_size
        return fraction
    if mode == "cost":
        charged = {"macs": "target_macs", "params": "target_params", None: opts.target[0]}[opts.cost_of]
        keys = cost_keys(fam, charged, now, cost_fn)
        return lambda gi, n: keys[gi][n]
    if curves is None:
        raise ValueError("allocation='sensitivity' needs sensitivity curves (filterprune.selection.sensitivity)")
    missing = [g.id for g, *_ in cands if g.id not in curves.groups]
    if missing:
        raise ValueError(f"the sensitivity curves have no entry for group(s) {', '.join(missing[:3])}; "
                         "measure them on this model")

    def drop(gi: int, n: int) -> tuple[float, float]:
        g = cands[gi][0]
        return curves.drop(g.id, n / g.size), n / g.size
    return drop


def cost_keys(fam: _Family, name: str, now: tuple[int, int], cost_fn: CostFn | None = None) -> list[dict[int, float]]:
    """Per candidate group, ``{n: key}`` of ``allocation="cost"`` for each allowed count ``n``."""
    cands = fam.cands
    shift = min([0.0, *(float(norm.min()) for *_, norm in cands if len(norm))])
    zeros = [0] * len(cands)
    if cost_fn is None and name != "ratio" and fam.cost is None:
        raise ValueError("allocation='cost' with a MACs/params target needs the cost model")
    ref = fam.analytic(zeros, now) if cost_fn is None and name != "ratio" else None

    def saved(gi: int, n: int) -> float:
        if cost_fn is not None:
            return float(cost_fn(cands[gi][0], n))
        if ref is None:
            return n / max(1, fam.base_channels)
        counts = list(zeros)
        counts[gi] = n
        return fam.analytic(counts, now)[name] - ref[name]

    out = []
    for gi, (_, order, _, norm) in enumerate(cands):
        keys: dict[int, float] = {}
        pending: list[int] = []
        done_n, importance, cost_then, best = 0, 0.0, 0.0, -math.inf
        for n in fam.steps[gi]:
            importance += sum(float(norm[order[c]]) - shift for c in range(done_n, n))
            done_n = n
            pending.append(n)
            cost_now = saved(gi, n)
            if cost_now - cost_then > _FLAT:
                best = max(best, importance / (cost_now - cost_then))
                keys.update(dict.fromkeys(pending, best))
                pending, importance, cost_then = [], 0.0, cost_now
        keys.update(dict.fromkeys(pending, math.inf))
        out.append(keys)
    return out
