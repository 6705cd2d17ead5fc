"""MACs and parameters as functions of channel widths (:class:`CostModel`), and the counters selection
checks its plans with."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

from torch import nn

from ..graph.groups import ChannelGroup
from ..graph.surgery import is_depthwise
from ..graph.trace import Inputs, forward
from ..types import NORM_LAYERS
from ..utils.modes import evaluating
from .options import Baseline

Counter = Callable[[nn.Module, Inputs], tuple[int, int]]
#: ``cost_fn(group, n_removed) -> float``: the cost saved (any unit, e.g. seconds of measured latency)
#: when the group loses ``n_removed`` of its current channels, the other groups as they are; 0 for 0.
#: ``allocation="cost"`` ranks channels by score per unit of it (:mod:`filterprune.selection.allocation`).
CostFn = Callable[[ChannelGroup, int], float]
#: ``latency(cuts) -> fraction of the baseline latency removed``, ``cuts[(module, "in"|"out")]`` the
#: indices cut from that module's dimension: the predictor of ``target_latency``
#: (:mod:`filterprune.latency_target` builds it from a measured table and verifies by measuring).
LatencyFn = Callable[[dict[tuple[str, str], int]], float]


def _analytic_count(model: nn.Module, example_inputs: Inputs) -> tuple[int, int]:
    return CostModel(model, example_inputs).totals()


def default_counter() -> Counter:
    """The metrics package's ``count``; if it is missing, the analytic count of :class:`CostModel`."""
    try:
        from ..metrics import count
    except ImportError:
        return _analytic_count
    return count


class CostModel:
    """MACs and parameters of conv / Linear / norm layers as functions of their channel widths."""

    def __init__(self, model: nn.Module, example_inputs: Inputs) -> None:
        self.modules = {n: m for n, m in model.named_modules()
                        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, *NORM_LAYERS, nn.PReLU))}
        # spatial positions per sample, summed over calls: of the output (of the input for transposed
        # convs, which metrics.count counts by input element)
        self.positions: dict[str, int] = defaultdict(int)

        def hook(name):
            def record(mod, inputs, out):
                t = inputs[0] if getattr(mod, "transposed", False) else out
                width = t.shape[-1] if isinstance(mod, nn.Linear) else t.shape[1]
                self.positions[name] += t.numel() // max(1, t.shape[0] * width)
            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]
        try:
            with evaluating(model):
                forward(model, example_inputs)
        finally:
            for h in handles:
                h.remove()

    def cost(self, name: str, cut_out: int = 0, cut_in: int = 0) -> tuple[float, float]:
        """(MACs, params) of module ``name`` with ``cut_out``/``cut_in`` channels removed."""
        m, pos = self.modules[name], self.positions.get(name, 0)
        if isinstance(m, nn.modules.conv._ConvNd):
            k = math.prod(m.kernel_size)
            out, inp = m.out_channels - cut_out, m.in_channels - cut_in
            if is_depthwise(m):  # a pruned depthwise conv keeps one input channel per filter (groups shrink)
                out = min(out, inp)
                weights = out * k
            else:
                weights = out * inp / m.groups * k
            return weights * pos, weights + (out if m.bias is not None else 0)
        if isinstance(m, nn.Linear):
            out, inp = m.out_features - cut_out, m.in_features - cut_in
            return out * inp * pos, out * inp + (out if m.bias is not None else 0)
        if isinstance(m, nn.PReLU):
            return 0.0, m.num_parameters - (cut_out if m.num_parameters > 1 else 0)
        width = m.num_features - cut_out
        return 0.0, 2 * width if m.weight is not None else 0

    def totals(self) -> tuple[int, int]:
        """(MACs per sample, parameters) of the model as measured, conv/Linear/norm layers only."""
        macs = params = 0.0
        for name in self.modules:
            mc, pc = self.cost(name)
            macs, params = macs + mc, params + pc
        return int(macs), int(params)


def baseline(model: nn.Module, example_inputs: Inputs, groups: Sequence[ChannelGroup],
             counter: Counter | None = None) -> Baseline:
    """Measure the model that targets are relative to."""
    macs, params = (counter or default_counter())(model, example_inputs)
    return Baseline(int(macs), int(params), {g.id: g.size for g in groups})
