"""Resume: a killed, interrupted or refused run continues to the same result as an uninterrupted one.

Oracle: the sha256 of the final ``model.safetensors`` (weights and metadata) and the summary's
accuracies, MACs and report equal those of an uninterrupted run of the same flags (CPU, seeded, one
thread). Runs are stopped at an exact place by the test hook ``FILTERPRUNE_TEST_KILL_AT`` in a
subprocess (SIGKILL during CAR scoring, SIGINT during the fine-tune, SIGTERM at a removal; the slow
ones: SIGKILL in a PLS+VIP iteration and during C-SGD's centripetal training); the resumed run and the
reference run in-process. Also: changed flags refused naming the flag (the folder unchanged), flags that
extend the run accepted, a refused C-SGD trim continued with ``force=True``, ``train --resume`` with a
changed flag, killed before its first checkpoint, or with a corrupt ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input_helpers import snapshot

import filterprune as fp
from filterprune.checkpoint import read_checkpoint
from filterprune.cli.main import main
from filterprune.utils.io import tensors_sha256

SRC = str(Path(fp.__file__).resolve().parents[1])
PRUNE = ["prune", "--data", "digits", "--finetune-device", "cpu", "--finetune-batch-size", "128"]
L1 = ["--criterion", "l1", "--target-macs", "0.5", "--finetune-epochs", "2"]
CAR = ["--criterion", "car", "--criterion-options", "eval_images=60", "--target-macs", "0.4", "--finetune-epochs", "1"]
PLS = ["--criterion", "pls-vip", "--criterion-options", "n_components=2", "--target-macs", "0.5", "--step-ratio", "0.25",
       "--step-finetune-epochs", "1", "--finetune-epochs", "1"]
CSGD = ["--criterion", "csgd", "--criterion-options", "centripetal=49.9995,vector_ratio=1.0", "--target-macs", "0.5",
        "--finetune-epochs", "2", "--finetune-momentum", "0", "--finetune-batch-size", "32"]
TRAIN = ["train", "--model", "convnet_small", "--data", "digits", "--epochs", "2", "--batch-size", "128",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    torch.manual_seed(0)
    return str(fp.save(fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), path))


def sha(path: Path) -> str:
    """sha256 of a checkpoint's tensors (not of the file: see ``tensors_sha256``)."""
    return tensors_sha256(read_checkpoint(path)[0])


def facts(out: Path) -> dict:
    """The summary without wall-clock figures."""
    s = json.loads((out / "summary.json").read_text())
    for it in s.get("iterations", []):
        it.pop("score_seconds")
    return {k: s[k] for k in ("base", "pruned", "finetuned", "macs", "params", "report", "finetune_epochs")
            if k in s} | {k: s[k] for k in ("iterations",) if k in s}


def cli(*argv: str, capsys=None) -> int:
    return main(["-q", *argv])


