"""``compress`` and ``explain`` claim ``--out`` first; a refusal found after that (unreadable weights, an
unknown layer) must still leave nothing behind, and the same command must then run (fresh-user report)."""

from __future__ import annotations

import pytest
import torch
from bad_input_helpers import Sandbox

from filterprune.api import save
from filterprune.models import create_model


@pytest.fixture
def box(tmp_path, monkeypatch):
    box = Sandbox(tmp_path, monkeypatch)
    torch.manual_seed(0)
    save(create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), tmp_path / "gray.safetensors")
    save(create_model("convnet_small", num_classes=10, in_chans=3, image_size=8), tmp_path / "rgb.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    return box


@pytest.mark.parametrize("argv, needle", [
    (["compress", "--weights", "junk.safetensors", "--data", "digits", "--out", "o"], "junk.safetensors"),
    (["compress", "--weights", "gray.safetensors", "--data", "digits", "--out", "o",
      "--filter-layer", "features.99"], "features.99"),
    (["compress", "--weights", "gray.safetensors", "--data", "digits", "--out", "o",
      "--layer", "nope:sparsity=0.5"], "nope"),
    (["explain", "--weights", "junk.safetensors", "--data", "digits", "--layer", "features.0", "--out", "o"],
     "junk.safetensors"),
    (["explain", "--weights", "rgb.safetensors", "--data", "digits", "--layer", "features.99", "--out", "o"],
     "features.99"),
    (["explain", "--weights", "gray.safetensors", "--data", "digits", "--layer", "features.0", "--out", "o"],
     "RGB"),
])
def test_refusal_after_the_claim_leaves_no_folder(box, capsys, argv, needle):
    box.refuses(argv, capsys, needle)  # also asserts: no file or folder added (no `o/`)


def test_a_folder_with_work_in_it_is_kept(box, tmp_path):
    """The removal is only for a fresh folder holding nothing but the run's own marker and lock."""
    from filterprune.utils.io import open_run_folder

    out = tmp_path / "kept"
    with pytest.raises(ValueError), open_run_folder(out, "explain", can_resume=False) as run, \
            run.discarded_on_refusal():
        (out / "filters.json").write_text("{}")
        raise ValueError("late failure")
    assert (out / "filters.json").exists()
    with pytest.raises(ValueError), open_run_folder(tmp_path / "gone", "explain", can_resume=False) as run, \
            run.discarded_on_refusal():
        raise ValueError("refused")
    assert not (tmp_path / "gone").exists()


def test_a_torn_weights_file_is_refused_before_the_data_is_read(box, capsys, monkeypatch):
    """eval/prune/train with unreadable .safetensors weights: refused before data loading (fresh-user report:
    the CIFAR copy was decoded and cached first)."""
    import filterprune.data

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the weights were checked")

    monkeypatch.setattr(filterprune.data, "load_data", no_loading)
    box.refuses(["eval", "--weights", "junk.safetensors", "--data", "digits"], capsys, "junk.safetensors")
    box.refuses(["prune", "--weights", "junk.safetensors", "--data", "digits", "--criterion", "l1",
                 "--target-macs", "0.5", "--out", "o"], capsys, "junk.safetensors")
    box.refuses(["train", "--pretrained", "junk.safetensors", "--data", "digits", "--out", "o"], capsys,
                "junk.safetensors")


def test_explain_without_matplotlib_is_one_line_before_any_work(box, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    box.refuses(["explain", "--weights", "rgb.safetensors", "--data", "digits", "--layer", "features.0", "--out", "o"],
                capsys, "matplotlib", "filterprune[plots]")
