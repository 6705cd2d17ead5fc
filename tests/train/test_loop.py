import json

import pytest
import torch
from torch import nn

from filterprune.checkpoint import read_checkpoint
from filterprune.config import TrainConfig
from filterprune.models import create_model
from filterprune.train import TrainHook, build_optimizer, evaluate, fit, lr_at


class ToyLoader:
    """Seeded (seed, epoch) shuffling, like the real BatchLoader: no state to save."""

    def __init__(self, n=192, batch=32, seed=0):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = (self.x.mean((1, 2, 3)) > 0).long() + 2 * (self.x[:, 0, 0, 0] > 0).long()
        self.batch, self.seed, self.epoch = batch, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.y) // self.batch

    def __iter__(self):
        perm = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for i in range(len(self)):
            idx = perm[i * self.batch:(i + 1) * self.batch]
            yield self.x[idx], self.y[idx]


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, warmup_epochs=0.5, device="cpu")


def _model():
    torch.manual_seed(0)
    return create_model("convnet_small", num_classes=4)


def test_lr_schedule_shapes():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2, schedule="cosine")
    assert lr_at(cfg, 0, 10) == pytest.approx(0.1 / 20)
    assert lr_at(cfg, 20, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 99, 10) < 0.001
    step = TrainConfig(epochs=10, lr=0.1, schedule="step", milestones=(3, 6), gamma=0.1)
    assert [round(lr_at(step, e * 10, 10), 6) for e in (0, 3, 6)] == [0.1, 0.01, 0.001]


def test_no_weight_decay_on_bn_and_biases():
    net = _model()
    opt = build_optimizer(net, TrainConfig(weight_decay=1e-3), no_decay={"features.0.weight"})
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in net.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1 and name != "features.0.weight"), name
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_fit_learns_and_writes_run_folder(tmp_path):
    net, loader = _model(), ToyLoader()
    before = evaluate(net, loader)["acc"]
    history = fit(net, loader, loader, TrainConfig(epochs=4, lr=0.05, device="cpu"), run_dir=tmp_path)
    assert history[-1]["val_acc"] > before + 20
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
    _, meta = read_checkpoint(tmp_path / "checkpoints" / "epoch_003.safetensors")
    assert meta["epoch"] == 3 and meta["arch"]["name"] == "convnet_small"


class Killer(TrainHook):
    """Dies in the middle of an epoch, like a process killed by the OS."""

    def __init__(self, at_step):
        self.at_step = at_step

    def after_backward(self, model, step):
        if step == self.at_step:
            raise KeyboardInterrupt


def test_resume_after_a_mid_epoch_kill_equals_an_uninterrupted_run(tmp_path):
    loader = ToyLoader()
    full = _model()
    expected = fit(full, loader, loader, CFG, run_dir=tmp_path / "full")

    killed = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(killed, loader, loader, CFG, run_dir=tmp_path / "killed", hooks=[Killer(at_step=len(loader) + 3)])
    resumed = _model()  # a fresh process: only the files survive
    got = fit(resumed, loader, loader, CFG, run_dir=tmp_path / "killed", resume=True)

    drop = ("epoch_time_s", "train_images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == [
        {k: v for k, v in r.items() if k not in drop} for r in expected
    ]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_hook_runs_between_backward_and_step():
    seen = []

    class Spy(TrainHook):
        def after_backward(self, model, step):
            w = model.features[0].weight
            seen.append((w.grad is not None, w.detach().clone()))

    net, loader = _model(), ToyLoader()
    fit(net, loader, None, TrainConfig(epochs=1, device="cpu"), hooks=[Spy()])
    assert all(has_grad for has_grad, _ in seen)
    assert not torch.equal(seen[0][1], seen[1][1])  # the step happened after the hook


def test_divergence_is_reported():
    net, loader = _model(), ToyLoader()
    with nn.utils.parametrize.cached(), pytest.raises(FloatingPointError, match="lower the lr"):
        fit(net, loader, None, TrainConfig(epochs=1, lr=1e12, device="cpu"))


@pytest.mark.parametrize("cpu_amp,train_dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_cpu_amp_runs_the_training_forward_in_bfloat16_and_evaluation_in_float32(cpu_amp, train_dtype):
    seen = {True: set(), False: set()}  # module.training -> dtypes of the first conv's output
    net, loader = _model(), ToyLoader()
    net.features[0].register_forward_hook(lambda m, i, o: seen[m.training].add(o.dtype))
    history = fit(net, loader, loader, TrainConfig(epochs=1, device="cpu", cpu_amp=cpu_amp))
    assert seen == {True: {train_dtype}, False: {torch.float32}}
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay float32
    assert history[-1]["val_acc"] == evaluate(net, loader, "cpu")["acc"]
