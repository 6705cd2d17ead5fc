"""The CLI through ``main([...])`` on the embedded digits data: exit codes, files, one-line errors."""

import json

import pytest
import torch

from device_probes import StopRun, stop_at_first_evaluation
from filterprune.api import load
from filterprune.checkpoint import read_checkpoint
from filterprune.cli.main import main
from filterprune.data import load_data

FAST = ["--model", "convnet_small", "--data", "digits", "--epochs", "2", "--batch-size", "64", "--device", "cpu"]


def _accuracy_by_hand(weights, split):
    """Top-1 accuracy (%) of a saved model on a digits split: normalise, forward, argmax; no library loop."""
    model = load(weights).eval()
    ds = getattr(load_data("digits"), split)
    mean, std = torch.tensor(ds.mean)[:, None, None], torch.tensor(ds.std)[:, None, None]
    with torch.no_grad():
        pred = model((ds.images.float() / 255 - mean) / std).argmax(1)
    return 100.0 * float((pred == ds.labels).double().mean())


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-q", "train", *FAST, "--out", str(out)]) == 0
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json", "model.safetensors"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert summary["test_acc"] == pytest.approx(_accuracy_by_hand(out / "model.safetensors", "test"), abs=1e-9)
    printed = json.loads(capsys.readouterr().out)
    assert printed["val_acc"] == summary["val_acc"]
    _, meta = read_checkpoint(out / "model.safetensors")
    assert meta["arch"]["name"] == "convnet_small"


def test_eval_of_a_saved_model_matches_the_run_summary(tmp_path, capsys):
    out = tmp_path / "run"
    main(["-q", "train", *FAST, "--out", str(out)])
    capsys.readouterr()
    assert main(["-q", "eval", "--weights", str(out / "model.safetensors"), "--data", "digits", "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["acc"] == pytest.approx(json.loads((out / "summary.json").read_text())["test_acc"])


def test_config_file_then_flags_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: convnet_small\ndata: digits\ntrain:\n  epochs: 5\n  lr: 0.1\n  device: cpu\n")
    out = tmp_path / "run"
    assert main(["-q", "train", "--config", str(cfg), "--epochs", "1", "--out", str(out)]) == 0
    saved = (out / "config.yaml").read_text()
    assert "epochs: 1" in saved and "lr: 0.1" in saved


def test_resume_continues_a_run(tmp_path):
    out = tmp_path / "run"
    main(["-q", "train", *FAST, "--out", str(out)])
    first = (out / "metrics.jsonl").read_text().splitlines()
    (out / "checkpoints" / "epoch_001.safetensors").unlink()  # as if killed during the second epoch
    assert main(["-q", "train", "--resume", "--out", str(out)]) == 0
    again = (out / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if not k.startswith(("epoch_time", "train_images"))}  # noqa: E731
    assert [strip(x) for x in again] == [strip(x) for x in first]


def test_info_prints_params_macs_and_widths(capsys):
    assert main(["-q", "info", "--model", "resnet20"]) == 0
    text = capsys.readouterr().out
    assert "269,722 params" in text and "40.55M MACs" in text and "layer3.2.conv2" in text


def test_info_lists_models_and_criteria(capsys):
    assert main(["-q", "info", "--list"]) == 0
    text = capsys.readouterr().out
    assert "resnet56" in text and "l1" in text
    # every name --criterion accepts is listed (the fresh-user report: csgd was missing)
    from filterprune.cli._args import criterion_options

    listed = set(text.split())
    assert set(criterion_options()) <= listed, set(criterion_options()) - listed


@pytest.mark.parametrize("argv,needle", [
    (["train", "--model", "resnet7", "--data", "digits"], "'resnet7' is not a registered model"),
    (["train", "--data", "/nonexistent/place"], "/nonexistent/place"),
    (["eval", "--model", "resnet20", "--weights", "/nonexistent.th", "--data", "digits"], "nonexistent.th"),
    (["train", "--config", "/nonexistent.yaml"], "nonexistent.yaml"),
    (["train", "--epochs", "-1"], "epochs"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    assert main(["-q", *argv, *([] if argv[0] != "train" else ["--out", str(tmp_path / "o")])]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_train_moves_the_model_to_its_device_before_the_first_evaluation(tmp_path, monkeypatch):
    # On a GPU, `filterprune train` evaluated the starting model before fit() moved it: CUDA input, CPU
    # weights ("Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor)"). Here the
    # training device is swapped for "meta" and the first evaluation stops the run.
    import filterprune.workflows.train_run as train_run

    seen = stop_at_first_evaluation(monkeypatch, train_run)
    with pytest.raises(StopRun):
        train_run._train(train_run.RunConfig(model="convnet_small", data="digits"), tmp_path, False, False, None)
    assert seen == [(torch.device("meta"), torch.device("meta"))]
