"""Channel groups of a model: an adapter over torch-pruning's ``DependencyGraph`` (pinned 1.6.1).

Torch-pruning traces the autograd graph of one forward pass and propagates "remove channel c of this
conv" to every coupled layer. We use only that propagation; scoring, selection, masking and surgery
are ours. No torch-pruning type leaves this module: each of its groups becomes a :class:`ChannelGroup`.

Where the trace cannot be trusted we refuse with :class:`PruningError` instead of pruning wrongly:

* ops that move channels around (transpose/permute, as in a channel shuffle; gather/index; pixel
  shuffle) or cut the channel axis into fixed pieces (split/chunk/unbind, slicing, concat along another
  axis, reductions over channels) on a channel path;
* modules the engine cannot prune (LayerNorm, GroupNorm, attention, ..., or a bare ``nn.Parameter``)
  on a channel path;
* anything else a channel-flow probe (:func:`filterprune.graph.check.probe_channel_flow`) shows going
  somewhere the trace did not predict.

>>> from filterprune.models import create_model
>>> groups = trace_groups(create_model("resnet20"), torch.randn(1, 3, 32, 32))
>>> [g.id for g in groups][:3], groups[0].size
(['conv1', 'layer1.0.conv1', 'layer1.1.conv1'], 16)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.pruner.function import BasePruningFunc

from ..errors import PruningError
from ..types import NORM_LAYERS
from ..utils.modes import modes_kept
from .groups import ChannelGroup, Member
from .ops import LayerOp, layer_op, opaque_forward
from .surgery import dim_size, is_depthwise

logger = logging.getLogger(__name__)

Inputs = torch.Tensor | tuple | list | dict

# Modules whose channel dims we know how to slice (surgery.py) and mask (masking.py).
PASS_THROUGH = (*NORM_LAYERS, nn.PReLU)
_REFUSED_MODULES = (nn.GroupNorm, nn.LayerNorm, nn.MultiheadAttention, nn.RNNBase, nn.Embedding)
# grad_fn names (lower case) of ops that move channels or that we cannot follow.
_MOVING_OPS = ("transpose", "permute", "pixelshuffle", "pixelunshuffle", "channelshuffle", "index",
               "gather", "scatter", "roll", "unknown", "bmm", "matmul", "einsum")
_REDUCTIONS = ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "softmax", "logsoftmax",
               "norm", "cumsum", "prod", "logsumexp")


class _OpPruner(BasePruningFunc):
    """Tells torch-pruning the channel widths of a registered :class:`~filterprune.graph.ops.LayerOp`
    (separate input and output dims). Torch-pruning never prunes with it: surgery is ours."""

    def __init__(self, op: LayerOp) -> None:
        super().__init__()
        self.op = op

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise NotImplementedError("filterprune's surgery resizes registered layers")

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise NotImplementedError("filterprune's surgery resizes registered layers")

    def get_out_channels(self, layer: nn.Module) -> int:
        return self.op.out_channels(layer)

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.op.in_channels(layer)


def _custom_pruners(model: nn.Module) -> dict[type, BasePruningFunc]:
    return {type(m): _OpPruner(op) for m in model.modules() if (op := layer_op(m)) is not None}


def forward(model: nn.Module, inputs: Inputs):
    """Call ``model`` on a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def is_mixer(m: nn.Module) -> bool:
    """A layer whose input and output channels are separate dims (a conv that is not depthwise, a
    Linear, a shortcut): channels end at its input and new ones start at its output."""
    return (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or layer_op(m) is not None) and not is_depthwise(m)


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """Grad on, registered layer ops opaque, train/eval flags restored afterwards (torch-pruning sets eval)."""
    patched = [m for m in model.modules() if layer_op(m) is not None]
    for m in patched:
        m.forward = opaque_forward(m)
    try:
        with modes_kept(model), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m in patched:
            del m.forward


