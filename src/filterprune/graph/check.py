"""Checks that pruning did what it claims.

* :func:`~filterprune.graph.probe.probe_channel_flow` (run by tracing, in ``probe.py``): channels
  arrive exactly where the trace says.
* :func:`apply_plan_checked`: outputs of the masked model on a batch, then surgery, then outputs of
  the pruned model; they must agree (max abs difference reported, :class:`PruningError` above
  tolerance). ``prune`` runs this by default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from ..errors import PruningError
from ..utils.modes import evaluating, full_fp32
from ._tpgraph import Inputs, flat_outputs, forward
from .groups import ChannelGroup, PrunePlan
from .masking import masked_plan
from .probe import copy_inputs
from .surgery import apply_plan

logger = logging.getLogger(__name__)


def max_abs_diff(a, b) -> tuple[float, float]:
    """(max |a - b|, max |a|) over all output tensors of two forward results."""
    ta, tb = flat_outputs(a), flat_outputs(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        raise PruningError("pruned model's output shapes differ from the original's")
    err = max((float((x - y).abs().max()) for x, y in zip(ta, tb, strict=True) if x.numel()), default=0.0)
    scale = max((float(x.abs().max()) for x in ta if x.numel()), default=0.0)
    return err, scale


def apply_plan_checked(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    plan: PrunePlan,
    example_inputs: Inputs,
    *,
    rtol: float = 1e-4,
) -> float:
    """Apply ``plan`` and verify that the pruned model computes what the masked one did.

    The comparison runs in eval mode on ``example_inputs``, in full float32 (TF32 off on GPUs,
    :func:`~filterprune.utils.modes.full_fp32`); the tolerance is ``rtol`` times the largest output
    magnitude (plus 1e-6).

    Returns:
        The max abs difference between masked and pruned outputs.

    Raises:
        PruningError: the difference is above tolerance or the pruned model fails to run. The model
            has been modified by then.
    """
    with evaluating(model), full_fp32():  # TF32 convolutions on a GPU would differ by more than rtol
        with masked_plan(model, groups, plan):
            reference = forward(model, copy_inputs(example_inputs))
        apply_plan(model, groups, plan)
        try:
            pruned = forward(model, copy_inputs(example_inputs))
        except RuntimeError as e:
            raise PruningError(f"pruned model fails to run: {str(e).splitlines()[0]}") from None
    err, scale = max_abs_diff(reference, pruned)
    logger.debug("masked vs pruned: max abs diff %.3g (output scale %.3g)", err, scale)
    if not err <= rtol * scale + 1e-6:
        raise PruningError(f"pruned model differs from the masked one by {err:.3g} (scale {scale:.3g}); "
                           "the dependency trace missed a coupling")
    return err
