"""Data-parallel training over two gloo processes equals one process with the same global batch.

Oracles: one process running the same recipe on the same global batches (weights within 1e-5); a
run without synchronised BatchNorm as the negative control (it must differ, so the check can fail);
an uninterrupted run for resume; the single-process C-SGD result for C-SGD under DDP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from filterprune.config import TrainConfig
from filterprune.data import BatchLoader, load_data
from filterprune.methods.csgd_run import CSGDOptions, csgd_prune
from filterprune.models import create_model
from filterprune.train.ddp import synced_batchnorm
from filterprune.train.loop import fit

pytestmark = pytest.mark.slow  # each test spawns two processes: ~10-20 s on the shared 2-core machine

WORLD = 2
CFG = dict(epochs=2, batch_size=64, lr=0.05, amp="off", device="cpu", warmup_epochs=0.0)


def _data(shard=(0, 1)):
    splits = load_data("digits")
    train = splits.train.subset(torch.arange(256))  # 4 global batches of 64 per epoch
    return (BatchLoader(train, 64, train=True, seed=1, shard=shard),
            BatchLoader(splits.val, 72, train=False, shard=shard))


def _model():
    torch.manual_seed(0)
    return create_model("convnet_small")


def _train(shard, sync_bn: bool, run_dir=None, epochs: int = 2, resume: bool = False):
    model = _model()
    train, val = _data(shard)
    history = fit(model, train, val, TrainConfig(**{**CFG, "epochs": epochs}, sync_bn=sync_bn), run_dir=run_dir,
                  resume=resume)
    return model.state_dict(), history


def _csgd(shard, run_dir=None):
    model = _model()
    train, val = _data(shard)
    cfg = TrainConfig(**{**CFG, "epochs": 3, "lr": 0.02}, sync_bn=True)
    res = csgd_prune(model, torch.zeros(2, 1, 8, 8), train, val, cfg, ratio=0.5, run_dir=run_dir,
                     options=CSGDOptions(centripetal=3.0, force=True))
    return model.state_dict(), res.clusters


def _init(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def _worker_train(rank: int, init_file: str, out: str, run_dir: str) -> None:
    _init(rank, init_file)
    try:
        synced, hist = _train((rank, WORLD), True, run_dir=f"{run_dir}/synced")
        plain, _ = _train((rank, WORLD), False)
        _train((rank, WORLD), True, run_dir=f"{run_dir}/resumed")
        if rank == 0:  # as if killed during the second epoch: its checkpoint never landed
            Path(f"{run_dir}/resumed/checkpoints/epoch_001.safetensors").unlink()
        dist.barrier()
        resumed, resumed_hist = _train((rank, WORLD), True, run_dir=f"{run_dir}/resumed", resume=True)
        torch.save({"synced": synced, "hist": hist, "plain": plain, "resumed": resumed,
                    "resumed_hist": resumed_hist}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_ddp_with_sync_bn_equals_one_process_and_resumes(tmp_path):
    out, runs = str(tmp_path / "state"), str(tmp_path / "runs")
    mp.spawn(_worker_train, args=(str(tmp_path / "init"), out, runs), nprocs=WORLD, join=True)
    single, single_hist = _train((0, 1), True)
    got = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for g in got:
        assert _max_diff(g["synced"], single) < 1e-5
        assert _max_diff(g["resumed"], single) < 1e-5
        for a, b in zip(g["hist"], single_hist, strict=True):  # metrics reduced over the processes
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
            assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-9)
        assert [r["epoch"] for r in g["resumed_hist"]] == [0, 1]
    assert _max_diff(got[0]["plain"], single) > 1e-4  # per-process BN statistics: not the same run
    params = {k: v for k, v in got[0]["plain"].items() if "running_" not in k}  # BN statistics stay per process
    assert _max_diff(params, {k: got[1]["plain"][k] for k in params}) == 0.0  # DDP keeps the weights equal
    # only rank 0 wrote, and what it wrote resumes
    assert sorted(p.name for p in (tmp_path / "runs" / "synced" / "checkpoints").iterdir()) == [
        "epoch_000.safetensors", "epoch_001.safetensors"]


def _worker_csgd(rank: int, init_file: str, out: str, run_dir: str) -> None:
    _init(rank, init_file)
    try:
        state, clusters = _csgd((rank, WORLD), run_dir=run_dir if rank == 0 else None)
        torch.save({"state": state, "clusters": clusters}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_csgd_under_ddp_equals_one_process(tmp_path):
    out = str(tmp_path / "state")
    mp.spawn(_worker_csgd, args=(str(tmp_path / "init"), out, str(tmp_path / "run")), nprocs=WORLD, join=True)
    single, clusters = _csgd((0, 1))
    for r in range(WORLD):
        saved = torch.load(f"{out}.{r}")
        got = saved["state"]
        assert saved["clusters"] == clusters
        assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in single.items()}
        assert _max_diff(got, single) < 1e-5
    assert (tmp_path / "run" / "clusters.json").is_file()


def test_synced_batchnorm_is_a_no_op_in_one_process_and_restores_classes():
    model = _model()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with synced_batchnorm(model):
        assert all(type(m) is torch.nn.BatchNorm2d for m in bns)
    assert all(type(m) is torch.nn.BatchNorm2d for m in bns)
