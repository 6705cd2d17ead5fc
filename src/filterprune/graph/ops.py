"""Layer operations: how a module type's channels flow and how to resize it (the engine's one extension point).

The engine (tracing, masking, surgery, checkpoints) knows the torch layers it ships with (conv,
Linear, the norms, PReLU). Any other module that sits on a channel path and holds channel-sized
state declares itself with a :class:`LayerOp` and :func:`register_layer_op`; the engine then treats
it like a built-in layer and never needs to know its class. This is Torch-Pruning's "customized
pruner" idea (``BasePruningFunc`` with ``prune_out_channels`` / ``prune_in_channels`` /
``get_out_channels`` / ``get_in_channels``) with our own, smaller protocol, plus what masking and
pickle-free checkpoints need.

A registered module is a *mixer*: its input and output channels are separate dimensions (like a conv),
so channel groups end at its input and new ones start at its output. While tracing it runs as one
opaque autograd node, so whatever indexing it does inside is not mistaken for channel movement.

The CIFAR ResNet's option-A shortcut (:class:`filterprune.models.cifar_resnet.PadShortcut`,
``PadShortcutOp``) is a full example: ``fp.register_layer_op(PadShortcut, PadShortcutOp())``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..types import NORM_LAYERS

__all__ = ["LayerOp", "channel_attrs", "expected_shapes", "layer_op", "register_layer_op", "set_channel_attrs"]


class LayerOp:
    """How one module type's channels flow and how to resize it. Subclass and override every method.

    Index arguments are 1-D ``torch.long`` tensors. ``keep_idxs`` lists the channels to keep *in the
    order they must have afterwards* (a permutation is a valid ``keep_idxs``), so the same method
    removes channels (surgery) and reorders them (C-SGD's alignment of shortcut maps).
    """

    def out_channels(self, module: nn.Module) -> int:
        """Width of the module's output channel dim."""
        raise NotImplementedError

    def in_channels(self, module: nn.Module) -> int:
        """Width of the module's input channel dim."""
        raise NotImplementedError

    def prune_out(self, module: nn.Module, keep_idxs: Tensor) -> None:
        """Keep only output channels ``keep_idxs`` (in that order), editing the module in place."""
        raise NotImplementedError

    def prune_in(self, module: nn.Module, keep_idxs: Tensor) -> None:
        """Keep only input channels ``keep_idxs`` (in that order), editing the module in place."""
        raise NotImplementedError

    def mask_in(self, module: nn.Module, idxs: Tensor) -> list[tuple[Tensor, int, float]]:
        """Where to write to make input channels ``idxs`` invisible: ``(tensor, dim, fill value)`` each;
        the engine fills ``tensor`` at ``idxs`` along ``dim`` (and restores it bit for bit afterwards).

        With those entries filled the module must compute exactly what it computes once the channels
        are removed with :meth:`prune_in` (that is what ``pruned == masked`` checks).
        """
        raise NotImplementedError

    def couples(self, module: nn.Module) -> list[tuple[list[int], list[int]]] | None:
        """For a layer whose input and output channels are tied (a pixel shuffle): blocks of
        ``(input channels, output channels)`` that can only be removed together, one per block.
        ``None`` (the default): input and output channels are independent, like a conv's."""
        return None

    def channel_map(self, module: nn.Module) -> Tensor | None:
        """For a weightless router (a shortcut that places input channels among its outputs): the
        output channel of each input channel, -1 for dropped ones. ``None`` (the default) for layers
        with weights. C-SGD uses it to keep clusters consistent across the router."""
        return None

    def channel_attrs(self, module: nn.Module) -> dict[str, int]:
        """The integer attributes that describe the module's current widths (saved in checkpoints)."""
        raise NotImplementedError

    def set_channel_attrs(self, module: nn.Module, attrs: dict[str, int]) -> None:
        """Set what :meth:`channel_attrs` returned, on a freshly built module (tensor shapes are
        restored separately, from the checkpoint's tensors)."""
        for name, value in attrs.items():
            setattr(module, name, int(value))


_OPS: dict[type, LayerOp] = {}


def register_layer_op(module_type: type, op: LayerOp | None = None) -> Callable[[type[LayerOp]], type[LayerOp]] | LayerOp:
    """Declare how the engine resizes modules of ``module_type`` (subclasses included).

    Use as ``register_layer_op(MyLayer, MyLayerOp())`` or as a class decorator on the op class,
    ``@register_layer_op(MyLayer)``. Registering a type twice replaces the earlier op.

    Raises:
        TypeError: ``module_type`` is not an ``nn.Module`` subclass, or ``op`` is not a :class:`LayerOp`.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_layer_op needs an nn.Module subclass, got {module_type!r}")
    if op is not None:
        if not isinstance(op, LayerOp):
            raise TypeError(f"op for {module_type.__name__} must be a LayerOp, got {type(op).__name__}")
        _OPS[module_type] = op
        return op

    def decorator(klass: type[LayerOp]) -> type[LayerOp]:
        register_layer_op(module_type, klass())
        return klass

    return decorator


def layer_op(module: nn.Module) -> LayerOp | None:
    """The op registered for ``module``'s class or its nearest registered base class, or ``None``."""
    for klass in type(module).__mro__:
        if klass in _OPS:
            return _OPS[klass]
    return None


def registered_types() -> tuple[type, ...]:
    """The module types that have a registered :class:`LayerOp`, in registration order."""
    return tuple(_OPS)


# Built-in layers: the integer attributes that give their widths (checkpoints save and restore them).
_BUILTIN_ATTRS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.modules.instancenorm._InstanceNorm, ("num_features",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.PReLU, ("num_parameters",)),
)


