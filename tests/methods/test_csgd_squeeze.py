"""Train wider, then squeeze (library and ``filterprune train``), and ``filterprune prune --criterion csgd``."""

import json

import pytest
import torch
from csgd_helpers import RandomLoader, fast_bn, plain_sgd

from filterprune.api import load
from filterprune.cli.main import main
from filterprune.methods.csgd_run import CSGDOptions, squeeze
from filterprune.metrics import count
from filterprune.models import create_model

COLLAPSE = CSGDOptions(centripetal=50.0 - 1e-4, vector_ratio=1.0)  # x0.5 per plain-SGD step at lr 0.01


def test_resnet20_x1_5_squeezes_to_exactly_resnet20():
    torch.manual_seed(0)
    wide, reference = fast_bn(create_model("resnet20", width_mult=1.5)), create_model("resnet20")
    x = torch.randn(2, 3, 32, 32)
    val = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    result = squeeze(wide, reference, x, RandomLoader((3, 32, 32), 30, batch=2), val, plain_sgd(), options=COLLAPSE)
    assert result.trim.logit_diff <= 1e-4
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    plain = create_model("resnet20")
    plain.load_state_dict(wide.state_dict(), strict=True)  # a plain resnet20 checkpoint, buffers included
    for name in ("layer2.0.shortcut.out_index", "layer3.0.shortcut.out_index"):
        assert torch.equal(wide.get_buffer(name), reference.get_buffer(name))
    wide.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(val[0][0]), wide(val[0][0]))
    assert wide.filterprune_cfg == reference.filterprune_cfg
    assert result.report.macs_after == count(reference, x)[0]


def test_train_cli_squeezes_a_wider_model(tmp_path):
    # batch 32: enough steps (~90) for the BatchNorm running statistics to converge inside each collapsed
    # cluster (momentum 0.1: 0.9**90 ~ 1e-4), which the trim now checks
    out = tmp_path / "wide"
    argv = ["-q", "train", "--model", "convnet_small", "--data", "digits", "--width-mult", "1.5", "--epochs", "2",
            "--batch-size", "32", "--momentum", "0", "--lr", "0.01", "--schedule", "constant", "--device", "cpu", "--out", str(out),
            "--csgd-squeeze-to", "1.0", "--csgd-options", "centripetal=49.9995,vector_ratio=1.0"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["csgd"]["deviation_before_trim"]["max_relative"] < 1e-3
    assert "csgd_deviation" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    model = load(out / "model.safetensors")
    narrow = create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in narrow.state_dict().items()}
    assert main(["-q", "train", "--data", "digits", "--csgd-squeeze-to", "2.0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["-q", "train", "--model", "convnet_small", "--data", "digits", "--epochs", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    return out / "model.safetensors"


def test_prune_cli_runs_csgd_and_reports_the_trim(base_weights, tmp_path, capsys):
    out = tmp_path / "csgd"
    argv = ["-q", "prune", "--weights", str(base_weights), "--data", "digits", "--criterion", "csgd",
            "--target-macs", "0.5", "--finetune-epochs", "2", "--finetune-batch-size", "32",
            "--finetune-momentum", "0", "--finetune-device", "cpu",
            "--criterion-options", "centripetal=49.9995,vector_ratio=1.0,clustering=kmeans", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)
    assert summary["finetuned"] == summary["pruned"] and summary["finetune_epochs"] == 2
    csgd = summary["csgd"]
    assert csgd["deviation_before_trim"]["max_relative"] < 1e-3
    assert csgd["trim_logit_diff"] == summary["report"]["max_error"] and csgd["trim_logit_diff"] < 0.1
    assert (out / "centripetal" / "clusters.json").is_file()
    model = load(out / "model.safetensors")
    assert count(model, torch.randn(1, 1, 8, 8)) == (summary["macs"]["pruned"], summary["params"]["pruned"])
    capsys.readouterr()
    bad = argv[:-4] + ["--criterion-options", "centripetal=0.1,nope=1", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "'nope': not an option of csgd" in capsys.readouterr().err
