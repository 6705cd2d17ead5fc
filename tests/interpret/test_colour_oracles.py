"""Hand-computed oracles for the colour rules and the random-subset statistic: a kernel index worked out on
paper, the response index read at the BatchNorm after the conv, and the exact p-value against scipy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filterprune.interpret import (
    activation_module,
    kernel_colour_index,
    response_colour_index,
    subset_statistic,
    top_response_colour_index,
)
from filterprune.interpret.study import hypergeom_tail
from filterprune.models import create_model


@pytest.mark.parametrize(("w", "std", "expected"), [
    ((1.0, 0.0, 0.0), (1.0, 1.0, 1.0), 2 / 3),  # W_p = (1,0,0): chroma (2,-1,-1)/3, energy 6/9 of 1
    ((1.0, 0.0, 0.0), (0.5, 1.0, 1.0), 2 / 3),  # W_p = (2,0,0): the index does not depend on scale
    ((1.0, 1.0, 0.0), (1.0, 0.5, 1.0), 0.4),  # W_p = (1,2,0), mean 1: chroma (0,1,-1) energy 2 of 5
    ((0.2, 0.25, 0.3), (0.2, 0.25, 0.3), 0.0),  # grey in pixel space
])
def test_kernel_index_by_hand(w, std, expected):
    kernel = torch.tensor(w).view(1, 3, 1, 1).repeat(1, 1, 3, 3)  # same 1x1 pattern at every tap
    assert kernel_colour_index(kernel, std).item() == pytest.approx(expected, abs=1e-12)


def test_activation_module_is_the_batchnorm_after_the_conv():
    vgg_like = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3))
    x = torch.randn(1, 3, 8, 8)
    assert activation_module(vgg_like, "0", x) == "1"
    assert activation_module(vgg_like, "3", x) == "3"  # no BatchNorm reads it
    r20 = create_model("resnet20")
    x = torch.randn(1, 3, 32, 32)
    assert activation_module(r20, "layer1.0.conv1", x) == "layer1.0.bn1"
    assert activation_module(r20, "conv1", x) == "bn1"
    assert r20.training  # mode restored


def test_response_index_is_read_after_the_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.5, -0.5, 0.0, 0.1]))
        net[1].bias.copy_(torch.tensor([0.3, -0.2, 0.0, 1.0]))
    net.eval()
    x = torch.randn(6, 3, 5, 5)
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    with torch.no_grad():
        r_colour = net(x).mean((0, 2, 3)).double()  # net ends in ReLU: relu(bn(conv(x)))
        r_grey = net(luma).mean((0, 2, 3)).double()
    index, colour, grey = response_colour_index(net, "0", [(x, torch.zeros(6))], [0.0] * 3, [1.0] * 3)
    assert torch.allclose(colour, r_colour, atol=1e-6) and torch.allclose(grey, r_grey, atol=1e-6)
    assert torch.allclose(index, (1 - r_grey / r_colour).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize(("n", "m", "k"), [(64, 20, 20), (64, 5, 20), (16, 7, 8), (10, 10, 3)])
def test_hypergeometric_tail_against_scipy(n, m, k):
    hypergeom = pytest.importorskip("scipy.stats").hypergeom
    for x in range(0, k + 1):
        assert hypergeom_tail(n, m, k, x) == pytest.approx(float(hypergeom.sf(x - 1, n, m, k)), rel=1e-9, abs=1e-15)


def test_subset_statistic_against_the_exact_law():
    selective = torch.zeros(40, dtype=torch.bool)
    selective[:12] = True
    s = subset_statistic(list(range(8)) + [20, 21], selective, draws=3000, seed=3)  # 8 of 10 selective
    hypergeom = pytest.importorskip("scipy.stats").hypergeom
    assert s["count"] == 8 and s["k"] == 10
    assert s["p_value_exact"] == pytest.approx(float(hypergeom.sf(7, 40, 12, 10)))
    assert s["random_mean"] == pytest.approx(10 * 12 / 40, abs=0.1)  # k m / n
    assert s["random_std"] == pytest.approx(float(hypergeom.std(40, 12, 10)), rel=0.1)
    assert s["p_value"] >= 1 / 3001 and s["p_value"] < 0.01
    assert subset_statistic([0], selective, draws=5, seed=0) == subset_statistic([0], selective, draws=5, seed=0)


def test_subset_statistic_refuses_bad_indices():
    sel = torch.tensor([True, False, False])
    with pytest.raises(ValueError, match="distinct"):
        subset_statistic([0, 0], sel)
    with pytest.raises(ValueError, match="distinct"):
        subset_statistic([3], sel)


def test_top_response_index_against_a_brute_force_oracle():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
        net[1].bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    net.eval()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    batches = [(torch.randn(5, 3, 6, 6), torch.zeros(5)), (torch.randn(4, 3, 6, 6), torch.zeros(4))]
    top = 4
    index, colour, grey = top_response_colour_index(net, "0", batches, mean, std, top=top)
    # oracle: loop over images; response = relu(bn(conv)) at the colour image's argmax position
    xs = torch.cat([x for x, _ in batches])
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    luma = ((xs * s + m) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    xg = (luma.expand_as(xs) - m) / s
    with torch.no_grad():
        a_c, a_g = net(xs.clone()), net(xg)
    for c in range(3):
        pairs = []
        for i in range(len(xs)):
            j = int(a_c[i, c].flatten().argmax())
            pairs.append((float(a_c[i, c].flatten()[j]), float(a_g[i, c].flatten()[j])))
        best = sorted(pairs, reverse=True)[:top]
        rc, rg = sum(p[0] for p in best) / top, sum(p[1] for p in best) / top
        assert colour[c].item() == pytest.approx(rc, rel=1e-5) and grey[c].item() == pytest.approx(rg, rel=1e-5, abs=1e-7)
        assert index[c].item() == pytest.approx(min(1.0, max(0.0, 1 - rg / rc)), abs=1e-5)
    with pytest.raises(ValueError, match="top"):
        top_response_colour_index(net, "0", batches, mean, std, top=0)


def test_top_response_index_separates_colour_from_luminance_filters():
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, 0.0])  # R - G: silent on grey
        conv.weight[1, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0])  # luminance: grey keeps its response
    x = torch.rand(10, 3, 4, 4)
    index, _, _ = top_response_colour_index(nn.Sequential(conv), "0", [(x, torch.zeros(10))], [0.0] * 3, [1.0] * 3,
                                            top=3)
    assert index[0].item() == pytest.approx(1.0) and index[1].item() < 0.2