def channel_attrs(module: nn.Module) -> dict[str, Any] | None:
    """The width attributes of ``module`` if the engine can resize it (built-in or registered), else
    ``None``. LayerNorm's ``normalized_shape`` is a tuple of ints, saved as a list."""
    op = layer_op(module)
    if op is not None:
        return {k: int(v) for k, v in op.channel_attrs(module).items()}
    if isinstance(module, nn.LayerNorm):
        return {"normalized_shape": [int(s) for s in module.normalized_shape]}
    for klass, attrs in _BUILTIN_ATTRS:
        if isinstance(module, klass):
            return {a: int(getattr(module, a)) for a in attrs}
    return None


def set_channel_attrs(module: nn.Module, attrs: dict[str, Any]) -> None:
    """Give ``module`` the widths :func:`channel_attrs` returned (tensors are resized separately).

    Raises:
        TypeError: the engine cannot resize this module.
    """
    op = layer_op(module)
    if op is not None:
        op.set_channel_attrs(module, dict(attrs))
        return
    if channel_attrs(module) is None:
        raise TypeError(f"the engine cannot resize {type(module).__name__}")
    for name, value in attrs.items():
        setattr(module, name, tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value))


class _Opaque(torch.autograd.Function):
    """One autograd node for a registered module's whole forward, so the tracer sees no indexing inside.

    Only tracing builds this node, and tracing never runs backward.
    """

    @staticmethod
    def forward(ctx, fn, *args):  # noqa: ANN001 - autograd signature
        return fn(*args)

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001
        raise RuntimeError("a registered layer op was run backward while opaque (tracing only)")


