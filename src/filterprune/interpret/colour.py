"""Colour selectivity of filters: a kernel rule for the first layer, a response rule for deeper ones.

The CAR paper (Abbasi-Asl & Yu, arXiv 1705.07356 / 1711.02329) reports that 17 of the 20 first-layer and
14 of the 20 second-layer filters AlexNet loses first under CAR are colour-selective, without saying how
that was decided. Two checkable rules (docs/methods.md §3.2 (a), (b); issue 16):

* **First layer** (:func:`kernel_colour_index`), on the kernel alone. With ``W_p[c] = W[c] / std[c]`` the
  kernel in pixel space (``std`` = the model's input normalisation; the input is ``(x - mean) / std``,
  so the filter sees pixel channel c through ``W[c] / std[c]``)::

      index = ||W_p - mean_c(W_p)||^2 / ||W_p||^2

  the chromatic share of the kernel's energy: ``mean_c(W_p)`` (the mean over the colour channels at each
  tap, broadcast back) is the part that responds to luminance, the rest responds to colour differences.
  0 for a grey kernel, 1 for a purely opponent one; colour-selective when ``index >= 0.5``.

* **Deeper layers** (:func:`top_response_colour_index`, the rule the study uses), on responses. ``a`` is
  the filter's activation as the network uses it: the output of the BatchNorm that normalises the conv
  when there is one (:func:`activation_module`; ``relu(a)`` is what the next layer reads), else the
  conv's output. Each image's response is ``relu(a)`` at the position where it is largest on the colour
  image; the filter's *top images* are the ``top`` images (of the evaluation set) with the largest
  responses. ``R_colour`` is the mean response over the top images, ``R_grey`` the mean response at the
  same positions of their greyscale versions (luma ``Y = 0.299 R + 0.587 G + 0.114 B``, ITU-R BT.601,
  copied to the three channels, then normalised like the colour images)::

      index = 1 - R_grey / R_colour        (clipped to [0, 1]; colour-selective when >= 0.5)

  i.e. on what drives it most, the filter loses at least half of its response when colour is removed.
  This is the colour selectivity index of Rafegas & Vanrell, "Color encoding in biologically-inspired
  convolutional neural networks", Vision Research 151 (2018) [R: recalled: 1 - grey/colour activation
  over a neuron's top images]. :func:`response_colour_index` is the same ratio over *all* images and
  positions (issue 16's literal wording); it is reported too, but a filter's mean response over
  everything is dominated by what it does on flat regions (the BatchNorm's shift), so it calls few
  filters colour-selective even where their top patches are saturated colour (measured on the ResNet-20
  base's ``layer1.0.conv1``: red, green and blue top patches with an all-positions index <= 0.15).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["THRESHOLD", "activation_module", "greyscale", "kernel_colour_index", "response_colour_index",
           "top_response_colour_index"]

THRESHOLD = 0.5
LUMA = (0.299, 0.587, 0.114)


def kernel_colour_index(weight: Tensor, std: Sequence[float]) -> Tensor:
    """Chromatic energy share of each first-layer kernel in pixel space.

    Args:
        weight: ``(C_out, C_in, k, k)`` conv weight of the first layer (C_in colour channels).
        std: the input normalisation's per-channel std (length C_in).

    Returns:
        ``(C_out,)`` float64 in [0, 1]; NaN for an all-zero kernel.

    >>> w = torch.zeros(2, 3, 1, 1); w[0, :, 0, 0] = 1.0; w[1, :, 0, 0] = torch.tensor([1.0, -1.0, 0.0])
    >>> kernel_colour_index(w, [1.0, 1.0, 1.0]).tolist()
    [0.0, 1.0]
    """
    std_t = torch.as_tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    if weight.shape[1] != std_t.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels, std has {std_t.shape[1]}")
    wp = weight.detach().double().cpu() / std_t  # (C_out, C_in, k, k), pixel space
    chroma = wp - wp.mean(dim=1, keepdim=True)  # remove the luminance part at each tap
    return chroma.pow(2).sum((1, 2, 3)) / wp.pow(2).sum((1, 2, 3))


def greyscale(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The greyscale version of a normalised RGB batch ``(N, 3, H, W)``, normalised the same way."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    pixels = x * s + m
    y = (pixels * torch.as_tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (y.expand_as(x) - m) / s


@torch.no_grad()
def activation_module(model: nn.Module, layer: str, example: Tensor) -> str:
    """Where a conv's filters are read as activations: the BatchNorm fed by its output, else the conv.

    Found by running ``example`` once: the BatchNorm whose input is the very tensor ``layer`` returned.

    Args:
        model: the network (its mode is restored).
        layer: a conv layer's qualified name.
        example: a batch the model accepts.

    Returns:
        the qualified name of that BatchNorm, or ``layer``.
    """
    conv = model.get_submodule(layer)
    seen: dict[str, Tensor] = {}
    found: list[str] = []
    hooks = [conv.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))]
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_hook(
                lambda m, i, o, name=name: found.append(name) if i[0] is seen.get("out") else None))
    was = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return found[0] if found else layer


@torch.no_grad()
def layer_responses(model: nn.Module, layer: str, batches: Iterable[tuple[Tensor, Tensor]],
                    transform=None) -> Tensor:
    """Mean rectified output ``mean(relu(a))`` per channel of module ``layer`` over ``batches``, ``(C,)``
    float64 on the CPU."""
    module = model.get_submodule(layer)
    total: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: total.append(o.detach().float().relu().mean((0, 2, 3)) * o.shape[0]))
    was = model.training
    model.eval()
    n = 0
    try:
        for x, _ in batches:
            model(transform(x) if transform else x)
            n += x.shape[0]
    finally:
        handle.remove()
        model.train(was)
    return torch.stack(total).sum(0).double().cpu() / n


def response_colour_index(model: nn.Module, layer: str, batches: Sequence[tuple[Tensor, Tensor]],
                          mean: Sequence[float], std: Sequence[float], *,
                          at: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(index, R_colour, R_grey)``, each ``(C_out,)`` float64 on the CPU:
    ``index = clip(1 - R_grey / R_colour, 0, 1)`` (module docstring).

    Args:
        model: the network (not changed).
        layer: the conv layer's qualified name.
        batches: normalised ``(x, y)`` batches on the model's device.
        mean, std: the input normalisation.
        at: the module whose output is the activation ``a``; ``None``: :func:`activation_module`.

    A filter that never responds (``R_colour = 0``) gets NaN.
    """
    at = at or activation_module(model, layer, batches[0][0][:1])
    colour = layer_responses(model, at, batches)
    grey = layer_responses(model, at, batches, transform=lambda x: greyscale(x, mean, std))
    index = (1 - grey / colour).clamp(0, 1)
    index[colour == 0] = float("nan")
    return index, colour, grey


