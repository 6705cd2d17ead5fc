"""MACs and parameter counts from one forward pass: the single counter every method is reported with.

What is counted (the convention of the pruning papers, e.g. ResNet-20 on CIFAR = 40.55M MACs):

* Conv (1/2/3-d, any ``groups``): ``C_out * prod(out spatial) * (C_in / groups) * prod(kernel)`` per
  sample. Transposed conv: ``C_in * prod(in spatial) * (C_out / groups) * prod(kernel)``.
* Linear: ``out_features * in_features`` per output row (per sample for a 2-D input).
* Not counted: biases (an add, not a multiply-accumulate), BatchNorm, activations, pooling, the
  residual add, PadShortcut, softmax. Together they are well under 1% of a CIFAR ResNet's MACs.
* FLOPs = 2 x MACs; this module only speaks MACs.

MACs are per sample: the batch's MACs divided by the batch size (dim 0 of the first input tensor).
Per layer (:func:`layer_table`) they are collected with forward hooks on leaf modules. The total of
:func:`count` is what torch actually executes: the same forward pass runs under a
``TorchFunctionMode`` that counts every convolution, ``linear`` and matmul call (:class:`_Executed`),
so compute done with functional calls inside a module's ``forward`` (``F.conv2d`` on the module's own
kernels, ``x @ w``) is counted too, and a pruning target in MACs is met on the real network. The
larger of the two totals is returned (they agree on every model made of modules; the tests check both
against ``torch.utils.flop_counter.FlopCounterMode``, which is not used here because entering it
imports ``torch._dynamo``, several seconds per process). A module called twice is counted twice.

Params are every parameter of the model, trainable or frozen, counted once even when shared.
Buffers (BN running statistics, PadShortcut's index) are not parameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, TypedDict

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..utils.modes import evaluating

logger = logging.getLogger(__name__)

__all__ = ["LayerRow", "count", "count_params", "layer_table"]


#: One leaf module in a :func:`layer_table`. ``in``/``out``: channels for conv and norm layers,
#: features for Linear, else dim 1 of the first input / the output. ``macs`` per sample; ``params``:
#: the module's own parameters.
LayerRow = TypedDict("LayerRow", {"name": str, "type": str, "in": int, "out": int, "macs": int, "params": int})

# rule(module, first input, output) -> MACs of the whole batch
MacRule = Callable[[nn.Module, Tensor, Tensor], int]
_MAC_RULES: dict[type, MacRule] = {}


def register_mac_rule(*module_types: type) -> Callable[[MacRule], MacRule]:
    """Register how to count the MACs of ``module_types`` (subclasses included)."""

    def decorator(fn: MacRule) -> MacRule:
        for t in module_types:
            _MAC_RULES[t] = fn
        return fn

    return decorator


@register_mac_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_macs(m: nn.Module, x: Tensor, y: Tensor) -> int:
    # every output element: (C_in / groups) * prod(kernel) multiply-accumulates
    return y.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)


@register_mac_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose_macs(m: nn.Module, x: Tensor, y: Tensor) -> int:
    # every input element is scattered into (C_out / groups) * prod(kernel) outputs
    return x.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


@register_mac_rule(nn.Linear)
def _linear_macs(m: nn.Module, x: Tensor, y: Tensor) -> int:
    return y.numel() * m.in_features  # (..., out) outputs, in_features MACs each


def _rule(module: nn.Module) -> MacRule | None:
    for klass in type(module).__mro__:
        if klass in _MAC_RULES:
            return _MAC_RULES[klass]
    return None


def _width(module: nn.Module, t: Tensor, side: str) -> int:
    for attr in (f"{side}_channels", f"{side}_features", "num_features", "num_channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
    return int(t.shape[1]) if t.dim() > 1 else int(t.shape[-1]) if t.dim() else 1


class _Executed(TorchFunctionMode):
    """MACs of every convolution, linear and matmul call made while active (whole batch).

    Function-level, so a module's own ``F.conv2d``/``F.linear`` is seen once (calls inside a handled
    call do not reach the mode again).
    """

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "").strip("_")
        tensors = [a for a in args if isinstance(a, Tensor)]
        if isinstance(out, Tensor) and len(tensors) >= 2:
            x, w = tensors[0], tensors[1]
            if name.startswith("conv_transpose"):  # every input element scattered into C_out/g * k outputs
                self.macs += x.numel() * w.shape[1] * math.prod(w.shape[2:])
            elif name.startswith("conv"):  # every output element: C_in/g * k MACs
                self.macs += out.numel() * w.shape[1] * math.prod(w.shape[2:])
            elif name in ("linear", "matmul", "mm", "bmm", "rmatmul"):
                inner = w.shape[-1] if name == "linear" else (x.shape[-1] if name != "rmatmul" else w.shape[-1])
                self.macs += out.numel() * inner
            elif name in ("addmm", "baddbmm", "addbmm") and len(tensors) >= 3:
                self.macs += out.numel() * tensors[1].shape[-1]
        return out


def _call(model: nn.Module, inputs: Any) -> Any:
    """A tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, items) if t is not None), None)


