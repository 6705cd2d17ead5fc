"""Taylor scores under data-parallel processes equal one process's (issue 12: gradients all-reduced)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from filterprune.criteria import ScoringContext, create_criterion
from filterprune.data import ArrayDataset, BatchLoader
from filterprune.graph.trace import trace_groups
from filterprune.models import create_model


def _setup(rank: int, world: int):
    torch.manual_seed(0)
    model = create_model("convnet_small", num_classes=4, in_chans=1, image_size=8)
    g = torch.Generator().manual_seed(1)
    ds = ArrayDataset(torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=g),
                      torch.randint(0, 4, (50,), generator=g), ["a", "b", "c", "d"], (0.5,), (0.25,))
    # batch 12 over 50 images: the last global batch (2 images) splits 1 + 1, the others 6 + 6
    data = BatchLoader(ds, 12, train=False, shard=(rank, world))
    x = torch.randn(1, 1, 8, 8)
    return model, x, trace_groups(model, x), data


def _scores(rank: int, world: int) -> dict:
    model, x, groups, data = _setup(rank, world)
    return create_criterion("taylor").score(ScoringContext(model, x, groups, data=data, num_batches=10))


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_scores(rank, world), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_one_process_share_of_the_batch_is_not_the_global_batch():
    """Control: a share's scores differ from the global batch's, so the equality below is not vacuous."""
    whole, share = _scores(0, 1), _scores(0, 2)  # no process group: the share is scored alone
    assert any(not torch.allclose(whole[k], share[k], rtol=1e-3) for k in whole)


@pytest.mark.slow  # two spawned processes: ~10 s on 2 shared cores
def test_two_processes_all_reduce_into_the_single_process_scores(tmp_path):
    out = str(tmp_path / "scores")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    single = _scores(0, 1)
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert got.keys() == single.keys()
        for gid, v in single.items():
            torch.testing.assert_close(got[gid], v, rtol=1e-5, atol=1e-9)
