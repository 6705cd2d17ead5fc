"""``filterprune prune --target-latency`` on digits with the closed-form timer (tests/latency_mocks.py):
the table is cached in the run folder and a resumed run reuses it; the flags are checked before any work."""

from __future__ import annotations

import json

import pytest

import latency_mocks as mocks
from filterprune.cli.main import main
from filterprune.config import PruneConfig, PruneRunConfig, TrainConfig
from filterprune.latency_target import LatencyTarget
from filterprune.metrics import latency_table
from filterprune.workflows.prune_run import run_prune

FLAGS = ["--model", "convnet_small", "--data", "digits", "--criterion", "l1", "--finetune-epochs", "0",
         "--finetune-device", "cpu"]


@pytest.fixture
def mocked(monkeypatch):
    calls = {"profile": 0}

    def counting(m, x, names):
        calls["profile"] += 1
        return mocks.profiler(m, x, names)

    monkeypatch.setattr(latency_table, "profile_layers", counting)
    monkeypatch.setattr(latency_table, "perf_timer", mocks.timer)
    return calls


def test_cli_target_latency_writes_the_table_and_the_measured_record(mocked, tmp_path):
    out = tmp_path / "run"
    assert main(["-q", "prune", *FLAGS, "--target-latency", "0.3", "--latency-batch", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    lat = summary["report"]["latency"]
    assert lat["batch_size"] == 4 and lat["target"] == 0.3 and lat["iterations"]
    assert abs(lat["measured"] - 0.3) <= lat["tolerance"] and lat["met"]
    jsonschema = pytest.importorskip("jsonschema")
    from filterprune.workflows.summary_schema import schema_for

    jsonschema.validate(summary, schema_for(summary))
    table = json.loads((out / "latency_table.json").read_text())
    assert table["meta"]["batch_size"] == 4 and lat["table"]["reused"] is False


def test_resumed_run_reuses_the_table(mocked, tmp_path, monkeypatch):
    cfg = PruneRunConfig(model="convnet_small", data="digits", out=str(tmp_path / "run"),
                         prune=PruneConfig(target_latency=0.3, latency_batch=2),
                         finetune=TrainConfig(epochs=0, device="cpu"))
    real = LatencyTarget.select

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(LatencyTarget, "select", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prune(cfg)
    assert (tmp_path / "run" / "latency_table.json").exists() and mocked["profile"] > 0
    mocked["profile"] = 0
    monkeypatch.setattr(LatencyTarget, "select", real)
    summary = run_prune(cfg, resume=True)
    # not measured again: only the drift check's one median of the model (``repeats`` profiled forwards)
    repeats = json.loads((tmp_path / "run" / "latency_table.json").read_text())["meta"]["repeats"]
    assert mocked["profile"] == repeats
    assert summary["report"]["latency"]["table"]["reused"] is True


@pytest.mark.parametrize(("extra", "message"), [
    (["--target-latency", "0.3", "--target-macs", "0.3"], "give one target"),
    (["--target-latency", "1.5"], "target_latency"),
    (["--target-latency", "0.3", "--step-ratio", "0.1", "--steps", "2"], "score criteria"),
    (["--round-to", "-1"], "round_to"),
])
def test_bad_latency_flags_are_one_line_errors(tmp_path, capsys, extra, message):
    assert main(["-q", "prune", *FLAGS, *extra, "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
