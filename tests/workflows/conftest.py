"""Tiny real run folders shared by the run-record, report and plot tests."""

import contextlib
import io

import pytest

from filterprune.cli.main import main

PRUNE = ["-q", "prune", "--data", "digits", "--target-macs", "0.5", "--finetune-device", "cpu", "--num-batches", "2"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A 2-epoch base and two prune runs of it: l1 with 1 fine-tune epoch, random with none."""
    root = tmp_path_factory.mktemp("records")
    assert main(["-q", "train", "--model", "convnet_small", "--data", "digits", "--epochs", "2",
                 "--device", "cpu", "--out", str(root / "base")]) == 0
    weights = str(root / "base" / "model.safetensors")
    assert main([*PRUNE, "--weights", weights, "--criterion", "l1", "--finetune-epochs", "1",
                 "--out", str(root / "l1")]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*PRUNE, "--weights", weights, "--criterion", "random", "--target-macs", "0.3",
                     "--finetune-epochs", "0", "--out", str(root / "random")]) == 0
    (root / "random.stdout").write_text(out.getvalue())
    return root


