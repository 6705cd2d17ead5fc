"""What each traced op did to the channel axis, and in which module it ran (used by ``trace.py``).

Torch-pruning sees an autograd graph: it knows an op's ``grad_fn`` but not the module that ran it,
the shapes of its operands, or which axis holds the channels (dim 1 for NCHW maps, the last dim
after a ``permute`` to channels-last or for ``(B, N, C)`` tokens). :class:`OpRecorder` watches the
tracing forward pass through a ``TorchFunctionMode`` and forward hooks and keeps, per ``grad_fn``, an
:class:`OpInfo`: the innermost module running, the function called, operand shapes, and the channel
axis of the result. A hand-written mode, because ``torch.fx`` would need the model to be symbolically
traceable, which user models with data-dependent control flow are not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .ops import observe

# functions whose result carries channels on dim 1 / on the last dim, whatever the input's layout
_AXIS_1 = ("conv", "batch_norm", "instance_norm", "group_norm", "prelu", "pixel_shuffle", "pixel_unshuffle",
           "max_pool", "avg_pool", "adaptive", "interpolate", "upsample")
_AXIS_LAST = ("linear", "layer_norm", "matmul")
_REDUCTIONS = ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "softmax", "log_softmax", "norm",
               "cumsum", "prod", "logsumexp", "argmax", "argmin")
_SPLITS = ("split", "chunk", "unbind", "tensor_split", "narrow", "select", "index_select", "take_along_dim")
_RESHAPES = ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")


@dataclass
class OpInfo:
    """One op of the tracing forward pass.

    Attributes:
        module: qualified name of the innermost module running it (``""``: the model's own forward).
        func: the function or method called, e.g. ``"split"``, ``"__getitem__"``, ``"mean"``.
        in_shapes: ``(grad_fn, shape)`` of every tensor operand.
        out_shape: shape of the result.
        axis: the result's channel axis, ``None`` when the op merged or split it.
        touches: the op cuts, reduces or reorders along the channel axis of its input (a split,
            a slice, a mean over channels, a gather).
    """

    module: str
    func: str
    in_shapes: list[tuple[Any, tuple[int, ...]]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    axis: int | None = 1
    touches: bool = False


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func)).lower().strip("_") if func is not None else "?"


def _dims(args: tuple, kwargs: dict, pos: int = 1) -> list[int] | None:
    d = kwargs.get("dim", kwargs.get("dims", args[pos] if len(args) > pos else None))
    if d is None:
        return None
    if isinstance(d, int):
        return [d]
    if isinstance(d, (tuple, list)) and all(isinstance(i, int) for i in d):
        return list(d)
    return None


def _index_touches(index: Any, ndim: int, axis: int) -> bool:
    """Does ``x[index]`` select along ``axis`` (anything but a full slice there)?"""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items):
        at = next(k for k, i in enumerate(items) if i is Ellipsis)
        items = items[:at] + [slice(None)] * (ndim - len(items) + 1) + items[at + 1:]
    items = [i for i in items if i is not None]  # None adds an axis; ignored in this simple reading
    if axis >= len(items):
        return False
    it = items[axis]
    return not (isinstance(it, slice) and it == slice(None))


def _reshaped_axis(shape_in: tuple[int, ...], shape_out: tuple[int, ...], axis: int) -> int | None:
    """Where ``axis`` of ``shape_in`` lands after a reshape to ``shape_out``, or None if it is split/merged."""
    before = math.prod(shape_in[:axis])
    prod = 1
    for k, size in enumerate(shape_out):
        if prod == before and size == shape_in[axis]:
            return k
        prod *= size
        if prod > before:
            return None
    return None


class OpRecorder(TorchFunctionMode):
    """Records an :class:`OpInfo` per ``grad_fn`` while active; see :func:`recording`."""

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[Any, OpInfo] = {}
        self.stack: list[str] = [""]

    def axis_of(self, t: Tensor) -> int | None:
        info = self.info.get(t.grad_fn) if t.grad_fn is not None else None
        return info.axis if info is not None else (1 if t.dim() > 1 else 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, Tensor)]
        if not outs or all(o.grad_fn is None or o.grad_fn in self.info for o in outs):
            return out
        ins = [a for a in args if isinstance(a, Tensor)] + [v for v in kwargs.values() if isinstance(v, Tensor)]
        name = _name(func)
        for o in outs:
            if o.grad_fn is None or o.grad_fn in self.info:
                continue
            info = OpInfo(self.stack[-1], name, [(t.grad_fn, tuple(t.shape)) for t in ins], tuple(o.shape))
            info.axis, info.touches = self._axis(name, args, kwargs, ins, o)
            self.info[o.grad_fn] = info
        return out

    def _axis(self, name: str, args: tuple, kwargs: dict, ins: list[Tensor], out: Tensor) -> tuple[int | None, bool]:
        """(channel axis of ``out``, whether the op cuts/reduces/reorders the input's channel axis)."""
        if name in _AXIS_LAST:
            return out.dim() - 1, False
        if any(k in name for k in _AXIS_1):  # a 1-d result (PReLU of a vector) has no channel axis
            return (1 if out.dim() > 1 else None), False
        if name == "cat" or name == "stack" or name == "concat":  # the tensors sit in a list, not in ``ins``
            seq = args[0] if args else kwargs.get("tensors", ())
            first = next((t for t in seq if isinstance(t, Tensor)), None)
            a = self.axis_of(first) if first is not None else 1
            if a is None or name != "stack":
                return a, False
            d = _dims(args, kwargs)  # stack inserts a new axis at dim: the channel axis moves up if it is at or after it
            d = d[0] % out.dim() if d else 0
            return (a + 1 if d <= a else a), False
        if not ins:
            return (1 if out.dim() > 1 else None), False
        x = ins[0]
        a = self.axis_of(x)
        if a is None:
            return None, False
        nd = x.dim()
        if name == "permute":
            dims = list(args[1:]) if len(args) > 2 else list(args[1] if len(args) > 1 else kwargs.get("dims", ()))
            dims = [d % nd for d in dims]
            return (dims.index(a) if a in dims else None), False
        if name in ("transpose", "swapaxes", "swapdims", "movedim", "moveaxis"):
            keys = (("dim0", "axis0", "source"), ("dim1", "axis1", "destination"))  # the dims may be keywords
            i, j = (args[1 + k] if len(args) > 1 + k else next((kwargs[n] for n in keys[k] if n in kwargs), 0)
                    for k in range(2))
            if name in ("movedim", "moveaxis"):  # source/destination: ints or sequences of ints
                src, dst = ([d % nd for d in ((d,) if isinstance(d, int) else d)] for d in (i, j))
                rest = iter(k for k in range(nd) if k not in src)
                order = dict(zip(dst, src, strict=True))
                return [order[k] if k in order else next(rest) for k in range(nd)].index(a), False
            i, j = i % nd, j % nd
            return (j if a == i else i if a == j else a), False
        if name in _RESHAPES or name == "contiguous":
            if tuple(x.shape) == tuple(out.shape):
                return a, False
            return _reshaped_axis(tuple(x.shape), tuple(out.shape), a), False
        if name == "getitem":
            return a, _index_touches(args[1] if len(args) > 1 else None, nd, a)
        if any(name.startswith(k) for k in _SPLITS) or name in ("gather", "scatter", "roll", "flip", "index_add"):
            dims = _dims(args, kwargs, 2 if name in ("split", "chunk", "tensor_split", "roll") else 1)
            on_axis = dims is None or a in [d % nd for d in dims]
            return a, on_axis
        if any(name == k or name.startswith(k + "_") for k in _REDUCTIONS):
            dims = _dims(args, kwargs)
            keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
            if dims is None:
                return None, True
            dims = [d % nd for d in dims]
            if a in dims:
                return (a if keep else None), True
            return (a if keep else a - sum(d < a for d in dims)), False
        # elementwise and the rest: the operand that has the result's rank gives the axis
        same = [t for t in ins if t.dim() == out.dim() and self.axis_of(t) is not None]
        if same:
            return self.axis_of(max(same, key=lambda t: t.numel())), False
        return (a + out.dim() - nd) if a is not None and out.dim() >= nd else a, False


def _pre(rec: OpRecorder, name: str):
    def hook(module: nn.Module, args: tuple) -> None:
        rec.stack.append(name)
    return hook


def _post(rec: OpRecorder):
    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        rec.stack.pop()
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if x is not None and isinstance(out, Tensor) and x.dim() > 1 and out.dim() > 1:
            observe(module, x.shape[1], out.shape[1])
        if isinstance(out, Tensor) and out.grad_fn is not None:
            info = rec.info.get(out.grad_fn)
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and info is not None:
                info.axis = out.dim() - 1
    return hook


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[OpRecorder]:
    """Record every op of the forward passes run inside the block (module stack from hooks)."""
    rec = OpRecorder()
    handles = []
    for name, m in model.named_modules():
        if m is model:
            continue
        handles.append(m.register_forward_pre_hook(_pre(rec, name)))
        handles.append(m.register_forward_hook(_post(rec), always_call=True))
    try:
        with rec:
            yield rec
    finally:
        for h in handles:
            h.remove()


def describe(info: OpInfo | None, model: nn.Module, fallback: str) -> str:
    """``"torch.split in block1 (Block)"``: an op and the module that ran it, for messages."""
    if info is None:
        return fallback
    where = info.module or ""
    owner = model.get_submodule(where) if where else model
    return f"{info.func} in {where or 'the model forward'} ({type(owner).__name__})"