@torch.no_grad()
def top_response_colour_index(model: nn.Module, layer: str, batches: Sequence[tuple[Tensor, Tensor]],
                              mean: Sequence[float], std: Sequence[float], *, at: str | None = None,
                              top: int = 50) -> tuple[Tensor, Tensor, Tensor]:
    """``(index, R_colour, R_grey)`` on each filter's top images (module docstring), each ``(C_out,)``
    float64 on the CPU: ``index = clip(1 - R_grey / R_colour, 0, 1)``.

    Args:
        model: the network (not changed; its mode is restored).
        layer: the conv layer's qualified name.
        batches: normalised ``(x, y)`` batches on the model's device.
        mean, std: the input normalisation.
        at: the module whose output is the activation ``a``; ``None``: :func:`activation_module`.
        top: top images per filter (all of them when the set is smaller).

    A filter that never responds (``R_colour = 0``) gets NaN.

    Raises:
        ValueError: ``top < 1``.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    at = at or activation_module(model, layer, batches[0][0][:1])
    module = model.get_submodule(at)
    acts: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: acts.append(o.detach().to(torch.float32, copy=True)))
    was = model.training
    model.eval()
    best_c: Tensor | None = None  # (C, <=top) responses of the top images so far
    best_g: Tensor | None = None  # (C, <=top) their greyscale counterparts
    try:
        for x, _ in batches:
            acts.clear()
            model(x)
            model(greyscale(x, mean, std))
            colour, grey = (a.relu().transpose(0, 1).flatten(2) for a in acts)  # (C, N, H*W) each
            value, pos = colour.max(2)  # (C, N): each image's largest response and where
            grey_at = grey.gather(2, pos.unsqueeze(2)).squeeze(2)  # (C, N)
            cand_c = value if best_c is None else torch.cat([best_c, value], 1)
            cand_g = grey_at if best_g is None else torch.cat([best_g, grey_at], 1)
            keep = cand_c.topk(min(top, cand_c.shape[1]), dim=1).indices
            best_c, best_g = cand_c.gather(1, keep), cand_g.gather(1, keep)
    finally:
        handle.remove()
        model.train(was)
    if best_c is None:
        raise ValueError("top_response_colour_index needs at least one batch")
    r_colour, r_grey = best_c.double().mean(1).cpu(), best_g.double().mean(1).cpu()
    index = (1 - r_grey / r_colour).clamp(0, 1)
    index[r_colour == 0] = float("nan")
    return index, r_colour, r_grey
