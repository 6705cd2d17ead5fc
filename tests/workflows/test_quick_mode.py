"""Quick mode and evaluation control on ``filterprune prune`` (digits): ``--eval-images``, ``--train-images``,
``--eval-every`` and ``--bn-recalibrate``, checked against what the run folder and an independent
evaluation say."""

from __future__ import annotations

import json

import pytest

from filterprune.api import load
from filterprune.cli.main import main
from filterprune.data import BatchLoader, load_data
from filterprune.data.subsets import subset_splits
from filterprune.train import evaluate


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "base"
    assert main(["-q", "train", "--model", "convnet_small", "--data", "digits", "--epochs", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    return str(out / "model.safetensors")


def _prune(base, out, *extra) -> dict:
    argv = ["-q", "prune", "--weights", base, "--data", "digits", "--target-macs", "0.5", "--finetune-device", "cpu",
            "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def _stages(out) -> list[str]:
    return [s["name"] for s in json.loads((out / "run_state.json").read_text())["stages"]]


def test_eval_and_train_images_are_fixed_subsets_and_recorded(base, tmp_path, capsys):
    out = tmp_path / "q"
    s = _prune(base, out, "--eval-images", "60", "--train-images", "300", "--finetune-epochs", "1")
    assert s["eval_images"] == {"val": 60, "test": 60, "asked": 60}
    assert s["train_images"] == {"train": 300, "asked": 300} and "train 300, val 60, test 60" in s["data"]
    # oracle: the saved model evaluated independently on the same fixed subsets gives the summary's numbers
    quick = subset_splits(load_data("digits"), train_images=300, eval_images=60)
    model = load(out / "model.safetensors")
    for split, ds in (("val", quick.val), ("test", quick.test)):
        assert evaluate(model, BatchLoader(ds, 500, train=False))["acc"] == pytest.approx(s["finetuned"][f"{split}_acc"])
    for key in ("base", "pruned", "finetuned"):  # 60 images: every accuracy is a multiple of 100/60
        assert all(abs(v * 60 / 100 - round(v * 60 / 100)) < 1e-9 for v in s[key].values()), s[key]
    assert "BatchNorm re-calibrated on 256 training images" in capsys.readouterr().out
    assert s["latency"]["base"]["1"]["repeats"] == 10  # quick mode times fewer forwards


def test_bn_recalibration_reported_and_consistent_with_pruned(base, tmp_path):
    out = tmp_path / "r"
    s = _prune(base, out, "--eval-images", "80", "--finetune-epochs", "0")
    recal = s["bn_recalibration"]
    assert recal["images"] == 256 and [r["stage"] for r in recal["steps"]] == ["step1.recalibrate"]
    assert recal["steps"][0]["layers"] == 3 and recal["steps"][0]["images"] == 256
    # the accuracy right after re-calibration is the one "pruned" reports (same model, same images)
    assert recal["val_acc_after"] == pytest.approx(s["pruned"]["val_acc"])
    assert recal["val_acc_before"] is not None
    assert "step1.recalibrate" in _stages(out)


def test_bn_recalibrate_zero_turns_it_off(base, tmp_path):
    out = tmp_path / "off"
    s = _prune(base, out, "--eval-images", "80", "--finetune-epochs", "0", "--bn-recalibrate", "0")
    assert s["bn_recalibration"] == {"images": 0, "val_acc_before": None, "val_acc_after": None, "steps": []}
    assert not any("recalibrate" in n for n in _stages(out))


def test_eval_every_in_a_step_schedule(base, tmp_path):
    out = tmp_path / "steps"
    s = _prune(base, out, "--eval-images", "50", "--steps", "3", "--eval-every", "2", "--finetune-epochs", "0")
    reported = [r["stage"] for r in s["bn_recalibration"]["steps"] if r["val_acc_before"] is not None]
    assert reported == ["step2.recalibrate", "step3.recalibrate"]  # every 2nd step, and always the last
    assert len(s["bn_recalibration"]["steps"]) == 3  # re-calibrated after every step all the same


def test_eval_every_in_pls_vip_iterations(base, tmp_path):
    out = tmp_path / "pls"
    s = _prune(base, out, "--criterion", "pls-vip", "--criterion-options", "samples=200,pooling=avg",
               "--step-ratio", "0.1", "--steps", "3", "--step-finetune-epochs", "1", "--eval-every", "2",
               "--eval-images", "50", "--train-images", "400", "--finetune-epochs", "0")
    its = s["iterations"]
    assert [bool(r["pruned"]) for r in its] == [False, True, True]
    assert [bool(r["finetuned"]) for r in its] == [False, True, False]  # the last iteration has no step fine-tune
    assert [r["recalibration"]["val_acc_before"] is not None for r in its] == [False, True, True]
    names = _stages(out)
    assert "iter1.evaluate_pruned" not in names and "iter2.evaluate_pruned" in names and "iter3.evaluate_pruned" in names
    assert all(f"iter{i}.recalibrate" in names for i in (1, 2, 3))