def map_tensors(inputs: Inputs, fn) -> Inputs:
    """``inputs`` with ``fn`` applied to every tensor in it (tensors, tuples/lists, dicts)."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(v, fn) for v in inputs)
    return inputs


def first_sample(inputs: Inputs) -> Inputs:
    """The first sample of a batch (dim 0 of every tensor), as a batch of one."""
    return map_tensors(inputs, lambda t: t[:1])


def flat_outputs(out) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_outputs(o)]
    return []


def _requiring_grad(inputs: Inputs) -> Inputs:
    """Float inputs that require grad, so layers with frozen weights are traced too (cloned: not a
    leaf, so a model may still edit its input in place)."""
    return map_tensors(inputs, lambda t: t.detach().requires_grad_(True).clone() if t.is_floating_point() else t)


def build_graph(model: nn.Module, example_inputs: Inputs) -> tuple[tp.DependencyGraph, set[nn.Module]]:
    """Torch-pruning's dependency graph of ``model`` on one sample of ``example_inputs``, and the
    modules whose output tensor is itself a model output (torch-pruning adds no output node there)."""
    produced: dict[int, nn.Module] = {}
    outputs: set[nn.Module] = set()

    def record(module, inputs, out):
        if isinstance(out, torch.Tensor):
            produced[id(out)] = module

    def run(m, x):
        # Our own forward_fn: torch-pruning's default first tries model(*x), which for a single tensor
        # unpacks the batch, and for a batch of one silently traces an unbatched call.
        out = forward(m, x)
        outputs.update(produced[id(t)] for t in flat_outputs(out) if id(t) in produced)
        return out

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with _tracing(model):
            dg = tp.DependencyGraph().build_dependency(
                model, _requiring_grad(first_sample(example_inputs)), forward_fn=run,
                customized_pruners=_custom_pruners(model), verbose=False,
            )
    finally:
        for h in hooks:
            h.remove()
    return dg, outputs


def _resolve_names(model: nn.Module, layers: Iterable[str | nn.Module] | None) -> set[str]:
    names = {m: n for n, m in model.named_modules()}
    out = set()
    for layer in layers or ():
        if isinstance(layer, nn.Module):
            if layer not in names:
                raise ValueError(f"ignored layer {type(layer).__name__} is not a submodule of the model")
            out.add(names[layer])
        else:
            if layer not in dict(model.named_modules()):
                raise ValueError(f"ignored layer {layer!r} is not a submodule of the model")
            out.add(layer)
    return out


def _wrap_dim(d: int, ndim: int) -> int:
    d = d - 2**64 if d >= 2**63 else d  # autograd stores negative dims as unsigned
    return d + ndim if d < 0 else d


def _refusal(node, where: str) -> str | None:
    """Why an op node on a channel path makes the trace untrustworthy, or None."""
    op, grad_fn = node.module, node.grad_fn
    if isinstance(op, (tp_ops._SplitOp, tp_ops._UnbindOp)):
        return f"a split/chunk/unbind of the channel axis ({where})"
    if isinstance(op, tp_ops._SliceOp) and op.dim == 1:
        return f"a slice of the channel axis ({where})"
    name = grad_fn.name().lower() if grad_fn is not None and hasattr(grad_fn, "name") else "unknown"
    if isinstance(op, tp_ops._ConcatOp) and getattr(grad_fn, "_saved_dim", 1) != 1:
        return f"a concat along a non-channel axis ({where})"
    if not isinstance(op, tp_ops._ElementWiseOp) or not node.inputs:
        return None  # no inputs: an op on a weight (Linear's transpose), not on the data path
    if any(k in name for k in _MOVING_OPS):
        label = "a channel shuffle / transpose" if "transpose" in name or "permute" in name else "an op"
        return f"{label} {grad_fn.name()} ({where})"
    if name.removesuffix("backward0").removesuffix("backward1").rstrip("_") in _REDUCTIONS:
        dims = getattr(grad_fn, "_saved_dim", None)
        sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
        ndim = len(sizes) if sizes is not None else 4
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is None or 1 in {_wrap_dim(int(d), ndim) for d in dims}:
            return f"a reduction over channels {grad_fn.name()} ({where})"
    return None


def _convert(dg, tp_group, root: nn.Module, size: int, names: dict) -> tuple[list[Member], bool, str]:
    """Our members from a torch-pruning group rooted at ``root``, whether it reaches a model output,
    and why the trace cannot be trusted (empty if it can)."""
    per_member: dict[tuple[str, str], tuple[str, list[set[int]]]] = {}
    reaches_output = False
    root_name = names[root]
    refusal = ""
    for item in tp_group:
        dep, target = item.dep, item.dep.target.module
        where = f"{dep.source.name.split(' (')[0]} -> {dep.target.name.split(' (')[0]}"
        if isinstance(target, nn.Parameter):
            refusal = refusal or (f"a bare nn.Parameter ({dg._param_to_name.get(target, '?')}) sits on a channel "
                                  "path; the engine cannot prune it")
            continue
        if isinstance(target, tp_ops._OutputOp):
            reaches_output = True
            continue
        if target not in names or type(target).__module__.startswith("torch_pruning"):
            reason = _refusal(item.dep.target, where)
            refusal = refusal or (f"cannot prune through {reason}" if reason else "")
            continue
        if isinstance(target, _REFUSED_MODULES) or not (
            isinstance(target, (nn.modules.conv._ConvNd, nn.Linear, *PASS_THROUGH)) or layer_op(target) is not None
        ):
            refusal = refusal or (f"{names[target]} ({type(target).__name__}) sits on a channel path and the "
                                  "engine cannot prune it")
            continue
        passes = isinstance(target, PASS_THROUGH) or is_depthwise(target)
        kind = "out" if passes or dg.is_out_channel_pruning_fn(dep.handler) else "in"
        key = (names[target], kind)
        _, slots = per_member.setdefault(key, (type(target).__name__, [set() for _ in range(size)]))
        limit = dim_size(target, kind)
        for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
            if not 0 <= idx < limit or not 0 <= root_idx < size:
                raise PruningError(f"group {root_name}: traced index {idx} is outside {names[target]}'s "
                                   f"{kind} dim of {limit}; the trace cannot be trusted")
            slots[root_idx].add(int(idx))
    order = {n: i for i, n in enumerate(names.values())}
    keys = sorted(per_member, key=lambda k: (k != (root_name, "out"), order[k[0]], k[1]))
    members = [Member(name, kind, per_member[(name, kind)][0], tuple(tuple(sorted(s)) for s in per_member[(name, kind)][1]))
               for name, kind in keys]
    return members, reaches_output, refusal


def _not_prunable_reason(model, members, reaches_output, ignored: set[str], classifier: str | None) -> str:
    if reaches_output:
        return "its channels are a model output"
    for m in members:
        module = model.get_submodule(m.module)
        if m.kind == "out" and m.module in ignored:
            return f"{m.module} is ignored"
        if m.kind == "out" and m.module == classifier:
            return f"{m.module} is the classifier"
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module):
            return f"{m.module} is a grouped conv (groups={module.groups})"
    if not any(m.kind == "out" and is_mixer(model.get_submodule(m.module)) for m in members):
        return "its channels come from the model input"
    return ""


def trace_groups(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    probe: bool = True,
) -> list[ChannelGroup]:
    """Every set of coupled channels in ``model``, one :class:`ChannelGroup` each, in module order.

    A group's id is the qualified name of its root: the first layer in module order that produces its
    channels. Groups whose output channels must stay (the last Linear, ``ignored_layers``, anything
    that is a model output, grouped convs) are returned with ``prunable=False``.

    Args:
        model: the network; left unchanged (its train/eval flags included).
        example_inputs: a batch the model accepts (tensor, tuple of positional inputs, or dict).
        ignored_layers: modules or qualified names whose output channels must not be pruned.
        probe: also verify the trace by perturbing channels and watching where they arrive
            (a few cheap forward passes); turn off only for speed on models already checked.

    Raises:
        PruningError: the model contains an op or layer the trace cannot be trusted through.
        ValueError: an ignored layer is not part of the model.
    """
    ignored = _resolve_names(model, ignored_layers)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None
    dg, output_modules = build_graph(model, example_inputs)
    groups: dict[str, ChannelGroup] = {}
    unchecked: set[str] = set()  # groups the user keeps whole: not refused, not probed
    roots = (nn.modules.conv._ConvNd, nn.Linear, *{type(m) for m in names if layer_op(m) is not None})
    for tp_group in dg.get_all_groups(root_module_types=roots):
        outs = [it.dep.target.module for it in tp_group
                if it.dep.target.module in names and dg.is_out_channel_pruning_fn(it.dep.handler)
                and isinstance(it.dep.target.module, roots)]
        producers = [m for m in outs if is_mixer(m)] or outs
        root = min(producers, key=lambda m: order[names[m]])
        pruner = dg.get_pruner_of_module(root)
        size = dim_size(root, "out")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            regroup = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(size)))
        members, reaches_output, refusal = _convert(dg, regroup, root, size, names)
        reaches_output |= any(model.get_submodule(m.module) in output_modules for m in members if m.kind == "out")
        reason = _not_prunable_reason(model, members, reaches_output, ignored, classifier)
        user_ignored = any(m.kind == "out" and m.module in ignored for m in members)
        if refusal:
            if not user_ignored:
                raise PruningError(f"group {names[root]}: {refusal}; add its layers to ignored_layers to keep them")
            reason = f"{reason}; {refusal}"
        group = ChannelGroup(names[root], size, tuple(members), prunable=not reason, reason=reason,
                             reaches_output=reaches_output)
        if group.id not in groups:
            groups[group.id] = group
            if user_ignored:
                unchecked.add(group.id)
    result = sorted(groups.values(), key=lambda g: order[g.id])
    logger.debug("traced %d groups (%d prunable)", len(result), sum(g.prunable for g in result))
    if probe:
        from .check import probe_channel_flow

        probe_channel_flow(model, example_inputs, [g for g in result if g.id not in unchecked])
    return result
