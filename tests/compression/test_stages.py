"""Magnitude masks, k-means weight sharing and the two training hooks, against hand oracles."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from filterprune.compression.stages import (
    MaskHook,
    SharedLayer,
    SharingHook,
    linear_init,
    magnitude_masks,
    share_weights,
)
from filterprune.config import TrainConfig
from filterprune.data import BatchLoader, synthetic_dataset
from filterprune.train import fit


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def loader():
    ds = synthetic_dataset(64, num_classes=4, image_size=8, seed=0)
    return BatchLoader(ds, 16, train=True, seed=0)


CFG = TrainConfig(epochs=2, lr=0.1, device="cpu", weight_decay=5e-4)


def test_magnitude_masks_keep_exactly_the_largest():
    net = tiny_net()
    masks = magnitude_masks(net, {"0": 0.75, "4": 0.5})
    for name, s in (("0", 0.75), ("4", 0.5)):
        w = net.get_submodule(name).weight.detach().abs().flatten()
        keep = round((1 - s) * w.numel())
        m = masks[name].flatten()
        assert int(m.sum()) == keep
        assert w[m].min() >= w[~m].max()  # every kept weight outweighs every removed one


def test_masks_are_held_during_retraining():
    net = tiny_net()
    masks = magnitude_masks(net, {"0": 0.8, "4": 0.5})
    free = copy.deepcopy(net)
    with torch.no_grad():
        for name, m in masks.items():
            free.get_submodule(name).weight.mul_(m)
    before = {n: net.get_submodule(n).weight.detach().clone() for n in masks}
    hist = fit(net, loader(), None, CFG, hooks=[MaskHook(masks)])
    for name, m in masks.items():
        w = net.get_submodule(name).weight.detach()
        assert torch.all(w[~m] == 0)
        assert not torch.equal(w[m], before[name][m])  # the kept weights did train
    assert all(r["masked_nonzero"] == 0 for r in hist)
    # the same training without the hook regrows the pruned weights: the check above can fail
    fit(free, loader(), None, CFG)
    assert any(bool((free.get_submodule(n).weight.detach()[~m] != 0).any()) for n, m in masks.items())


def lloyd_1d(values: np.ndarray, centroids: np.ndarray, iters: int = 300) -> np.ndarray:
    """Plain Lloyd iterations in 1-D (the oracle for scikit-learn's k-means from the same init)."""
    c = centroids.astype(np.float64).copy()
    for _ in range(iters):
        labels = np.abs(values[:, None] - c[None, :]).argmin(1)
        new = np.array([values[labels == k].mean() if (labels == k).any() else c[k] for k in range(len(c))])
        if np.allclose(new, c, rtol=0, atol=1e-12):
            break
        c = new
    return c


def test_linear_init_spans_min_to_max():
    v = np.array([0.3, -1.0, 2.0, 0.5])
    assert linear_init(v, 4).ravel().tolist() == [-1.0, 0.0, 1.0, 2.0]


def test_weight_sharing_matches_lloyd_from_linear_init():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3))  # 432 weights, uniform: no cluster of the linear init is empty
    with torch.no_grad():
        net[0].weight[0, 0] = 0  # 9 pruned weights
    w = net[0].weight.detach().flatten().double().numpy().copy()
    nz = w[w != 0]
    shared = share_weights(net, {"0": 3})["0"]  # 7 centroids + the zero
    oracle = lloyd_1d(nz, linear_init(nz, 7).ravel())
    scale = float(nz.std())
    assert len(shared.codebook) == 7
    assert np.allclose(np.sort(shared.codebook.double().numpy()), np.sort(oracle), rtol=0, atol=1e-3 * scale)
    after = net[0].weight.detach()
    assert torch.equal(after, shared.weight())
    assert int((after == 0).sum()) == 9 and bool((after[0, 0] == 0).all())  # pruned weights stay 0
    # a k-means fixed point: each survivor sits at its nearest centroid, each centroid near its members' mean
    table = shared.codebook.double()
    orig = torch.from_numpy(nz)
    nearest = (orig[:, None] - table[None]).abs().argmin(1)
    assert torch.equal(after.flatten()[after.flatten() != 0].double(), table[nearest])
    for k in range(len(table)):
        assert abs(float(orig[nearest == k].mean()) - float(table[k])) < 1e-3 * scale


def test_centroid_gradient_is_the_sum_of_member_gradients():
    # y = W x, loss = sum(c * y): dL/dW_ij = c_i x_j, summed by hand over each cluster
    lin = nn.Linear(3, 2, bias=False)
    symbols = torch.tensor([[1, 2, 0], [2, 1, 1]])
    layer = SharedLayer(symbols, torch.tensor([0.5, -0.25]), bits=2)
    with torch.no_grad():
        lin.weight.copy_(layer.weight())
    model = nn.Sequential(lin)
    hook = SharingHook({"0": layer})
    x, c = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, -1.0])
    (c * model(x)).sum().backward()
    hook.after_backward(model, 0)
    g = [[2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]]  # c_i x_j
    g1 = g[0][0] + g[1][1] + g[1][2]  # members of centroid 0 (symbol 1)
    g2 = g[0][1] + g[1][0]  # members of centroid 1 (symbol 2)
    assert lin.weight.grad.tolist() == [[g1, g2, 0.0], [g2, g1, g1]]


def test_sharing_hook_trains_centroids_and_keeps_members_tied():
    net = tiny_net()
    masks = magnitude_masks(net, {"0": 0.5, "4": 0.25})
    with torch.no_grad():
        for n, m in masks.items():
            net.get_submodule(n).weight.mul_(m)
    shared = share_weights(net, {"0": 3, "4": 2})
    start = {n: s.codebook.clone() for n, s in shared.items()}
    hook = SharingHook(shared)
    assert hook.no_weight_decay(net) == {"0.weight", "4.weight"}
    fit(net, loader(), None, CFG, hooks=[hook])
    for name, layer in hook.codebooks(net).items():
        w = net.get_submodule(name).weight.detach()
        assert torch.equal(w, layer.weight())  # every member equals its centroid, bit for bit
        assert torch.equal(w == 0, masks[name] == 0)
        assert not torch.equal(layer.codebook, start[name])  # centroids moved
