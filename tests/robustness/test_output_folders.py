"""Output folders: no command overwrites, mixes or deletes what it did not write.

Kinds (issue 10, items 1-4, 6, 11-12 output-folder parts, 15, 16): an ``--out`` that exists (a user's
folder, another run, the ``--pretrained`` file's folder), is a file, a symlink or not writable; a second
process on the same folder (lock); ``--overwrite`` (replaces only the run's own files); ``demo --out``
twice; ``--keep-checkpoints``; atomic writes under a failing disk; file and folder modes; NaN loss; the
C-SGD trim's safety tests (BatchNorm statistics, masked-vs-pruned check, refusal on a copy).

Refusals are checked with ``bad_input_helpers.Sandbox.refuses``: exit 2, one stderr line naming the
problem, empty stdout, and every file under the sandbox byte-for-byte (and mode-for-mode) unchanged.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input_helpers import Sandbox, snapshot
from torch import nn

import filterprune as fp
from filterprune.cli.main import main
from filterprune.errors import PruningError
from filterprune.utils import io as fio

TRAIN = ["train", "--model", "convnet_small", "--data", "digits", "--epochs", "1", "--batch-size", "128",
         "--device", "cpu"]
SRC = str(Path(fp.__file__).resolve().parents[1])


@pytest.fixture
def box(tmp_path, monkeypatch) -> Sandbox:
    return Sandbox(tmp_path, monkeypatch)


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder of the user's with a file each command would write (``model.safetensors``)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"the user's own model")
    (folder / "notes.txt").write_text("keep me")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """An (untrained) convnet_small checkpoint for digits: prune needs no training to be exercised."""
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    torch.manual_seed(0)
    return str(fp.save(fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), path))


# ------------------------------------------------------------------ refusals before any work
@pytest.mark.parametrize("cmd", ["train", "prune", "demo"])
def test_existing_user_folder_is_refused(box, user_folder, weights, cmd, capsys):
    argv = {"train": TRAIN, "prune": ["prune", "--weights", weights, "--target-macs", "0.5"], "demo": ["demo"]}[cmd]
    box.refuses([*argv, "--out", str(user_folder)], capsys, str(user_folder), "already exists")


@pytest.mark.parametrize("cmd", ["train", "prune"])
def test_out_that_is_a_file_is_refused(box, weights, cmd, capsys):
    (box.root / "f").write_text("a file")
    argv = TRAIN if cmd == "train" else ["prune", "--weights", weights, "--target-macs", "0.5"]
    box.refuses([*argv, "--out", "f"], capsys, "--out f is a file")


@pytest.mark.parametrize("cmd", ["train", "prune"])
def test_out_that_is_a_symlink_is_refused(box, weights, cmd, capsys):
    (box.root / "real").mkdir()
    (box.root / "link").symlink_to(box.root / "real")
    argv = TRAIN if cmd == "train" else ["prune", "--weights", weights, "--target-macs", "0.5"]
    box.refuses([*argv, "--out", "link"], capsys, "symbolic link")


def test_out_that_cannot_be_created_is_refused(box, capsys):
    box.refuses([*TRAIN, "--out", "/proc/filterprune-test/run"], capsys, "/proc/filterprune-test/run", "cannot")


def test_read_only_out_is_refused(box, monkeypatch, capsys):
    (box.root / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(fio.os, "access", lambda p, mode: False if Path(p).name == "ro" else real(p, mode))
    box.refuses([*TRAIN, "--out", "ro/run"], capsys, "not writable")  # (root ignores chmod: access() is faked)


def test_out_holding_the_pretrained_file_is_refused(box, capsys):
    (box.root / "base").mkdir()
    fp.save(fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), box.root / "base" / "m.safetensors")
    box.refuses([*TRAIN, "--pretrained", "base/m.safetensors", "--out", "base"], capsys, "already exists")


def test_resume_and_overwrite_together_are_refused(box, capsys):
    (box.root / "run").mkdir()
    (box.root / "run" / "x").write_text("x")
    box.refuses([*TRAIN, "--resume", "--overwrite", "--out", "run"], capsys, "--resume and --overwrite")


def test_resume_of_a_missing_folder_is_refused(box, capsys):
    box.refuses([*TRAIN, "--resume", "--out", "nowhere"], capsys, "nowhere", "nothing to resume")


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t") / "run"
    assert main(["-q", *TRAIN, "--epochs", "2", "--out", str(out)]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_second_train_into_a_train_run_is_refused(box, train_run, capsys):
    _copy(train_run, box.root / "run")
    box.refuses([*TRAIN, "--out", "run"], capsys, "already holds a train run", "--resume", "--overwrite")


def test_prune_resume_of_a_train_run_is_refused(box, train_run, weights, capsys):
    _copy(train_run, box.root / "run")
    box.refuses(["prune", "--weights", weights, "--target-macs", "0.5", "--resume", "--out", "run"], capsys,
                "holds a filterprune train run", "prune run")


def test_overwrite_refuses_a_file_filterprune_did_not_write(box, user_folder, capsys):
    box.refuses([*TRAIN, "--overwrite", "--out", str(user_folder)], capsys, "model.safetensors",
                "was not written by a filterprune train run")


def test_overwrite_replaces_only_the_runs_own_files(box, train_run, capsys):
    run = _copy(train_run, box.root / "run")
    (run / "notes.txt").write_text("the user's notes")
    (run / "checkpoints" / "epoch_009.safetensors").write_bytes(b"stale")  # a file of the earlier run
    old_model = (run / "model.safetensors").read_bytes()
    box.accepts([*TRAIN, "--epochs", "1", "--lr", "0.01", "--overwrite", "--out", "run"], capsys)
    assert (run / "notes.txt").read_text() == "the user's notes"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_000.safetensors"]  # nothing mixed
    assert (run / "model.safetensors").read_bytes() != old_model
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == fio.LOCK]


def test_demo_twice_keeps_the_first_base(box, capsys):
    (box.root / "d").mkdir()
    (box.root / "d" / fio.MARKER).write_text('{"command": "demo"}')
    (box.root / "d" / "base").mkdir()
    (box.root / "d" / "base" / "summary.json").write_text("{}")
    box.refuses(["demo", "--out", "d"], capsys, "already holds a demo run", "--overwrite")


# ------------------------------------------------------------------ the lock
def test_second_process_on_a_locked_folder_is_refused(box, capsys):
    with fio.open_run_folder(box.root / "run", "train", owned=("x",)):
        box.refuses([*TRAIN, "--out", "run"], capsys, "in use by another filterprune process", f"pid {os.getpid()}")
        box.refuses([*TRAIN, "--resume", "--out", "run"], capsys, "in use")
    assert not (box.root / "run" / fio.LOCK).exists()  # released with the run


@pytest.mark.slow
def test_two_concurrent_train_processes_one_wins(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "filterprune", "-q", *TRAIN, "--out", str(tmp_path / "run")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    (ok, _), (rc, err) = results
    assert ok == 0 and rc == 2, results
    assert len(err.strip().splitlines()) == 1 and ("in use" in err or "already holds a train run" in err), err
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["epoch_000.safetensors"]  # one run's checkpoints, not two interleaved


# ------------------------------------------------------------------ atomic writes and modes
def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fio.os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        fio.atomic_write(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_atomic_path_removes_the_temporary_file_when_the_writer_fails(tmp_path):
    with pytest.raises(RuntimeError), fio.atomic_path(tmp_path / "m.safetensors") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_a_run_is_one_line(box, monkeypatch, capsys):
    def full(path, obj, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    import filterprune.workflows.train_run as run_mod

    monkeypatch.setattr(run_mod, "atomic_write_json", full)
    capsys.readouterr()
    assert main(["-q", *TRAIN, "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "env.json" in err


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_run_files_follow_the_umask(tmp_path, umask, file_mode, dir_mode, capsys):
    old = os.umask(umask)
    try:
        assert main(["-q", *TRAIN, "--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    modes = {p.relative_to(run): (p.stat().st_mode & 0o777) for p in run.rglob("*")}
    assert any(str(p).startswith("checkpoints/") for p in modes) and Path("model.safetensors") in modes
    for p, mode in modes.items():
        assert mode == (dir_mode if (run / p).is_dir() else file_mode), (p, oct(mode))


# ------------------------------------------------------------------ checkpoints kept
def test_keep_checkpoints_keeps_the_newest(tmp_path, capsys):
    assert main(["-q", *TRAIN, "--epochs", "3", "--keep-checkpoints", "1", "--out", str(tmp_path / "run")]) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch_002.safetensors"]


def test_negative_keep_checkpoints_is_refused(box, capsys):
    box.refuses([*TRAIN, "--keep-checkpoints", "-1", "--out", "run"], capsys, "keep")


# ------------------------------------------------------------------ NaN loss
def test_nan_loss_in_train_is_one_line_naming_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import filterprune.train.loop as loop

    real = loop.progress

    def nan_in_epoch_2(batches, *a, desc="", **k):  # NaN images from epoch 2 on, as a too-high lr makes them
        batches = real(batches, *a, desc=desc, **k)
        return ((x * float("nan"), y) for x, y in batches) if desc.startswith("epoch 2/") else batches

    monkeypatch.setattr(loop, "progress", nan_in_epoch_2)
    assert main(["-q", *TRAIN, "--epochs", "3", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "diverged in epoch 2" in err and "epoch_000.safetensors" in err
    assert "Traceback" not in err
    assert (tmp_path / "run" / "checkpoints" / "epoch_000.safetensors").is_file()


def test_nan_loss_in_prune_fine_tune_keeps_the_pruned_model(tmp_path, weights, capsys):
    out = tmp_path / "p"
    assert main(["-q", "prune", "--weights", weights, "--data", "digits", "--target-macs", "0.5",
                 "--finetune-epochs", "1", "--finetune-lr", "1e12", "--finetune-device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    # the last snapshot: the pruned model with its BatchNorm statistics re-calibrated
    assert err.count("\n") == 1 and "diverged" in err and "--resume" in err and "step1.recalibrate" in err
    kept = fp.load(next((out / "stages").glob("*step1.recalibrate.safetensors")))
    assert sum(m.out_channels for m in kept.modules() if isinstance(m, nn.Conv2d)) < 80  # pruned, not the base


# ------------------------------------------------------------------ C-SGD trim safety
def _collapsed_net():
    """A conv-BN-ReLU-conv net whose first conv's channel pairs (0,1), (2,3) are exact copies."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    with torch.no_grad():
        for a, b in ((0, 1), (2, 3)):
            net[0].weight[b] = net[0].weight[a]
            net[0].bias[b] = net[0].bias[a]
            net[1].weight[b], net[1].bias[b] = net[1].weight[a], net[1].bias[a]
            net[1].running_mean[b], net[1].running_var[b] = net[1].running_mean[a], net[1].running_var[a]
    net.filterprune_cfg = {"name": "test"}
    return net.eval()


