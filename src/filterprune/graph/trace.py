"""Channel groups of a model: an adapter over torch-pruning's ``DependencyGraph`` (pinned 1.6.1).

Torch-pruning traces the autograd graph of one forward pass and propagates "remove channel c of this
conv" to every coupled layer. We use only that propagation (built in ``_tpgraph.py``); scoring,
selection, masking and surgery are ours. No torch-pruning type leaves ``graph/``: each of its groups
becomes a :class:`ChannelGroup`.

What the engine does with what it finds on a group's channel path:

* **pruned**: conv (any ``groups``: a grouped conv ties the channels at the same position in every
  conv group, so each group loses the same number), Linear (also on channels-last or token
  tensors), BatchNorm/InstanceNorm, ``PReLU(C)``, ``nn.PixelShuffle``/``PixelUnshuffle`` (blocks of
  r² channels go together), residual adds, concat, flatten into a Linear, SE-style gates, permutes
  that only move the channel axis, registered layer ops (:mod:`filterprune.graph.ops`);
* **passed through untouched**: activations, pooling, ``PReLU()`` with one shared slope, a
  one-channel map broadcast over all channels (spatial attention);
* **kept whole** (the group is not prunable, the reason names the op and its module): ops whose
  result depends on the number or position of channels: split/chunk/unbind/slices of the channel
  axis (their sizes are fixed in the model's code), reductions over channels (``x.mean(1)``),
  LayerNorm and GroupNorm over the channels, concat along another axis, a functional pixel shuffle;
* **refused** (:class:`PruningError`): ops that move channels in ways the trace cannot follow (a
  channel shuffle's view/transpose, gather/index, matmul on the channel axis), bare
  ``nn.Parameter``s and modules the engine cannot resize on a channel path. The message names the
  op and its module and gives the ``ignored_layers`` entry that keeps those channels whole.

A channel-flow probe (:func:`filterprune.graph.probe.probe_channel_flow`) then verifies every
prunable group by perturbation.

>>> from filterprune.models import create_model
>>> groups = trace_groups(create_model("resnet20"), torch.randn(1, 3, 32, 32))
>>> [g.id for g in groups][:3], groups[0].size
(['conv1', 'layer1.0.conv1', 'layer1.1.conv1'], 16)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

from torch import nn
from torch_pruning import ops as tp_ops

from ..errors import PruningError
from ._record import OpRecorder, describe
from ._ties import merge_coupled, tie_channels
from ._tpgraph import Inputs, build_graph, first_sample, flat_outputs, forward, map_tensors
from .groups import ChannelGroup, Member
from .ops import layer_op
from .probe import probe_channel_flow
from .surgery import PASS_THROUGH, dim_size, is_depthwise, is_mixer

__all__ = ["PASS_THROUGH", "Inputs", "first_sample", "flat_outputs", "forward", "is_mixer", "map_tensors",
           "trace_groups"]

logger = logging.getLogger(__name__)

_UNRESIZABLE = (nn.MultiheadAttention, nn.RNNBase, nn.Embedding)
# grad_fn names (lower case) of ops that move channels or that we cannot follow.
_MIXING_OPS = ("unknown", "bmm", "matmul", "einsum", "mm")  # refused wherever they act
_MOVING_OPS = ("index", "gather", "scatter", "roll", "flip")  # refused on the channel axis (when recorded)
_OWN_OPS = (nn.Linear, nn.modules.conv._ConvNd)
_REGROUPING_OPS = ("pixelshuffle", "pixelunshuffle", "channelshuffle", "nativechannelshuffle")
_REDUCTIONS = ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "softmax", "logsoftmax",
               "norm", "cumsum", "prod", "logsumexp")


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


def _op_issue(node, rec: OpRecorder, model: nn.Module) -> tuple[str, str] | None:
    """``("keep" | "refuse", why)`` for an op node on a channel path, or None if it is harmless."""
    op, grad_fn = node.module, node.grad_fn
    info = rec.info.get(grad_fn) if grad_fn is not None else None
    name = grad_fn.name().lower() if grad_fn is not None and hasattr(grad_fn, "name") else "unknown"
    where = describe(info, model, f"{grad_fn.name() if grad_fn is not None else 'an op'}")
    if isinstance(op, (tp_ops._SplitOp, tp_ops._UnbindOp, tp_ops._SliceOp)):
        if info is not None and not info.touches:
            if isinstance(op, tp_ops._SliceOp):
                return None  # a slice of a spatial axis
            return "keep", f"{where} splits another axis, which the tracer maps as channels"
        return "keep", f"{where} cuts the channel axis into pieces of fixed size"
    if isinstance(op, tp_ops._ConcatOp):
        dim = getattr(grad_fn, "_saved_dim", 1)
        axis = info.axis if info is not None and info.axis is not None else 1
        ndim = len(info.out_shape) if info is not None else 4
        return None if _wrap_dim(int(dim), ndim) == axis else ("keep", f"{where} concatenates along a non-channel axis")
    if isinstance(op, tp_ops._ReshapeOp):
        if info is not None and info.axis is None and len(info.out_shape) != 2:
            return "refuse", f"{where} reshapes the channel axis (a channel shuffle?)"
        return None
    if not isinstance(op, tp_ops._ElementWiseOp) or not node.inputs:
        return None  # no inputs: an op on a weight (Linear's transpose), not on the data path
    if info is None and node.outputs and all(isinstance(o.module, _OWN_OPS) for o in node.outputs):
        return None  # a Linear's own matmul/reshape on a (B, ..., C) input
    base = name.removesuffix("backward0").removesuffix("backward1").rstrip("_")
    if "transpose" in name or "permute" in name:
        if info is not None and info.axis is not None:
            return None  # moves the channel axis (to channels-last and back): indices unchanged
        return "refuse", f"{where} transposes the channel axis into another one (a channel shuffle?)"
    if any(k in base for k in _REGROUPING_OPS):
        return "keep", f"{where} regroups channels (use nn.PixelShuffle to prune through a pixel shuffle)"
    if base in _REDUCTIONS:
        if info is not None:
            return ("keep", f"{where} reduces over the channels") if info.touches else None
        dims = getattr(grad_fn, "_saved_dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is None or 1 in {_wrap_dim(int(d), 4) for d in dims}:
            return "keep", f"{where} reduces over the channels"
        return None
    moving = any(k in base for k in _MIXING_OPS) or (
        info.touches if info is not None else any(k in base for k in _MOVING_OPS))
    if moving:
        return "refuse", f"{where} moves or selects channels in a way the trace cannot follow"
    return None


def _module_issue(target: nn.Module, name: str) -> tuple[str, str] | None:
    kind = type(target).__name__
    if isinstance(target, nn.LayerNorm):
        return "keep", f"{name} (LayerNorm) normalizes over the channels"
    if isinstance(target, nn.GroupNorm):
        return "keep", f"{name} (GroupNorm) normalizes over groups of channels"
    if isinstance(target, _UNRESIZABLE) or not (
        isinstance(target, (nn.modules.conv._ConvNd, nn.Linear, *PASS_THROUGH)) or layer_op(target) is not None
    ):
        return "refuse", (f"{name} ({kind}) sits on a channel path and the engine cannot resize it "
                          f"(register a LayerOp for {kind} with fp.register_layer_op)")
    return None


def _convert(dg, rec, model, tp_group, root: nn.Module, size: int, names: dict):
    """Our members from a torch-pruning group rooted at ``root``, whether it reaches a model output,
    and the issues found on its path: ``(members, reaches_output, keep_reasons, refusals)``."""
    per_member: dict[tuple[str, str], tuple[str, list[set[int]]]] = {}
    reaches_output = False
    keep: list[str] = []
    refuse: list[str] = []
    out_of_range: list[str] = []
    for item in tp_group:
        dep, target = item.dep, item.dep.target.module
        if isinstance(target, nn.Parameter):
            pname = dg._param_to_name.get(target, "?")
            owner = pname.rpartition(".")[0]
            kind = type(model.get_submodule(owner)).__name__ if owner else type(model).__name__
            refuse.append(f"{kind} {owner or 'model'} computes with its own nn.Parameter {pname!r} on a channel "
                          f"path (register a LayerOp for {kind} with fp.register_layer_op)")
            continue
        if isinstance(target, tp_ops._OutputOp):
            reaches_output = True
            continue
        if target not in names or type(target).__module__.startswith("torch_pruning"):
            issue = _op_issue(dep.target, rec, model)
            if issue is not None:
                (keep if issue[0] == "keep" else refuse).append(issue[1])
            continue
        if isinstance(target, nn.PReLU) and target.num_parameters == 1:
            continue  # one slope shared by every channel: nothing of its own to resize
        issue = _module_issue(target, names[target])
        if issue is not None:
            (keep if issue[0] == "keep" else refuse).append(issue[1])
            continue
        passes = isinstance(target, PASS_THROUGH) or is_depthwise(target)
        kind = "out" if passes or dg.is_out_channel_pruning_fn(dep.handler) else "in"
        key = (names[target], kind)
        _, slots = per_member.setdefault(key, (type(target).__name__, [set() for _ in range(size)]))
        limit = dim_size(target, kind)
        for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
            if not 0 <= idx < limit or not 0 <= root_idx < size:
                out_of_range.append(f"the trace maps channel {root_idx} to index {idx} of {names[target]} "
                                    f"({type(target).__name__}, {kind} width {limit})")
                break
            slots[root_idx].add(int(idx))
    if not keep:
        refuse += out_of_range[:1]
    order = {n: i for i, n in enumerate(names.values())}
    root_name = names[root]
    keys = sorted(per_member, key=lambda k: (k != (root_name, "out"), order[k[0]], k[1]))
    members = [Member(name, kind, per_member[(name, kind)][0], tuple(tuple(sorted(s)) for s in per_member[(name, kind)][1]))
               for name, kind in keys]
    return members, reaches_output, keep, refuse


def _not_prunable_reason(model, members, reaches_output, ignored: set[str], classifier: str | None) -> str:
    if reaches_output:
        return "its channels are a model output"
    for m in members:
        if m.kind == "out" and m.module in ignored:
            return f"{m.module} is ignored"
        if m.kind == "out" and m.module == classifier:
            return f"{m.module} is the classifier"
    if not any(m.kind == "out" and is_mixer(model.get_submodule(m.module)) for m in members):
        return "its channels come from the model input"
    return ""


def _refusal_message(refused: list[tuple[str, str]]) -> str:
    """One line: the first reason, and the ``ignored_layers`` entry for every refused group."""
    gid, why = refused[0]
    roots = sorted({g for g, _ in refused})
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return (f"group {gid}: cannot prune through {why}{more}; to keep these channels whole pass "
            f"ignored_layers={roots!r}")


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
    that is a model output, channels an op needs whole) are returned with ``prunable=False`` and a
    ``reason``.

    Args:
        model: the network; left unchanged (its train/eval flags included).
        example_inputs: a batch the model accepts (tensor, tuple of positional inputs, or dict of
            keyword inputs).
        ignored_layers: modules or qualified names whose output channels must not be pruned.
        probe: also verify the trace by perturbing channels and watching where they arrive
            (a few cheap forward passes); turn off only for speed on models already checked.

    Raises:
        PruningError: an op or layer on a channel path that the trace cannot be trusted through; the
            message names it and the ``ignored_layers`` entry that keeps those channels whole.
        ValueError: an ignored layer is not part of the model.
    """
    ignored = _resolve_names(model, ignored_layers)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None
    dg, output_modules, rec = build_graph(model, example_inputs)
    groups: dict[str, ChannelGroup] = {}
    refused: list[tuple[str, str]] = []
    roots = (nn.modules.conv._ConvNd, nn.Linear, *{type(m) for m in names if layer_op(m) is not None})
    try:
        tp_groups = list(dg.get_all_groups(root_module_types=roots))
    except (IndexError, KeyError, TypeError) as e:  # torch-pruning's own index mapping failed
        raise PruningError(f"the dependency tracer (torch-pruning) failed on this model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); chained splits of the channel axis "
                           "are a known cause") from None
    for tp_group in tp_groups:
        outs = [it.dep.target.module for it in tp_group
                if it.dep.target.module in names and dg.is_out_channel_pruning_fn(it.dep.handler)
                and isinstance(it.dep.target.module, roots)]
        producers = [m for m in outs if is_mixer(m)] or outs
        root = min(producers, key=lambda m: order[names[m]])
        if names[root] in groups:
            continue
        pruner = dg.get_pruner_of_module(root)
        size = dim_size(root, "out")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            regroup = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(size)))
        members, reaches_output, keep, refuse = _convert(dg, rec, model, regroup, root, size, names)
        reaches_output |= any(model.get_submodule(m.module) in output_modules for m in members if m.kind == "out")
        reason = _not_prunable_reason(model, members, reaches_output, ignored, classifier)
        user_ignored = any(m.kind == "out" and m.module in ignored for m in members) or names[root] in ignored
        group = ChannelGroup(names[root], size, tuple(members), reaches_output=reaches_output)
        if refuse and not user_ignored:
            refused.append((names[root], refuse[0]))
        elif refuse or keep:
            reason = "; ".join(([reason] if reason else []) + (refuse or keep)[:1])
        groups[group.id] = ChannelGroup(group.id, group.size, group.members, prunable=not reason, reason=reason,
                                        reaches_output=reaches_output)
    if refused:
        raise PruningError(_refusal_message(refused))
    pairs = merge_coupled(model, groups)
    for gid, group in list(groups.items()):
        if group.prunable:
            tied, why = tie_channels(model, group, pairs.get(gid, ()))
            groups[gid] = tied if not why else ChannelGroup(gid, group.size, group.members, False, why,
                                                           group.reaches_output)
    result = sorted(groups.values(), key=lambda g: order[g.id])
    logger.debug("traced %d groups (%d prunable)", len(result), sum(g.prunable for g in result))
    if probe:
        probe_channel_flow(model, example_inputs, [g for g in result if g.prunable])
    return result
