"""``filterprune prune`` and ``filterprune demo`` end to end on digits."""

import json
from dataclasses import replace

import pytest
import torch

from filterprune.api import load
from filterprune.cli.main import main
from filterprune.metrics import count
from filterprune.workflows.demo import DEMO_FINETUNE, DEMO_TRAIN, run_demo


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["-q", "train", "--model", "convnet_small", "--data", "digits", "--epochs", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    return out / "model.safetensors"


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_prune_writes_summary_and_a_loadable_pruned_model(base_weights, tmp_path, criterion, capsys):
    out = tmp_path / "pruned"
    argv = ["-q", "prune", "--weights", str(base_weights), "--data", "digits", "--criterion", criterion,
            "--target-macs", "0.5", "--finetune-epochs", "1", "--finetune-device", "cpu", "--num-batches", "2",
            "--out", str(out)]
    assert main(argv) == 0
    assert "MACs" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("base", "pruned", "finetuned"):
        assert set(summary[stage]) == {"val_acc", "test_acc"}
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)
    assert summary["report"]["max_error"] < 1e-4
    assert set(summary["latency"]["pruned"]) == {"1", "64"}
    model = load(out / "model.safetensors")
    macs, params = count(model, torch.randn(1, 1, 8, 8))
    assert (macs, params) == (summary["macs"]["pruned"], summary["params"]["pruned"])
    assert main(["-q", "eval", "--weights", str(out / "model.safetensors"), "--data", "digits"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == pytest.approx(summary["finetuned"]["test_acc"])


@pytest.mark.parametrize("extra,needle", [
    (["--criterion", "nope", "--target-macs", "0.5"], "'nope' is not a criterion"),
    (["--target-macs", "1.5"], "target_macs"),
    (["--target-macs", "0.9", "--min-channels", "12"], "cannot reach target_macs=0.9"),
])
def test_prune_bad_input_leaves_no_output_folder(base_weights, tmp_path, extra, needle, capsys):
    out = tmp_path / "pruned"
    argv = ["-q", "prune", "--weights", str(base_weights), "--data", "digits", "--finetune-epochs", "0",
            "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned")]


def test_prune_refuses_an_existing_output_folder(base_weights, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    argv = ["-q", "prune", "--weights", str(base_weights), "--data", "digits", "--target-macs", "0.3",
            "--out", str(out)]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_demo_trains_prunes_and_prints_the_table(tmp_path):
    result = run_demo(out=str(tmp_path), train=replace(DEMO_TRAIN, epochs=3), finetune=replace(DEMO_FINETUNE, epochs=1))
    text = result["text"]
    assert "fine-tuned" in text and "features.0" in text
    assert result["pruned"]["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "base" / "summary.json").is_file() and (tmp_path / "pruned" / "summary.json").is_file()