def _trim(net, **kw):
    from filterprune.graph.trace import trace_groups
    from filterprune.methods._trim import trim

    x = torch.randn(4, 3, 8, 8)
    groups = trace_groups(net, x)
    gid = next(g.id for g in groups if g.prunable and g.size == 4)
    return trim(net, groups, {gid: [[0, 1], [2, 3]]}, example_inputs=x, check_inputs=x, **kw)


def test_csgd_trim_of_collapsed_clusters_is_lossless():
    net = _collapsed_net()
    result = _trim(net)
    assert net[0].out_channels == 2 and result.logit_diff < 1e-5


def test_csgd_trim_refuses_bn_statistics_that_differ_inside_a_cluster():
    net = _collapsed_net()
    with torch.no_grad():
        net[1].running_var[1] *= 3.0  # as when BN was frozen during centripetal training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PruningError, match=r"BatchNorm statistics 1\.running_var .*force=True"):
        _trim(net)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # untrimmed


def test_csgd_forced_trim_reports_the_output_change():
    net = _collapsed_net()
    with torch.no_grad():
        net[1].running_mean[1] += 1.0
    result = _trim(net, force=True)
    assert net[0].out_channels == 2 and result.logit_diff > 1e-3


def test_csgd_trim_runs_the_masked_vs_pruned_check(monkeypatch):
    import filterprune.methods._trim as trim_mod

    seen = []
    real = trim_mod.apply_plan_checked
    monkeypatch.setattr(trim_mod, "apply_plan_checked", lambda *a, **k: seen.append(1) or real(*a, **k))
    _trim(_collapsed_net())
    assert len(seen) == 2  # on the trial copy, then on the model


def test_snapshot_helper_sees_modes(tmp_path):
    (tmp_path / "a").write_text("x")
    before = snapshot(tmp_path)
    os.chmod(tmp_path / "a", 0o600)
    assert snapshot(tmp_path) != before  # the sandbox check would notice a mode change
