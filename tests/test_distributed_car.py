"""Sharded CAR over two gloo processes gives the scores of one process."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from filterprune.criteria import ScoringContext
from filterprune.criteria.car import car_analysis
from filterprune.distributed import all_reduce_sum, current_shard
from filterprune.graph.trace import trace_groups
from models_zoo import build


def _setup():
    torch.set_num_threads(1)
    model, x = build("residual")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        xb = torch.randn(12, 3, 8, 8, generator=g)
        batches.append((xb, torch.randint(0, 10, (12,), generator=g)))
    with torch.no_grad():  # centre the logits so that predictions vary and removals change accuracy
        model.fc.bias -= torch.cat([model(xb) for xb, _ in batches]).mean(0)
        batches = [(xb, torch.where(torch.arange(12) % 2 == 0, model(xb).argmax(1), y)) for xb, y in batches]
    return ScoringContext(model, x, trace_groups(model, x), data=batches, num_batches=2)


def _scores(ctx, fast: bool) -> dict:
    res = car_analysis(ctx, fast=fast, max_rows=36)
    return {"drop": res.drop, "delta_loss": res.delta_loss, "scores": res.scores(), "base": res.base}


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert current_shard() == (rank, world)
        assert torch.equal(all_reduce_sum(torch.tensor([rank + 1.0])), torch.tensor([3.0]))
        ctx = _setup()
        result = {"fast": _scores(ctx, True), "naive": _scores(ctx, False)}
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_scores(tmp_path):
    out = str(tmp_path / "scores")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    ctx = _setup()
    single = _scores(ctx, True)
    assert any(bool((d != 0).any()) for d in single["drop"].values())  # not vacuous
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        for mode in ("fast", "naive"):
            part = got[mode]
            assert part["base"] == single["base"]
            for gid, d in single["drop"].items():
                assert torch.equal(part["drop"][gid], d), (rank, mode, gid)
                torch.testing.assert_close(part["delta_loss"][gid], single["delta_loss"][gid], rtol=1e-5, atol=2e-6)
                assert torch.equal(part["scores"][gid].argsort(stable=True), single["scores"][gid].argsort(stable=True))
