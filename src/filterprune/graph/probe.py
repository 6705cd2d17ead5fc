"""The channel-flow probe that tracing runs: perturb channels, watch where they arrive.

:func:`probe_channel_flow` perturbs a few channels of each group and verifies that they reach exactly
the consumer slices the trace predicted. Every layer with separate input and output channels (conv,
Linear, shortcut) has its output pinned to the unperturbed value, so a perturbation can travel only
through channel-wise ops; any arrival outside the predicted slices (a channel shuffle, a reduction over
channels, an op the tracer misread) is a refusal.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PruningError
from ..utils.modes import evaluating
from ._tpgraph import Inputs, first_sample, flat_outputs, forward, map_tensors
from .groups import ChannelGroup
from .surgery import PASS_THROUGH, is_depthwise, is_mixer


def _probe_channels(size: int) -> list[int]:
    return sorted({min(1, size - 1), size // 2, max(size - 2, 0)})


def _changed(now: torch.Tensor, base: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """(P, C) bool: which channels of each probe row differ from the baseline.

    Perturbations are ~10x the activations, so a loose tolerance tells them from float noise.
    """
    tol = 1e-4 * (1.0 + float(base.abs().max())) if base.numel() else 0.0
    diff = (now - base).abs_().gt_(tol)
    diff = diff.movedim(channel_dim, 1).reshape(diff.shape[0], diff.shape[channel_dim], -1)
    return diff.any(-1)


def probe_channel_flow(model: nn.Module, example_inputs: Inputs, groups: Sequence[ChannelGroup]) -> None:
    """Verify by perturbation that each group's channels arrive exactly where its members say.

    Three probe rows in one batched forward pass; each row perturbs one channel of every group at
    once (with mixing layers pinned, perturbations of different groups cannot interact unless the
    trace is wrong). Mixing layers do not run: they return their unperturbed output, plus the
    perturbation where they produce a probed channel. On a violation, groups are re-probed one at a
    time to name the culprit.

    Raises:
        PruningError: a channel reaches an input slice (or a model output) that tracing did not predict.
    """
    groups = [g for g in groups if not g.reaches_output and g.size > 1]
    if not groups:
        return
    named = dict(model.named_modules())
    x1 = first_sample(example_inputs)
    base = _Baseline(model, named, x1)
    picks = [_probe_channels(g.size) for g in groups]
    rows = [[(g, p[(r + i) % len(p)]) for i, (g, p) in enumerate(zip(groups, picks, strict=True))] for r in range(3)]
    if _violation(base, rows) is None:
        return
    for g in groups:
        bad = _violation(base, [[(g, c)] for c in _probe_channels(g.size)])
        if bad is not None:
            raise PruningError(f"group {g.id}: {bad}; to keep these channels whole pass ignored_layers={[g.id]!r}")
    raise PruningError(f"channels of several groups interact at {_violation(base, rows)}; to keep them whole pass "
                       f"ignored_layers={[g.id for g in groups]!r}")


class _Baseline:
    """Unperturbed outputs of every mixer and inputs of every consumer, for one sample."""

    def __init__(self, model: nn.Module, named: dict[str, nn.Module], x1: Inputs) -> None:
        self.model, self.named, self.x1 = model, named, x1
        self.mixers = {n for n, m in named.items() if is_mixer(m)}
        self.consumers = {n for n, m in named.items() if is_mixer(m) or is_depthwise(m)}
        self.out: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.inp: dict[str, list[torch.Tensor]] = defaultdict(list)
        # clones: an in-place op later in the forward (ReLU(inplace=True)) must not edit what we keep
        handles = [named[n].register_forward_hook(lambda mod, i, o, n=n: self.out[n].append(o.detach().clone()))
                   for n in self.mixers]
        handles += [named[n].register_forward_pre_hook(
            lambda mod, i, n=n: self.inp[n].append(i[0].detach().clone())) for n in self.consumers]
        try:
            with evaluating(model):
                self.y = flat_outputs(forward(model, copy_inputs(x1)))
        finally:
            for h in handles:
                h.remove()


def _pinned_forward(pinned, name: str, *args, **kwargs) -> torch.Tensor:
    return pinned(name)


def _violation(base: _Baseline, rows: list[list[tuple[ChannelGroup, int]]]) -> str | None:
    """Run one probe pass; describe the first unexpected arrival, or None."""
    n_rows = len(rows)
    producers: dict[str, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    expected: list[dict[str, set[int]]] = [defaultdict(set) for _ in rows]
    for r, row in enumerate(rows):
        for g, c in row:
            for m in g.members:
                expected[r][m.module].update(m.idxs[c])
                if m.kind == "out":
                    producers[m.module].append((r, m.idxs[c]))
    gen = torch.Generator().manual_seed(0)

    def perturb(name: str, out: torch.Tensor) -> torch.Tensor:
        if name not in producers:
            return out
        out = out.clone() if out.is_contiguous() else out.contiguous()
        scale = 10.0 * (1.0 + float(out.abs().max()))
        axis = out.dim() - 1 if isinstance(base.named[name], nn.Linear) else 1  # a Linear's channels: last dim
        for r, idxs in producers[name]:
            for i in idxs:
                at = (r, *([slice(None)] * (axis - 1)), i)
                out[at] += scale * torch.randn(out[at].shape, generator=gen).to(out)
        return out

    calls: dict[str, int] = defaultdict(int)
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)

    def pinned(name: str) -> torch.Tensor:
        out = base.out[name][calls[name]]
        calls[name] += 1
        return perturb(name, out.expand(n_rows, *out.shape[1:]).contiguous())

    def consumer_hook(mod, inputs, name):
        ref = base.inp[name][len(seen[name])]
        channel_dim = inputs[0].dim() - 1 if isinstance(mod, nn.Linear) else 1
        seen[name].append(_changed(inputs[0], ref.expand_as(inputs[0]), channel_dim))

    handles = []
    for n, m in base.named.items():
        if n in base.mixers:
            m.forward = functools.partial(_pinned_forward, pinned, n)  # skip the computation
        elif n in producers and isinstance(m, (*PASS_THROUGH, nn.modules.conv._ConvNd)):
            handles.append(m.register_forward_hook(lambda mod, i, o, n=n: perturb(n, o)))
        if n in base.consumers:
            handles.append(m.register_forward_pre_hook(lambda mod, i, n=n: consumer_hook(mod, i, n)))
    try:
        with evaluating(base.model):
            ys = flat_outputs(forward(base.model, _expand_rows(base.x1, n_rows)))
    finally:
        for h in handles:
            h.remove()
        for n in base.mixers:
            del base.named[n].forward
    for name, records in seen.items():
        for changed in records:
            for r in range(n_rows):
                got = set(torch.nonzero(changed[r]).flatten().tolist())
                extra = got - expected[r].get(name, set())
                if extra:
                    return (f"channel {rows[r][0][1]} reaches {name} input channels {sorted(extra)[:4]} that tracing "
                            "did not predict (channel shuffle, reshape or an op the engine cannot follow)")
    for y, y0 in zip(ys, base.y, strict=True):
        if y.dim() and _changed(y, y0.expand_as(y), min(1, y.dim() - 1)).any():
            return "its channels reach a model output by a path tracing did not see"
    return None


def _expand_rows(inputs: Inputs, rows: int) -> Inputs:
    return map_tensors(inputs, lambda t: t.expand(rows, *t.shape[1:]).contiguous())


def copy_inputs(inputs: Inputs) -> Inputs:
    """A fresh copy per forward pass: a model that edits its input in place must not see its own edits."""
    return map_tensors(inputs, torch.clone)
