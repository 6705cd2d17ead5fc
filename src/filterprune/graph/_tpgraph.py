"""Building torch-pruning's ``DependencyGraph`` (pinned 1.6.1) for ``trace.py``; no tp type leaves ``graph/``.

What we add to torch-pruning's trace:

* our own ``forward_fn`` (tensor, tuple of positional inputs, or dict of keyword inputs);
* registered layer ops (:mod:`filterprune.graph.ops`) as tp "customized pruners", run as one opaque
  autograd node each;
* an :class:`~filterprune.graph._record.OpRecorder` over the same forward pass (module, shapes and
  channel axis of every op);
* broadcast operands cut out of the graph: in ``x * sigmoid(conv_to_1(x))`` the one-channel map is
  spread over every channel of ``x``, it is not channel ``c`` of anything, so the elementwise op must
  not tie its single channel to ``x``'s channels (torch-pruning ties them index by index).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.pruner.function import BasePruningFunc

from ..utils.modes import modes_kept
from ._record import OpRecorder, recording
from .ops import LayerOp, layer_op, opaque_forward

Inputs = torch.Tensor | tuple | list | dict


def forward(model: nn.Module, inputs: Inputs):
    """Call ``model`` on a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


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


class _Widthless(BasePruningFunc):
    """PReLU as a pass-through layer of the width it had in the traced forward pass: for ``PReLU()``
    (one shared slope) torch-pruning would report 1 and map a following flatten wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: dict[nn.Module, int] = {}

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer)

    get_in_channels = get_out_channels


class _Graph(tp.DependencyGraph):
    """Torch-pruning's graph, minus the edges of operands broadcast over the channel axis."""

    recorder: OpRecorder | None = None

    def _build_dependency(self, module2node):
        if self.recorder is not None:
            for node in list(module2node.values()):
                self._cut_broadcasts(node)
        return super()._build_dependency(module2node)

    def unmap_slices(self) -> None:
        """Slices, splits and unbinds map indices one to one, within the cut tensor's width (their groups
        are kept whole anyway): torch-pruning's offset mapping through a slice inside a residual loop
        grows the indices without end (its group search never terminates), and through chained
        uneven splits it indexes past its offsets list (IndexError)."""
        for node in self.module2node.values():
            if isinstance(node.module, (tp_ops._SliceOp, tp_ops._SplitOp, tp_ops._UnbindOp)):
                info = self.recorder.info.get(node.grad_fn) if self.recorder is not None else None
                shape = info.in_shapes[0][1] if info is not None and info.in_shapes else ()
                limit = max(shape) if shape else 0
                for dep in node.dependencies + [d for n in node.inputs + node.outputs for d in n.dependencies
                                                if d.target is node]:
                    dep.index_mapping = [_Within(limit), None]


    def _cut_broadcasts(self, node) -> None:
        info = self.recorder.info.get(node.grad_fn) if node.grad_fn is not None else None
        if info is None or len(info.in_shapes) < 2 or info.axis is None or not info.out_shape:
            return
        width = info.out_shape[info.axis]
        if width <= 1:
            return
        shapes = {id(g): s for g, s in info.in_shapes if g is not None}
        for src in list(node.inputs):
            shape = shapes.get(id(src.grad_fn))
            if shape is None:
                continue
            axis = info.axis - (len(info.out_shape) - len(shape))
            if axis < 0 or shape[axis] == 1:  # spread over every channel: no channel of its own here
                node.inputs.remove(src)
                if node in src.outputs:
                    src.outputs.remove(node)


class _Within:
    """Index mapping that keeps the indices in ``[0, limit)`` unchanged and drops the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, idxs):
        return [i for i in idxs if 0 <= i.idx < self.limit]


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


def build_graph(model: nn.Module, example_inputs: Inputs) -> tuple[tp.DependencyGraph, set[nn.Module], OpRecorder]:
    """Torch-pruning's dependency graph of ``model`` on one sample of ``example_inputs``, the modules
    whose output tensor is itself a model output (torch-pruning adds no output node there), and the
    record of every op of the traced forward pass."""
    produced: dict[int, nn.Module] = {}
    alive: list[torch.Tensor] = []  # every hooked output held until the trace ends: an id is never reused
    outputs: set[nn.Module] = set()

    def run(m, x):
        # Our own forward_fn: torch-pruning's default first tries model(*x), which for a single tensor
        # unpacks the batch, and for a batch of one silently traces an unbatched call.
        out = forward(m, x)
        outputs.update(produced[id(t)] for t in flat_outputs(out) if id(t) in produced)
        return out

    pruners: dict = {type(m): _OpPruner(op) for m in model.modules() if (op := layer_op(m)) is not None}
    widthless = _Widthless()
    pruners[nn.PReLU] = widthless  # (torch-pruning 1.6.1 cannot key a pruner by instance)

    def record(module, inputs, out):
        if isinstance(out, torch.Tensor):
            produced[id(out)] = module
            alive.append(out)  # else a freed output's id can come back as the model's output's (found: ~1 run in 15)
            if isinstance(module, nn.PReLU):
                widthless.widths[module] = int(out.shape[1]) if out.dim() > 1 else 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with _tracing(model), recording(model) as rec:
            dg = _Graph()
            dg.recorder = rec
            dg.build_dependency(model, _requiring_grad(first_sample(example_inputs)), forward_fn=run,
                                customized_pruners=pruners, verbose=False)
            dg.unmap_slices()
    finally:
        for h in hooks:
            h.remove()
    return dg, outputs, rec
