"""Replay the part of a network that a channel mask changes, from cached activations, for many masks at once.

Masking channel c of a group (``graph.masking``) zeroes the input slices of the group's consumers
(the convs, Linears and shortcuts that read it). Zeroing channel c of a consumer's *input* is the same
computation: a conv or Linear is linear in its input, and ``0 * w`` and ``w * 0`` are both zero. So the
network with channel c masked equals the network where, at every call of a consumer, channel c of the
call's input is zeroed, and nothing upstream of the first consumer call changes.

:class:`SuffixGraph` traces the model with ``torch.fx`` (convs, Linears, shortcuts and every group
member are leaves) and, per group, finds the *suffix*: every node reachable from a consumer call, in
graph order, plus the non-batch nodes it reads (shapes, attributes), which are recomputed. The
*frontier* is the set of batch tensors the suffix reads from outside itself. Run the whole graph once
(:class:`PrefixRun`), keep the frontier, then :meth:`SuffixGraph.run_suffix` evaluates B masked copies
in one forward: frontier tensors are repeated B times along the batch axis and, at each consumer call,
copy b has channel ``channels[b]`` of the input zeroed (a multiply by a 0/1 keep mask, which is exact).

Assumptions, checked where possible (:class:`FastPathUnavailable` otherwise, and CAR falls back to one
full evaluation per channel): the model takes one tensor and returns one tensor; it is fx-traceable;
samples are independent in eval mode (batch axis 0); parameters are read only through module calls;
an in-place op's input has no later reader.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..graph.groups import ChannelGroup

logger = logging.getLogger(__name__)

_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.iand, operator.ior}


class FastPathUnavailable(RuntimeError):
    """The model cannot be replayed from cached activations; score with full evaluations instead."""


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


@dataclass
class SuffixPlan:
    """What one group's masks change.

    Attributes:
        nodes: the suffix, in graph order (the output node excluded).
        frontier: batch tensors the suffix reads from the prefix (cached once, repeated per copy).
        zero: per consumer call, ``(channel axis, index lists per group channel)``.
        last: the node index up to which the prefix must have run to provide the frontier.
        modules: qualified names of the modules called in the suffix (for cost accounting).
        reaches_output: ``False`` if no mask of this group changes the output.
        free_after: for each suffix position, the values no longer needed after it.
    """

    nodes: list[fx.Node]
    frontier: list[fx.Node]
    zero: dict[fx.Node, tuple[int, tuple[tuple[int, ...], ...]]]
    last: int
    modules: set[str]
    reaches_output: bool
    free_after: list[list[fx.Node]] = field(default_factory=list)


def _inplace(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.kwargs.get("inplace") is True or node.target in _INPLACE_OPERATORS
                or (name.endswith("_") and not name.startswith("_")))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    return False


class SuffixGraph:
    """An fx trace of ``model`` that runs prefixes over a data set and masked suffixes in batches.

    Args:
        model: the network (eval mode while running); its modules are called directly, so masks
            applied to it (``graph.masking``) are seen.
        groups: the channel groups whose consumers become leaves and get plans.
        probe: one batch of inputs: the trace is checked against ``model(probe)`` and used to find
            which nodes carry the batch axis.

    Raises:
        FastPathUnavailable: the model cannot be traced or replayed (see the module docstring).
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], probe: Tensor) -> None:
        self.model = model
        leaves = {m.module for g in groups for m in g.members}
        try:
            graph = _Tracer(leaves).trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means "use the slow path"
            raise FastPathUnavailable(f"torch.fx cannot trace {type(model).__name__}: {e}") from None
        self.nodes = list(graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise FastPathUnavailable(f"the model takes {len(inputs)} inputs; the fast path needs exactly one")
        self.input = inputs[0]
        self.output = self.nodes[-1]
        if not isinstance(self.output.args[0], fx.Node):
            raise FastPathUnavailable("the model must return one tensor")
        self.calls: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op == "call_module":
                self.calls.setdefault(n.target, []).append(n)
        self.depends = self._depends_on_input()
        for n in self.nodes:
            if _inplace(model, n) and n.args and isinstance(n.args[0], fx.Node):
                later = [u for u in n.args[0].users if self.index[u] > self.index[n]]
                if later:
                    raise FastPathUnavailable(f"in-place op {n.name} mutates a value read later by {later[0].name}")
        self.batch = self._probe(probe)

    # ---- analysis -------------------------------------------------------------------------------

    def _depends_on_input(self) -> set[fx.Node]:
        dep = {self.input}
        for n in self.nodes:
            if any(a in dep for a in n.all_input_nodes):
                dep.add(n)
        return dep

    def _probe(self, x: Tensor) -> set[fx.Node]:
        """Run the graph once; return the nodes whose value is a tensor with the batch axis."""
        env = {self.input: x}
        for n in self.nodes[1:-1]:
            env[n] = self._exec(n, env)
        out = env[self.output.args[0]]
        ref = self.model(x)
        if not isinstance(out, Tensor) or not isinstance(ref, Tensor) or out.shape != ref.shape:
            raise FastPathUnavailable("the traced graph does not return the model's output tensor")
        if not torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * (1 + float(ref.abs().max()))):
            raise FastPathUnavailable("the traced graph disagrees with the model (data-dependent control flow?)")
        n0 = x.shape[0]
        return {n for n, v in env.items() if n in self.depends and isinstance(v, Tensor) and v.dim() > 0
                and v.shape[0] == n0}

    def plan(self, group: ChannelGroup) -> SuffixPlan:
        """The suffix, frontier and consumer zeroing of ``group``.

        Raises:
            FastPathUnavailable: a consumer of the group is not called in the traced graph.
        """
        zero: dict[fx.Node, tuple[int, tuple[tuple[int, ...], ...]]] = {}
        for member in group.members:
            if member.kind != "in":
                continue
            calls = self.calls.get(member.module)
            if not calls:
                raise FastPathUnavailable(f"consumer {member.module} of group {group.id} is not called in the trace")
            module = self.model.get_submodule(member.module)
            axis = -1 if isinstance(module, nn.Linear) else 1
            for node in calls:
                if not node.args or not isinstance(node.args[0], fx.Node):
                    raise FastPathUnavailable(f"consumer call {node.name} has no tensor input")
                if node in zero:  # two members on one module: merge their index lists per channel
                    prev = zero[node][1]
                    idxs = tuple(a + b for a, b in zip(prev, member.idxs, strict=True))
                else:
                    idxs = member.idxs
                zero[node] = (axis, idxs)
        affected = set(zero)
        for n in self.nodes:
            if n not in affected and any(a in affected for a in n.all_input_nodes):
                affected.add(n)
        reaches = self.output in affected
        affected.discard(self.output)
        # non-batch values the suffix reads (shapes, attributes, constants) are recomputed inside it
        suffix = set(affected)
        todo = list(affected)
        while todo:
            for a in todo.pop().all_input_nodes:
                if a not in suffix and a not in self.batch:
                    suffix.add(a)
                    todo.append(a)
        nodes = sorted(suffix, key=self.index.__getitem__)
        frontier = sorted({a for n in nodes for a in n.all_input_nodes if a not in suffix},
                          key=self.index.__getitem__)
        plan = SuffixPlan(
            nodes=nodes, frontier=frontier, zero=zero,
            last=max((self.index[f] for f in frontier), default=0),
            modules={n.target for n in affected if n.op == "call_module"}, reaches_output=reaches,
        )
        plan.free_after = self._free_schedule(plan)
        return plan

    def _free_schedule(self, plan: SuffixPlan) -> list[list[fx.Node]]:
        """For each suffix position, the values read there for the last time (the result excepted)."""
        last_use: dict[fx.Node, int] = {}
        for i, n in enumerate(plan.nodes):
            for a in n.all_input_nodes:
                last_use[a] = i
        out: list[list[fx.Node]] = [[] for _ in plan.nodes]
        for a, i in last_use.items():
            if a is not self.output.args[0]:
                out[i].append(a)
        return out

    # ---- execution ------------------------------------------------------------------------------

    def _exec(self, node: fx.Node, env: dict[fx.Node, object]) -> object:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_module":
            return self.model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        if node.op == "get_attr":
            obj: object = self.model
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise FastPathUnavailable(f"unexpected node {node.op} {node.name}")

    def run_suffix(self, plan: SuffixPlan, frontier: dict[fx.Node, Tensor],
                   channels: Sequence[int | None]) -> Tensor:
        """The model output for ``len(channels)`` copies of a cached batch, copy b with group channel
        ``channels[b]`` masked (``None``: nothing masked beyond the model's current masks).

        Args:
            plan: the group's :meth:`plan`.
            frontier: the plan's frontier values for one batch of n samples (from :class:`PrefixRun`).
            channels: one group channel (or ``None``) per copy.

        Returns:
            ``(B * n, ...)``: the outputs of copy b are rows ``b * n`` to ``(b + 1) * n``.
        """
        copies = len(channels)
        env: dict[fx.Node, object] = {}

        def value(a: fx.Node) -> object:
            if a not in env and a in frontier:  # a cached tensor, repeated once per copy on first use
                t = frontier[a]
                env[a] = t.repeat(copies, *([1] * (t.dim() - 1)))
            return env[a]

        for i, node in enumerate(plan.nodes):
            zero = plan.zero.get(node)
            src = node.args[0] if zero is not None else None
            for a in node.all_input_nodes:
                if a is not src:
                    value(a)
            if zero is None:
                env[node] = self._exec(node, env)
            else:
                axis, idxs = zero
                if src in env:
                    x = env[src].reshape(copies, -1, *env[src].shape[1:])  # (B, n, ...)
                else:  # straight from the cache: broadcast and mask in one pass
                    x = frontier[src].unsqueeze(0)  # (1, n, ...)
                x = x * _keep(x, axis, idxs, channels)  # (B, n, ...), copy b without channels[b]
                env[node] = self._exec(node, {**env, src: x.reshape(-1, *x.shape[2:])})
            for a in plan.free_after[i]:
                env.pop(a, None)
        out = value(self.output.args[0])
        if not isinstance(out, Tensor):
            raise FastPathUnavailable("suffix did not produce the output tensor")
        return out


