"""The two retrained stages of Deep Compression, as hooks of the one training loop.

Source: Han, Mao & Dally, "Deep Compression", arXiv 1510.00149 (ICLR 2016).

* §2 **magnitude pruning**: per layer, the weights of smallest ``|w|`` are set to zero and the network is
  retrained with them held at zero. Here the per-layer target is a *sparsity* (fraction of weights
  removed; the paper thresholds at a quality parameter times the layer's std, which amounts to the same
  per-layer fraction). :class:`MaskHook` holds the masks: it zeroes the gradient of every pruned weight
  after ``backward`` (SGD's weight decay and momentum of a weight that is 0 with gradient 0 stay 0, so
  the weight stays exactly 0).
* §3 **trained quantisation / weight sharing**: per layer, k-means (scikit-learn, one run) on the
  surviving weights, with **linear** initialisation: centroids evenly spaced between the minimum and
  maximum weight (§3.2, the best of the three initialisations the paper tried). Each weight then
  stores a codebook index. During retraining the gradient of centroid ``c_k`` is the sum of the
  gradients of its members (§3.3, Eq. 3): ``dL/dc_k = sum_{ij} dL/dW_ij * 1(I_ij = k)``.
  :class:`SharingHook` writes that summed gradient into every member's ``.grad``, so the optimizer
  moves all members of a cluster by the same step (weight decay is off for shared weights: the
  update is exactly the centroid's), and re-ties them each step so they stay bit-identical.

Symbols: a weight's symbol is 0 if it is pruned and ``k + 1`` if it belongs to centroid ``k``; so a
layer with ``b`` bits has at most ``2**b - 1`` centroids plus the zero, ``2**b`` symbols in all.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..train.hooks import TrainHook

logger = logging.getLogger(__name__)

__all__ = ["MaskHook", "SharedLayer", "SharingHook", "compressible_layers", "linear_init", "magnitude_masks",
           "share_weights"]


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv and linear layer with a weight, by qualified name (the layers the stages act on)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and isinstance(m.weight, Tensor)}


def magnitude_masks(model: nn.Module, sparsity: dict[str, float]) -> dict[str, Tensor]:
    """Keep-masks of the largest-magnitude weights: ``{layer: bool tensor shaped like its weight}``.

    Exactly ``round((1 - s) * n)`` weights are kept in a layer of ``n`` weights (ties broken by
    position), and the kept weights of an already sparse layer are a subset of its nonzeros when
    ``s`` is at least its current sparsity.

    Args:
        model: the network (not changed).
        sparsity: fraction of weights to remove, per layer name (0 <= s < 1).

    Raises:
        ValueError: an unknown layer or a sparsity outside [0, 1).
    """
    layers = compressible_layers(model)
    masks = {}
    for name, s in sparsity.items():
        if name not in layers:
            raise ValueError(f"no conv/linear layer named {name!r}; layers: {', '.join(layers)}")
        if not 0 <= s < 1:
            raise ValueError(f"sparsity of {name} must be in [0, 1), got {s}")
        w = layers[name].weight.detach().flatten()
        keep = max(1, round((1 - s) * w.numel()))
        mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        mask[torch.topk(w.abs(), keep, sorted=False).indices] = True
        masks[name] = mask.view_as(layers[name].weight)
    return masks


class MaskHook(TrainHook):
    """Retraining with the pruned weights held at zero (Deep Compression §2).

    ``on_fit_start`` zeroes the pruned weights; ``after_backward`` zeroes their gradients.
    ``on_epoch_end`` logs ``masked_nonzero``, the pruned weights that are not exactly zero (always 0).
    """

    def __init__(self, masks: dict[str, Tensor]) -> None:
        self.masks = masks

    def _weights(self, model: nn.Module):
        for name, mask in self.masks.items():
            w = model.get_submodule(name).weight
            if mask.device != w.device:
                self.masks[name] = mask = mask.to(w.device)
            yield w, mask

    @torch.no_grad()
    def on_fit_start(self, model: nn.Module, optimizer) -> None:
        """Zero the pruned weights."""
        for w, mask in self._weights(model):
            w.mul_(mask)

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Zero the gradients of the pruned weights."""
        for w, mask in self._weights(model):
            if w.grad is not None:
                w.grad.mul_(mask)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """``{"masked_nonzero": pruned weights that are not exactly 0}`` (logged; always 0)."""
        leaked = sum(int((w.detach()[~mask] != 0).sum()) for w, mask in self._weights(model))
        return {"masked_nonzero": float(leaked)}


@dataclass
class SharedLayer:
    """One weight-shared layer: ``weight == cat([0], codebook)[symbols]`` exactly.

    Attributes:
        symbols: int64, the weight's shape; 0 = pruned, ``k + 1`` = centroid ``k``.
        codebook: float32 ``(K,)``, ``K < 2**bits``; every centroid has at least one member.
        bits: the layer's index width ``b``.
    """

    symbols: Tensor
    codebook: Tensor
    bits: int

    def weight(self) -> Tensor:
        """The dense weight ``cat([0], codebook)[symbols]``, float32, the layer's shape."""
        table = torch.cat([self.codebook.new_zeros(1), self.codebook])
        return table[self.symbols]


