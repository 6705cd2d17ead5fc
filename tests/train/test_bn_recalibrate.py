"""BatchNorm re-calibration against oracles: the exact statistics of each BatchNorm's input, collected by
independent hooks; torch's own cumulative average on one batch; weights untouched, modes restored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from filterprune.train.bn_recalibrate import batchnorms, recalibrate_bn


class Net(nn.Module):
    """conv-BN-ReLU, a residual block (two BNs on the sum path), a BatchNorm1d head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.block(x)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    for _, bn in batchnorms(net):  # stale statistics, as after pruning
        bn.running_mean.uniform_(-3, 3)
        bn.running_var.uniform_(0.1, 9)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return net.eval()


def _batches(sizes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 6, 6, generator=gen) * 2 + 1, torch.zeros(n, dtype=torch.long)) for n in sizes]


def _hooked_inputs(net: nn.Module) -> tuple[dict, list]:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in batchnorms(net)}
    handles = [bn.register_forward_pre_hook(lambda m, inp, name=name: seen[name].append(inp[0].detach().clone()))
               for name, bn in batchnorms(net)]
    return seen, handles


@pytest.mark.parametrize("sizes, images", [((8, 8, 8), None), ((8, 8, 8), 20), ((5, 7, 9), None)])
def test_running_stats_are_the_exact_moments_of_each_bn_input(sizes, images):
    net = _net()
    seen, handles = _hooked_inputs(net)  # registered first: they see what the recalibration's hooks see
    out = recalibrate_bn(net, _batches(sizes), images=images)
    for h in handles:
        h.remove()
    total = sum(sizes) if images is None else images
    assert out == {"images": total, "layers": 4}
    for name, bn in batchnorms(net):
        x = torch.cat(seen[name]).double()  # every value this BN received, (N, C[, H, W])
        assert x.shape[0] == total  # the batch that crossed ``images`` was cut
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        torch.testing.assert_close(bn.running_mean.double(), per_channel.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), per_channel.var(1, unbiased=True), rtol=1e-5, atol=1e-6)


def test_first_bn_statistics_equal_those_of_the_conv_outputs_of_the_images():
    """Independent of batching and of train-mode propagation: the stem BN sees conv(x) of the N images."""
    net = _net()
    batches = _batches((4, 6, 10))
    recalibrate_bn(net, batches)
    with torch.no_grad():
        y = net.stem[0](torch.cat([x for x, _ in batches])).double()  # (20, 6, 6, 6)
    torch.testing.assert_close(net.stem[1].running_mean.double(), y.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.stem[1].running_var.double(), y.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)


def test_one_batch_matches_torch_cumulative_average():
    """On one batch, torch's own momentum=None update gives the same statistics (a second oracle)."""
    net, ref = _net(), _net()
    batches = _batches((16,))
    recalibrate_bn(net, batches)
    for _, bn in batchnorms(ref):
        bn.reset_running_stats()
        bn.momentum = None
    ref.train()
    with torch.no_grad():
        ref(batches[0][0])
    for (_, a), (_, b) in zip(batchnorms(net), batchnorms(ref), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)


def test_weights_and_other_state_unchanged_and_modes_restored():
    net = _net()
    net.block.train()  # a mixed-mode model: each flag must come back as it was
    before = copy.deepcopy(net.state_dict())
    modes = {n: m.training for n, m in net.named_modules()}
    recalibrate_bn(net, _batches((8, 8)))
    after = net.state_dict()
    stats = {f"{n}.{b}" for n, _ in batchnorms(net) for b in ("running_mean", "running_var", "num_batches_tracked")}
    for key, value in before.items():
        if key not in stats:
            assert torch.equal(after[key], value), key  # weights, biases: bit for bit
    assert any(not torch.equal(after[k], before[k]) for k in stats if k.endswith("running_mean"))
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert not any(p.grad is not None for p in net.parameters())


def test_eval_mode_outputs_of_the_first_bn_are_normalised():
    """After re-calibration, the eval-mode stem BN maps the N images' conv outputs to mean beta, std gamma."""
    net = _net()
    batches = _batches((32, 32))
    recalibrate_bn(net, batches)
    bn = net.stem[1]
    with torch.no_grad():
        z = bn(net.stem[0](torch.cat([x for x, _ in batches])))
    torch.testing.assert_close(z.mean((0, 2, 3)), bn.bias.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3)), bn.weight.detach().abs(), atol=1e-3, rtol=1e-3)


def test_no_batchnorm_and_bad_arguments():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    state = copy.deepcopy(net.state_dict())
    assert recalibrate_bn(net, _batches((4,))) == {"images": 0, "layers": 0}
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="images"):
        recalibrate_bn(_net(), _batches((4,)), images=0)
    with pytest.raises(ValueError, match="no image"):
        recalibrate_bn(_net(), [])
