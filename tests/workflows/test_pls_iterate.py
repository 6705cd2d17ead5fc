"""``pls_vip_iterate``: p of the remaining channels per iteration, the MACs target hit, the CLI spelling."""

from __future__ import annotations

import json

import pytest
import torch

from filterprune.cli.main import main
from filterprune.metrics import count
from filterprune.workflows.pls_iterate import pls_vip_iterate
from models_zoo import build


def data(n: int = 3, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.arange(size) % 10) for _ in range(n)]


def test_iterations_remove_p_of_the_remaining_channels_until_the_macs_target():
    model, x = build("residual")
    base_macs, _ = count(model, x)
    calls = []
    records = pls_vip_iterate(
        model, x, data(), p=0.2, target_macs=0.45,
        finetune=lambda net, it: calls.append(("step", it)), final_finetune=lambda net: calls.append(("final",)),
        evaluate=lambda net: {"n": float(len(calls))},
    )
    k = len(records)
    assert k >= 2
    channels = 16 + 24 + 24  # stem/residual group, block1.conv1, block2.conv1
    for r in records[:-1]:  # every iteration but the last removes 20% of what was left
        assert r.removed_channels == pytest.approx(0.2 * channels, abs=1)
        channels -= r.removed_channels
        assert r.channels == channels
        assert r.macs_reduction < 0.45 - 0.01
    last = records[-1]
    assert last.removed_channels <= round(0.2 * channels)
    assert abs(last.macs_reduction - 0.45) <= 0.01
    assert last.macs == count(model, x)[0] and last.macs_reduction == pytest.approx(1 - last.macs / base_macs)
    assert all(r.max_error is not None and r.max_error < 1e-4 for r in records)
    assert calls == [("step", i) for i in range(1, k)] + [("final",)]  # fine-tune between, final at the end
    assert [r.pruned["n"] for r in records] == list(range(k))
    assert [r.finetuned["n"] for r in records] == list(range(1, k + 1))


def test_iterations_cap_without_a_target():
    model, x = build("conv_chain")
    records = pls_vip_iterate(model, x, data(), p=0.1, iterations=2, criterion_kwargs={"samples": 16})
    assert [r.iteration for r in records] == [1, 2]
    assert records[0].channels == 16 + 24 + 32 - round(0.1 * 72)
    assert records[1].channels == records[0].channels - round(0.1 * records[0].channels)


@pytest.mark.parametrize("kwargs,needle", [
    ({"p": 1.0, "iterations": 1}, "p must be"),
    ({"p": 0.1}, "nothing would stop"),
    ({"p": 0.1, "target_macs": 1.2}, "target_macs"),
    ({"p": 0.1, "iterations": 0}, "iterations"),
])
def test_bad_arguments(kwargs, needle):
    model, x = build("conv_chain")
    with pytest.raises(ValueError, match=needle):
        pls_vip_iterate(model, x, data(), **kwargs)


def test_cli_step_ratio_runs_the_iterations(tmp_path, capsys):
    out = tmp_path / "pls"
    argv = ["-q", "prune", "--model", "convnet_small", "--data", "digits", "--criterion", "pls-vip",
            "--criterion-options", "samples=300,pooling=avg", "--target-macs", "0.4", "--step-ratio", "0.1",
            "--step-finetune-epochs", "1", "--finetune-epochs", "1", "--finetune-device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    its = summary["iterations"]
    assert len(its) >= 2 and summary["macs"]["removed_fraction"] == pytest.approx(0.4, abs=0.01)
    assert all(set(r["pruned"]) == {"val_acc", "test_acc"} for r in its)
    assert all(set(r["finetuned"]) == {"val_acc", "test_acc"} for r in its[:-1]) and its[-1]["finetuned"] == {}
    assert summary["finetune_epochs"] == 1 and len(summary["report"]["steps"]) == len(its)
    assert summary["config"]["prune"]["step_ratio"] == 0.1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    assert "--step-ratio" in capsys.readouterr().out