def linear_init(values: np.ndarray, k: int) -> np.ndarray:
    """``k`` centroids evenly spaced over ``[min, max]`` of ``values`` (Deep Compression §3.2), ``(k, 1)``."""
    return np.linspace(values.min(), values.max(), k, dtype=np.float64).reshape(k, 1)


def _cluster(values: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn k-means from linear init: (float32 centroids (k',), labels into them)."""
    from sklearn.cluster import KMeans

    k = min(k, len(np.unique(values)))
    if k <= 1:
        c = np.array([values.mean()], dtype=np.float32)
        return c, np.zeros(len(values), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "number of distinct clusters found smaller than n_clusters"
        km = KMeans(n_clusters=k, init=linear_init(values, k), n_init=1, random_state=seed).fit(
            values.reshape(-1, 1).astype(np.float64))
    return km.cluster_centers_.ravel().astype(np.float32), km.labels_.astype(np.int64)


@torch.no_grad()
def share_weights(model: nn.Module, bits: dict[str, int], seed: int = 0) -> dict[str, SharedLayer]:
    """Quantise each layer's nonzero weights to a k-means codebook and write the shared values back.

    Args:
        model: changed in place: each listed layer's weight becomes ``codebook[index]`` (zeros stay 0).
        bits: index width per layer name, 1..16 (``2**b - 1`` centroids).
        seed: k-means' random state (linear init makes it deterministic anyway).

    Returns:
        ``{layer: SharedLayer}``.
    """
    layers = compressible_layers(model)
    shared = {}
    for name, b in bits.items():
        if name not in layers:
            raise ValueError(f"no conv/linear layer named {name!r}")
        if not 1 <= b <= 16:
            raise ValueError(f"bits of {name} must be in 1..16, got {b}")
        w = layers[name].weight
        flat = w.detach().cpu().flatten().numpy()
        nz = np.flatnonzero(flat)
        symbols = np.zeros(flat.size, dtype=np.int64)
        codebook = np.zeros(0, dtype=np.float32)
        if len(nz):
            codebook, labels = _cluster(flat[nz], (1 << b) - 1, seed)
            used, labels = np.unique(labels, return_inverse=True)  # drop empty clusters
            codebook = codebook[used]
            symbols[nz] = labels + 1
        layer = SharedLayer(torch.from_numpy(symbols).view(w.shape), torch.from_numpy(codebook), b)
        w.copy_(layer.weight().to(w.device, w.dtype))
        shared[name] = layer
        logger.info("%s: %d nonzero weights -> %d centroids (%d bits)", name, len(nz), len(codebook), b)
    return shared


class SharingHook(TrainHook):
    """Centroid fine-tuning (Deep Compression §3.3): members of a cluster move by the summed gradient.

    ``after_backward``: ``grad_k = sum of members' .grad`` (Eq. 3), written into every member's
    ``.grad``; pruned weights get 0. Every member of a centroid then takes the same optimizer step.
    The weights are re-tied to the first member of each centroid before each step and at each epoch
    end, so they stay bit-identical; :meth:`codebooks` reads the trained codebooks back.
    """

    def __init__(self, shared: dict[str, SharedLayer]) -> None:
        self.shared = shared
        self._first: dict[str, Tensor] = {}
        for name, layer in shared.items():
            flat = layer.symbols.flatten()
            first = torch.full((len(layer.codebook) + 1,), flat.numel(), dtype=torch.long)
            pos = torch.arange(flat.numel())
            first.scatter_reduce_(0, flat, pos, reduce="amin")
            self._first[name] = first[1:]  # (K,) flat position of each centroid's first member

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        """The shared weights: their step must be exactly the centroid's."""
        return {f"{name}.weight" for name in self.shared}

    @torch.no_grad()
    def _tie(self, model: nn.Module) -> None:
        for name, layer in self.shared.items():
            w = model.get_submodule(name).weight
            layer.codebook = w.detach().flatten()[self._first[name].to(w.device)].cpu().float().clone()
            w.copy_(layer.weight().to(w.device, w.dtype))

    def on_fit_start(self, model: nn.Module, optimizer) -> None:
        """Tie every member to its centroid."""
        self._tie(model)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        """Re-tie, then write each centroid's summed member gradient (Eq. 3) into its members' ``.grad``."""
        self._tie(model)
        for name, layer in self.shared.items():
            w = model.get_submodule(name).weight
            if w.grad is None:
                continue
            sym = layer.symbols.to(w.device)
            summed = torch.zeros(len(layer.codebook) + 1, device=w.device, dtype=w.grad.dtype)
            summed.index_add_(0, sym.flatten(), w.grad.flatten())  # Eq. 3: sum over members
            summed[0] = 0  # pruned weights stay 0
            w.grad.copy_(summed[sym])

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Re-tie after the epoch's last optimizer step."""
        self._tie(model)
        return {}

    def codebooks(self, model: nn.Module) -> dict[str, SharedLayer]:
        """The layers with their trained codebooks (the model's weights re-tied to them)."""
        self._tie(model)
        return self.shared
