"""The CLI on a user's model: ``--model usernets:factory`` from a file outside the package.

The file is copied to a temporary folder that is put on ``sys.path`` (the in-process equivalent of
``PYTHONPATH``; one test runs a real subprocess with ``PYTHONPATH``). Oracles: the flags reach the
pruning (exact widths from ``--layer-ratio`` and ``--ignore``), ``eval`` of the pruned checkpoint gives
the accuracy the prune run reported, the ONNX file gives the loaded model's outputs.
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

from filterprune.cli.main import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "usernets.py"
FACTORY = "usernets:tiny_resnet"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    shutil.copy(FIXTURE, folder / "usernets.py")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("usernets", None)


@pytest.fixture(scope="module")
def pruned(user_dir):
    """train 1 epoch -> prune with the new flags (no fine-tune): the run folders."""
    base, out = user_dir / "base", user_dir / "pruned"
    assert main(["-q", "train", "--model", FACTORY, "--data", "digits", "--epochs", "1", "--batch-size", "64",
                 "--device", "cpu", "--out", str(base)]) == 0
    assert main(["-q", "prune", "--model", FACTORY, "--weights", str(base / "model.safetensors"), "--data", "digits",
                 "--criterion", "l1", "--target-macs", "0.5", "--ignore", "stem.0", "--layer-ratio", "down=0.5",
                 "--max-ratio", "0.75", "--normalize", "max", "--schedule", "linear", "--steps", "2",
                 "--finetune-epochs", "0", "--num-batches", "2", "--out", str(out)]) == 0
    return base, out


def test_flags_reach_the_pruning(pruned, capsys):
    _, out = pruned
    summary = json.loads((out / "summary.json").read_text())
    widths = summary["report"]["widths_after"]
    assert widths["down"] == 16  # --layer-ratio down=0.5 of 32
    assert widths["stem.0"] == widths["blocks.0.conv2"] == 16  # --ignore stem.0 keeps its (residual) group
    assert all(w >= 4 for w in widths.values())  # --max-ratio 0.75 of 16
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)
    assert [s["target"] for s in summary["report"]["steps"]] == pytest.approx([0.25, 0.5])  # linear schedule
    cfg = summary["config"]["prune"]
    assert (cfg["normalize"], cfg["schedule"], cfg["ignore"], cfg["layer_ratio"]) == ("max", "linear", ["stem.0"],
                                                                                        ["down=0.5"])


def test_eval_info_export_of_the_pruned_user_model(pruned, capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, out = pruned
    ckpt = str(out / "model.safetensors")
    capsys.readouterr()
    assert main(["-q", "eval", "--model", FACTORY, "--weights", ckpt, "--data", "digits"]) == 0
    acc = json.loads(capsys.readouterr().out)["acc"]
    assert acc == pytest.approx(json.loads((out / "summary.json").read_text())["pruned"]["test_acc"])
    assert main(["-q", "info", "--model", FACTORY, "--weights", ckpt]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"{FACTORY}: ") and "at input (1, 8, 8)" in table
    assert any(line.split()[:4] == ["down", "Conv2d", "16", "16"] for line in table.splitlines())
    onnx_path = tmp_path / "m.onnx"
    assert main(["-q", "export", "--model", FACTORY, "--weights", ckpt, "--out", str(onnx_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff_onnxruntime"] <= 1e-4 and result["input"] == [2, 1, 8, 8]
    from usernets import tiny_resnet

    import filterprune as fp

    model = fp.load(ckpt, model=tiny_resnet())
    x = torch.randn(5, 1, 8, 8)
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-4)
    before = onnx_path.read_bytes()
    assert main(["-q", "export", "--model", FACTORY, "--weights", ckpt, "--out", str(onnx_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err and onnx_path.read_bytes() == before


def test_export_of_dict_outputs_by_factory(user_dir, tmp_path, capsys):
    out = tmp_path / "heads.onnx"
    assert main(["-q", "export", "--model", "usernets:two_heads", "--input-size", "1", "8", "8",
                 "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == ["logits", "boxes"]


@pytest.mark.parametrize("argv, needle", [
    (["info", "--model", "no_such_module_s11:net"], "cannot import no_such_module_s11"),
    (["info", "--model", "usernets:nothing_here"], "usernets has no nothing_here"),
    (["info", "--model", "usernets:Route"], "Route"),
    (["prune", "--model", FACTORY, "--layer-ratio", "down=2", "--out", "unused"], "--layer-ratio"),
    (["prune", "--model", FACTORY, "--ratio", "0.3", "--normalize", "median", "--out", "unused"], "--normalize"),
    (["prune", "--model", FACTORY, "--ratio", "0.3", "--max-ratio", "0", "--out", "unused"], "--max-ratio"),
    (["prune", "--model", FACTORY, "--ratio", "0.3", "--schedule", "cubic", "--out", "unused"], "--schedule"),
    (["train", "--model", FACTORY, "--width-mult", "2", "--out", "unused"], "--width-mult applies to registered"),
])
def test_bad_user_model_arguments_are_one_line(user_dir, argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_user_checkpoint_without_model_names_the_factory(pruned, capsys):
    _, out = pruned
    assert main(["-q", "info", "--weights", str(out / "model.safetensors")]) == 2
    assert f"pass --model {FACTORY}" in capsys.readouterr().err


@pytest.mark.slow
def test_new_process_with_pythonpath(pruned, user_dir):
    _, out = pruned
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "filterprune", "-q", "info", "--model", FACTORY, "--weights",
                           str(out / "model.safetensors")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{FACTORY}: ")