def _keep(x: Tensor, axis: int, idxs: tuple[tuple[int, ...], ...], channels: Sequence[int | None]) -> Tensor:
    """A 0/1 mask broadcastable to ``x`` ``(B or 1, n, ...)``: copy b zeroes ``idxs[channels[b]]`` on ``axis``."""
    dim = axis + 1 if axis >= 0 else x.dim() + axis  # the axis in the (B, n, ...) view
    shape = [1] * x.dim()
    shape[0], shape[dim] = len(channels), x.shape[dim]
    keep = torch.ones(len(channels), x.shape[dim], dtype=x.dtype, device=x.device)
    for b, c in enumerate(channels):
        if c is not None and idxs[c]:
            keep[b, list(idxs[c])] = 0
    return keep.view(shape)


class PrefixRun:
    """The whole graph run over a list of batches, node by node, keeping only what is still needed.

    :meth:`advance` runs every batch up to a node index; :meth:`values` reads a plan's frontier;
    :meth:`release` drops values that neither the remaining graph nor the ``keep`` nodes need.

    Args:
        graph: the traced model.
        xs: the input batches.
        keep: nodes to keep (the frontiers still to be read); values read by a later in-place op are
            cloned first so that the kept copy is the one the suffix expects.
    """

    def __init__(self, graph: SuffixGraph, xs: Sequence[Tensor], keep: set[fx.Node]) -> None:
        self.graph = graph
        self.envs: list[dict[fx.Node, object]] = [{graph.input: x} for x in xs]
        self.next = 1  # node index to run next (0 is the input)
        self.keep = set(keep)

    def advance(self, last: int) -> None:
        """Run nodes up to index ``last`` (the output node's argument at most) on every batch."""
        g = self.graph
        stop = min(last, len(g.nodes) - 2)
        for i in range(self.next, stop + 1):
            node = g.nodes[i]
            clone = _inplace(g.model, node) and node.args and node.args[0] in self.keep
            for env in self.envs:
                if clone:
                    local = dict(env)
                    local[node.args[0]] = env[node.args[0]].clone()
                    env[node] = g._exec(node, local)
                else:
                    env[node] = g._exec(node, env)
        self.next = max(self.next, stop + 1)

    def values(self, nodes: Sequence[fx.Node]) -> list[dict[fx.Node, Tensor]]:
        """Per batch, the values of ``nodes`` (which must have run)."""
        return [{n: env[n] for n in nodes} for env in self.envs]

    def output(self) -> list[Tensor]:
        """Per batch, the model output (runs the rest of the graph)."""
        self.advance(len(self.graph.nodes))
        return [env[self.graph.output.args[0]] for env in self.envs]

    def release(self, keep: set[fx.Node]) -> None:
        """Forget values that no unrun node reads and that are not in ``keep``."""
        self.keep = set(keep)
        g = self.graph
        result = g.output.args[0]
        for env in self.envs:
            for n in list(env):
                if n is result or n in self.keep:
                    continue
                if all(g.index[u] < self.next for u in n.users if u is not g.output):
                    del env[n]