def _batch_size(inputs: Any) -> int:
    first = _first_tensor(inputs)
    if first is None or first.dim() == 0:
        raise ValueError("example_inputs must contain a batched tensor (dim 0 = batch)")
    return int(first.shape[0])


def layer_table(model: nn.Module, example_inputs: Tensor | tuple[Any, ...] | dict[str, Any]) -> list[LayerRow]:
    """Per leaf module, in the order of first call: name, type, in/out width, MACs, own parameters.

    Runs one forward in eval mode under ``torch.no_grad`` (the model's modes are restored). Leaf
    modules that never run are left out; parameters held by non-leaf modules appear in :func:`count`
    only.

    Args:
        model: the network.
        example_inputs: a batched input (a tensor, a tuple of positional inputs, or a dict of
            keyword inputs).

    Returns:
        ``{"name", "type", "in", "out", "macs", "params"}`` per leaf module; ``macs`` is per sample.

    >>> rows = layer_table(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.zeros(1, 3, 10, 10))
    >>> [(r["name"], r["in"], r["out"], r["macs"], r["params"]) for r in rows]
    [('0', 3, 8, 13824, 224), ('1', 8, 8, 0, 0)]
    """
    return _measure(model, example_inputs)[0]


def _measure(model: nn.Module, example_inputs: Any) -> tuple[list[LayerRow], int]:
    """Rows of :func:`layer_table` and the per-sample MACs the FLOP counter saw, from one forward."""
    batch = _batch_size(example_inputs)
    rows: dict[str, dict[str, Any]] = {}
    handles = []

    def hook(name: str, module: nn.Module):
        rule = _rule(module)

        def fn(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x, y = _first_tensor(args), _first_tensor(output)
            macs = rule(mod, x, y) if rule is not None and x is not None and y is not None else 0
            if name not in rows:
                rows[name] = {
                    "name": name, "type": type(mod).__name__,
                    "in": _width(mod, x, "in") if x is not None else 0,
                    "out": _width(mod, y, "out") if y is not None else 0,
                    "macs": 0, "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                }
            rows[name]["macs"] += macs

        return fn

    try:
        for name, module in model.named_modules():
            if next(module.children(), None) is None:  # leaf (a childless model is its own leaf)
                handles.append(module.register_forward_hook(hook(name or type(module).__name__, module)))
        with evaluating(model), _Executed() as executed:
            _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    for row in rows.values():
        row["macs"] = row["macs"] // batch
    return [LayerRow(**r) for r in rows.values()], executed.macs // batch


def count_params(model: nn.Module) -> int:
    """Number of parameter entries, trainable or not, shared ones once."""
    return sum(p.numel() for p in model.parameters())


def count(model: nn.Module, example_inputs: Tensor | tuple[Any, ...] | dict[str, Any]) -> tuple[int, int]:
    """``(MACs per sample, params)`` of ``model`` (see the module docstring for what is counted).

    Args:
        model: the network; left as it was (one eval-mode forward under ``no_grad``).
        example_inputs: a batched input (a tensor, a tuple of positional inputs, or a dict of
            keyword inputs).

    >>> conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    >>> count(conv, torch.zeros(2, 3, 4, 4))  # 8*4*4 outputs x 3*3*3 MACs; 8*3*3*3 weights
    (3456, 216)
    """
    rows, executed = _measure(model, example_inputs)
    hooked = sum(r["macs"] for r in rows)
    macs = max(hooked, executed)
    params = count_params(model)
    if executed > hooked:
        logger.debug("count: %d MACs in functional calls that no layer hook saw", executed - hooked)
    logger.debug("count: %d MACs, %d params", macs, params)
    return macs, params
