"""Filter pictures (matplotlib, Agg): first-layer kernels as RGB tiles, deeper filters as the image
patch that drives them most. Filters are drawn in CAR order (lowest first: the ones CAR removes
first), each titled with its index, CAR and colour index; colour-selective ones in red.

Patches (deeper layers): for each filter, the evaluation image and position of its largest activation
(the output of the module ``at``: the BatchNorm after the conv, see
:func:`~filterprune.interpret.colour.activation_module`); the patch is the bounding box of the input
pixels with a nonzero gradient of that activation (its effective receptive field on that image), cut
from the un-normalised image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["kernel_tiles", "save_grid", "top_patches"]


def kernel_tiles(weight: Tensor, std: Sequence[float]) -> list[np.ndarray]:
    """Each first-layer kernel in pixel space (``W[c] / std[c]``) as an ``(k, k, 3)`` image in [0, 1]
    (0.5 = zero; per filter, the largest magnitude maps to 0 or 1)."""
    wp = weight.detach().double().cpu() / torch.as_tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    tiles = []
    for w in wp:
        scale = float(w.abs().max()) or 1.0
        tiles.append((0.5 + 0.5 * w / scale).permute(1, 2, 0).numpy())
    return tiles


def top_patches(model: nn.Module, layer: str, batches: Sequence[tuple[Tensor, Tensor]], mean: Sequence[float],
                std: Sequence[float], at: str | None = None) -> list[np.ndarray]:
    """The input patch of each filter's strongest response (module docstring), ``(h, w, 3)`` in [0, 1].

    ``at`` names the module whose output is read (``None``: ``layer`` itself).
    """
    module = model.get_submodule(at or layer)
    out: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: out.append(o))
    was = model.training
    model.eval()
    try:
        best_val, best_at = None, None
        with torch.no_grad():
            for b, (x, _) in enumerate(batches):
                out.clear()
                model(x)
                a = out[0]  # (N, C, H, W)
                flat = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)
                v, i = flat.max(1)
                if best_val is None:
                    best_val, best_at = v, [(b, int(j)) for j in i]
                else:
                    for c in torch.nonzero(v > best_val).flatten().tolist():
                        best_val[c], best_at[c] = v[c], (b, int(i[c]))
        m = torch.as_tensor(mean).view(3, 1, 1)
        s = torch.as_tensor(std).view(3, 1, 1)  # pixels are cut on the CPU
        patches = []
        for c, (b, j) in enumerate(best_at):
            x_all = batches[b][0]
            out.clear()
            with torch.no_grad():
                model(x_all[:1])
            _, _, oh, ow = out[0].shape
            img, pos = divmod(j, oh * ow)  # j indexes the (N, H, W) positions of channel c
            x = x_all[img:img + 1].clone().requires_grad_(True)
            out.clear()
            model(x)
            out[0][0, c].flatten()[pos].backward()
            support = torch.nonzero(x.grad[0].abs().sum(0) > 0).cpu()
            pixels = (x.detach()[0].cpu().float() * s + m).clamp(0, 1)
            if len(support):
                (r0, c0), (r1, c1) = support.min(0).values.tolist(), support.max(0).values.tolist()
                pixels = pixels[:, r0:r1 + 1, c0:c1 + 1]
            patches.append(pixels.permute(1, 2, 0).numpy())
    finally:
        handle.remove()
        model.train(was)
    return patches


def save_grid(images: Sequence[np.ndarray], titles: Sequence[str], red: Sequence[bool], path: Path,
              suptitle: str) -> Path:
    """Tile ``images`` (HxWx3 in [0, 1]) in a grid with small titles; colour-selective titles in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(8, len(images))
    rows = math.ceil(len(images) / cols)
    height = 1.7 * rows + 0.6  # inches; the top 0.4 hold the suptitle
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title, r in zip(axes.flat, images, titles, red, strict=False):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=6, color="red" if r else "black")
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def filter_titles(filters: Sequence[dict[str, Any]]) -> list[str]:
    """One short title per filter record: index, CAR, colour index."""
    return [f"#{f['index']} CAR {f['car']:.1f}\ncolour {f['colour_index']:.2f}" for f in filters]
