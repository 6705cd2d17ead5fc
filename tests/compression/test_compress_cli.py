"""``filterprune compress`` through ``main([...])`` on digits: the folder, the report, the refusals."""

from __future__ import annotations

import json

import torch

from device_probes import StopRun, stop_at_first_evaluation
from filterprune.api import save
from filterprune.cli.main import main
from filterprune.compression import decompress, size_report
from filterprune.models import create_model


def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "base.safetensors"
    save(create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), path)
    return path


def test_compress_writes_an_exact_container_and_report(tmp_path, capsys):
    w, out = weights(tmp_path), tmp_path / "out"
    rc = main(["-q", "compress", "--weights", str(w), "--data", "digits", "--out", str(out),
               "--filter-layer", "features.3", "--filter-criterion", "l1", "--filter-ratio", "0.25",
               "--sparsity", "0.6", "--conv-bits", "4", "--layer", "classifier:sparsity=0.3,bits=3,gap_bits=2",
               "--prune-epochs", "1", "--share-epochs", "1", "--train-images", "256", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "network (whole file)" in printed and "compressed (evaluated)" in printed
    summary = json.loads((out / "summary.json").read_text())
    path = out / "model.compressed.safetensors"
    assert summary["size_report"] == json.loads(json.dumps(size_report(path)))
    assert summary["filter_pruning"]["kept"] == 24
    assert summary["settings"]["classifier"] == {"sparsity": 0.3, "bits": 3, "gap_bits": 2}
    model = decompress(path)
    assert model.features[3].out_channels == 24
    assert int((model.classifier.weight != 0).sum()) == round(0.7 * model.classifier.weight.numel())
    assert len(torch.unique(model.classifier.weight)) <= 2 ** 3  # 7 centroids + the zero


def test_refuses_existing_out_and_bad_layer_before_work(tmp_path, capsys):
    w, out = weights(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user's file")
    assert main(["compress", "--weights", str(w), "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err
    assert (out / "mine.txt").read_text() == "user's file"
    rc = main(["compress", "--weights", str(w), "--data", "digits", "--out", str(tmp_path / "o2"),
               "--layer", "nope:bits=3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope" in err and len(err.splitlines()) == 1


def test_compress_moves_the_model_to_the_training_device_before_evaluating(tmp_path, monkeypatch):
    # the same bug class as `filterprune train` on a GPU: the loaded (CPU) model was evaluated with
    # device="cuda". The device is swapped for "meta" here; the first evaluation stops the run.
    import filterprune.compression.pipeline as pipeline
    from filterprune.compression.pipeline import CompressOptions, compress_model
    from filterprune.config import TrainConfig
    from filterprune.data import load_data

    seen = stop_at_first_evaluation(monkeypatch, pipeline)
    model = create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    try:
        compress_model(model, load_data("digits"), CompressOptions(), tmp_path / "c.safetensors", TrainConfig())
    except StopRun:
        pass
    assert seen == [(torch.device("meta"), torch.device("meta"))]