def expected_shapes(m: nn.Module, attrs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes of ``m``'s own tensors implied by the channel attributes ``attrs`` (built-in kinds).

    Registered layer operations return ``{}``: their tensors take the stored shapes as they are.
    """
    if layer_op(m) is not None:
        return {}
    if isinstance(m, nn.modules.conv._ConvNd):
        cin, cout, g = attrs["in_channels"], attrs["out_channels"], attrs["groups"]
        w = (cin, cout // g) if m.transposed else (cout, cin // g)
        return {"weight": (*w, *m.kernel_size), "bias": (cout,)}
    if isinstance(m, nn.Linear):
        return {"weight": (attrs["out_features"], attrs["in_features"]), "bias": (attrs["out_features"],)}
    if isinstance(m, NORM_LAYERS):
        c = (attrs["num_features"],)
        return {"weight": c, "bias": c, "running_mean": c, "running_var": c, "num_batches_tracked": ()}
    if isinstance(m, nn.GroupNorm):
        return {"weight": (attrs["num_channels"],), "bias": (attrs["num_channels"],)}
    if isinstance(m, nn.LayerNorm):
        return {"weight": tuple(attrs["normalized_shape"]), "bias": tuple(attrs["normalized_shape"])}
    if isinstance(m, nn.PReLU):
        return {"weight": (attrs["num_parameters"],)}
    return {}


def opaque_forward(module: nn.Module) -> Callable[..., Tensor]:
    """A replacement ``forward`` for ``module`` that runs its class's forward as one opaque node."""
    klass_forward = type(module).forward
    return lambda *args: _Opaque.apply(lambda *a: klass_forward(module, *a), *args)


_WIDTHS = "_filterprune_widths"  # (in, out) channel widths of a stateless layer, kept on the module


def observe(module: nn.Module, in_width: int, out_width: int) -> None:
    """Record the channel widths a stateless registered layer had in a traced forward pass."""
    if isinstance(layer_op(module), PixelShuffleOp):
        setattr(module, _WIDTHS, (int(in_width), int(out_width)))


def _widths(module: nn.Module) -> tuple[int, int]:
    return getattr(module, _WIDTHS)


class PixelShuffleOp(LayerOp):
    """``nn.PixelShuffle(r)``: input channels ``c*r*r ... c*r*r + r*r - 1`` become output channel ``c``
    (Shi et al. 2016, arXiv 1609.05158), so a block of r² input channels goes with one output channel.
    Stateless: its widths are those of the last traced forward pass, kept on the module as
    ``_filterprune_widths`` and updated by surgery. ``nn.PixelUnshuffle`` is the reverse."""

    unshuffle = False

    def _factor(self, module: nn.Module) -> int:
        return int(module.downscale_factor if self.unshuffle else module.upscale_factor) ** 2

    def out_channels(self, module: nn.Module) -> int:
        """Output width as of the last traced forward pass (or surgery)."""
        return _widths(module)[1]

    def in_channels(self, module: nn.Module) -> int:
        """Input width as of the last traced forward pass (or surgery)."""
        return _widths(module)[0]

    def prune_out(self, module: nn.Module, keep_idxs: Tensor) -> None:
        """Record the narrower output width (``len(keep_idxs)``); the layer has no state to slice."""
        setattr(module, _WIDTHS, (_widths(module)[0], len(keep_idxs)))  # nothing else: no state

    def prune_in(self, module: nn.Module, keep_idxs: Tensor) -> None:
        """Record the narrower input width (``len(keep_idxs)``); the layer has no state to slice."""
        setattr(module, _WIDTHS, (len(keep_idxs), _widths(module)[1]))

    def mask_in(self, module: nn.Module, idxs: Tensor) -> list[tuple[Tensor, int, float]]:
        """Nothing to mask here: a block is hidden through its output channel's consumers."""
        return []  # a block is masked with its output channel, whose consumers are zeroed

    def couples(self, module: nn.Module) -> list[tuple[list[int], list[int]]]:
        """``(input channels, output channels)`` pairs removed together: each block of r² channels on the
        wide side with its one channel on the narrow side.
        """
        r2 = self._factor(module)
        narrow = _widths(module)[0 if self.unshuffle else 1]
        blocks = [([k], list(range(k * r2, (k + 1) * r2))) for k in range(narrow)]
        return blocks if self.unshuffle else [(wide, one) for one, wide in blocks]

    def channel_attrs(self, module: nn.Module) -> dict[str, int]:
        """No width attributes to save (``{}``): widths follow from the neighbouring layers."""
        return {}


class PixelUnshuffleOp(PixelShuffleOp):
    """``nn.PixelUnshuffle(r)``: the reverse of :class:`PixelShuffleOp` (one input channel becomes r²
    output channels).
    """
    unshuffle = True


register_layer_op(nn.PixelShuffle, PixelShuffleOp())
register_layer_op(nn.PixelUnshuffle, PixelUnshuffleOp())