def run(argv: list[str], at: str | None = None) -> subprocess.CompletedProcess:
    """``filterprune -q ARGV`` in a fresh process, stopping itself at ``at`` (``point[:SIGNAL]``) if given."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("FILTERPRUNE_TEST_KILL_AT", None)
    if at:
        env["FILTERPRUNE_TEST_KILL_AT"] = at
    return subprocess.run([sys.executable, "-m", "filterprune", "-q", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


_REFERENCES: dict[str, Path] = {}


def reference(tmp_path_factory, weights, method: list[str]) -> Path:
    """The uninterrupted run of ``method`` (in-process, one per module)."""
    key = " ".join(method)
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp("ref") / "run"
        assert cli(*PRUNE, "--weights", weights, *method, "--out", str(out)) == 0
        _REFERENCES[key] = out
    return _REFERENCES[key]


def kill_and_resume(tmp_path_factory, tmp_path, weights, method, at: str, rc: int, stderr: str) -> None:
    ref, out = reference(tmp_path_factory, weights, method), tmp_path / "killed"
    argv = [*PRUNE, "--weights", weights, *method, "--out", str(out)]
    proc = run(argv, at)
    assert proc.returncode == rc, proc.stderr
    assert proc.stderr.strip() == stderr
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] != "done" and not (out / "model.safetensors").exists()
    assert cli(*argv, "--resume") == 0
    assert sha(out / "model.safetensors") == sha(ref / "model.safetensors")
    assert facts(out) == facts(ref)
    assert json.loads((out / "run_state.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_sigkill_during_car_scoring_resumes_to_the_same_weights(tmp_path_factory, tmp_path, weights):
    kill_and_resume(tmp_path_factory, tmp_path, weights, CAR, "step1.score", -9, "")


@pytest.mark.slow
def test_sigint_during_fine_tune_resumes_to_the_same_weights(tmp_path_factory, tmp_path, weights):
    kill_and_resume(tmp_path_factory, tmp_path, weights, L1, "finetune/epoch_000:INT", 130, "interrupted")


@pytest.mark.slow
def test_sigterm_at_the_removal_resumes_to_the_same_weights(tmp_path_factory, tmp_path, weights):
    kill_and_resume(tmp_path_factory, tmp_path, weights, L1, "step1.apply:TERM", 143, "terminated")


@pytest.mark.slow
def test_sigkill_in_a_pls_vip_iteration_resumes_to_the_same_weights(tmp_path_factory, tmp_path, weights):
    kill_and_resume(tmp_path_factory, tmp_path, weights, PLS, "iter2.score", -9, "")


@pytest.mark.slow
def test_sigkill_during_csgd_training_resumes_to_the_same_weights(tmp_path_factory, tmp_path, weights):
    kill_and_resume(tmp_path_factory, tmp_path, weights, CSGD, "centripetal/epoch_000", -9, "")


@pytest.mark.parametrize("stage", ["step1.score", "step1.apply", "finetune"])
def test_crash_at_a_stage_resumes_to_the_same_weights(tmp_path_factory, tmp_path, weights, stage, monkeypatch):
    """In-process (fast): a crash at the start of ``stage``, then ``--resume``."""
    import filterprune.workflows.runner as runner

    ref, out = reference(tmp_path_factory, weights, L1), tmp_path / "run"
    argv = [*PRUNE, "--weights", weights, *L1, "--out", str(out)]

    def crash(point):
        if point == stage:
            raise RuntimeError(f"crash at {point}")

    monkeypatch.setattr(runner, "kill_point", crash)
    with pytest.raises(RuntimeError, match="crash"):
        cli(*argv)
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "failed" and state["error"] == f"crash at {stage}"
    monkeypatch.undo()
    assert cli(*argv, "--resume") == 0
    assert sha(out / "model.safetensors") == sha(ref / "model.safetensors") and facts(out) == facts(ref)


# ------------------------------------------------------------------ flags on --resume
@pytest.fixture(scope="module")
def stopped(tmp_path_factory, weights) -> Path:
    """An L1 prune run that crashed at the start of its fine-tune (in-process)."""
    import filterprune.workflows.runner as runner

    out = tmp_path_factory.mktemp("s") / "run"
    real = runner.kill_point

    def crash(point):
        if point == "finetune":
            raise RuntimeError("crash")

    runner.kill_point = crash
    try:
        with pytest.raises(RuntimeError):
            cli(*PRUNE, "--weights", weights, *L1, "--out", str(out))
    finally:
        runner.kill_point = real
    return out


@pytest.mark.parametrize("flag,value,needle", [
    ("--target-macs", "0.3", "--target-macs is 0.3 but the run was started with 0.5"),
    ("--criterion", "l2", "--criterion is 'l2'"),
    ("--finetune-epochs", "1", "--finetune-epochs is 1 but the run was started with 2 (it may only grow)"),
    ("--finetune-lr", "0.1", "--finetune-lr"),
    ("--seed", "3", "--seed"),
])
def test_resume_with_a_changed_flag_is_refused(stopped, weights, tmp_path, flag, value, needle, capsys):
    run = shutil.copytree(stopped, tmp_path / "run")
    before = snapshot(run)
    capsys.readouterr()
    assert cli(*PRUNE, "--weights", weights, *L1, flag, value, "--resume", "--out", str(run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert snapshot(run) == before


def test_resume_with_more_fine_tune_epochs_extends_the_run(stopped, weights, tmp_path):
    run = shutil.copytree(stopped, tmp_path / "run")
    assert cli(*PRUNE, "--weights", weights, *L1, "--finetune-epochs", "3", "--resume", "--out", str(run)) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finetune_epochs"] == 3 and summary["config"]["finetune"]["epochs"] == 3
    assert len((run / "finetune" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_without_flags_uses_the_saved_ones(stopped, tmp_path):
    run = shutil.copytree(stopped, tmp_path / "run")
    assert cli("prune", "--resume", "--out", str(run)) == 0
    assert json.loads((run / "summary.json").read_text())["finetune_epochs"] == 2


def test_resuming_a_finished_run_repeats_nothing(tmp_path, weights):
    out = tmp_path / "run"
    argv = [*PRUNE, "--weights", weights, *L1, "--finetune-epochs", "1", "--out", str(out)]
    assert cli(*argv) == 0
    first, state = sha(out / "model.safetensors"), (out / "run_state.json").read_text()
    assert cli(*argv, "--resume") == 0
    assert sha(out / "model.safetensors") == first
    stages = lambda text: [(s["name"], s["seconds"]) for s in json.loads(text)["stages"]]  # noqa: E731
    assert stages((out / "run_state.json").read_text()) == stages(state)  # no stage ran again


def test_corrupt_run_state_is_one_line_naming_the_file(stopped, weights, tmp_path, capsys):
    run = shutil.copytree(stopped, tmp_path / "run")
    (run / "run_state.json").write_text("{not json")
    capsys.readouterr()
    assert cli(*PRUNE, "--weights", weights, *L1, "--resume", "--out", str(run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run_state.json" in err


# ------------------------------------------------------------------ a refused C-SGD trim
def test_refused_csgd_trim_keeps_the_trained_model_and_resumes_with_force(tmp_path, weights, capsys):
    out = tmp_path / "csgd"
    opts = "centripetal=0.0,n_init=1"
    argv = [*PRUNE, "--weights", weights, "--criterion", "csgd", "--target-macs", "0.5", "--finetune-epochs", "1",
            "--out", str(out)]
    capsys.readouterr()
    assert cli(*argv, "--criterion-options", opts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "have not collapsed" in err
    assert f"--criterion-options {opts},force=True" in err and "--finetune-epochs" in err
    trained = next((out / "stages").glob("*csgd.centripetal.safetensors"))
    assert sum(m.out_channels for m in fp.load(trained).modules() if isinstance(m, torch.nn.Conv2d)) == 80
    assert (out / "centripetal" / "checkpoints" / "epoch_000.safetensors").is_file()
    assert cli(*argv, "--criterion-options", opts + ",force=True", "--resume") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01) and summary["csgd"]["epochs"] == 1


# ------------------------------------------------------------------ train --resume
@pytest.fixture(scope="module")
def train_ref(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t") / "run"
    assert cli(*TRAIN, "--out", str(out)) == 0
    return out


def test_train_resume_with_a_changed_flag_is_refused(train_ref, tmp_path, capsys):
    run = shutil.copytree(train_ref, tmp_path / "run")
    before = snapshot(run)
    capsys.readouterr()
    assert cli(*TRAIN, "--lr", "0.3", "--resume", "--out", str(run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr is 0.3 but the run was started with 0.05" in err
    assert snapshot(run) == before


def test_train_killed_before_its_first_checkpoint_resumes(train_ref, tmp_path):
    run = shutil.copytree(train_ref, tmp_path / "run")
    for name in ("checkpoints", "metrics.jsonl", "model.safetensors", "summary.json"):  # as killed in epoch 1
        p = run / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert cli("train", "--resume", "--out", str(run)) == 0
    assert sha(run / "checkpoints" / "epoch_001.safetensors") == sha(train_ref / "checkpoints" / "epoch_001.safetensors")


def test_train_resume_with_a_corrupt_metrics_file_names_it(train_ref, tmp_path, capsys):
    run = shutil.copytree(train_ref, tmp_path / "run")
    (run / "checkpoints" / "epoch_001.safetensors").unlink()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n{"epo')
    capsys.readouterr()
    assert cli("train", "--resume", "--out", str(run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl: line 2" in err
