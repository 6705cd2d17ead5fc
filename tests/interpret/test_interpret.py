"""Colour indices against hand formulas, the k-lowest statistic against the hypergeometric law, and
``filterprune explain`` end to end on a tiny RGB model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from filterprune.api import save
from filterprune.cli.main import main
from filterprune.data import BatchLoader, DataSplits, synthetic_dataset
from filterprune.interpret import greyscale, k_lowest_statistic, kernel_colour_index, response_colour_index
from filterprune.interpret.study import hypergeom_tail
from filterprune.models import create_model


def test_kernel_index_by_luminance_projection():
    torch.manual_seed(0)
    w, std = torch.randn(6, 3, 3, 3), [0.2, 0.25, 0.3]
    wp = w.double() / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    # oracle: energy along the grey direction (1,1,1)/sqrt(3) at each tap is (sum_c W_p)^2 / 3
    grey = (wp.sum(1) ** 2 / 3).sum((1, 2))
    expected = 1 - grey / wp.pow(2).sum((1, 2, 3))
    assert torch.allclose(kernel_colour_index(w, std), expected)


def test_kernel_index_is_read_in_pixel_space():
    std = [0.2, 0.25, 0.3]
    w = torch.tensor(std).view(1, 3, 1, 1).repeat(1, 1, 3, 3)  # W[c] = std[c]: grey in pixel space
    assert kernel_colour_index(w, std).item() == pytest.approx(0.0, abs=1e-12)
    assert kernel_colour_index(w, [1.0, 1.0, 1.0]).item() > 0  # not grey as stored


def test_greyscale_by_hand():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pixels = torch.tensor([0.9, 0.2, 0.4]).view(1, 3, 1, 1)
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = 0.299 * 0.9 + 0.587 * 0.2 + 0.114 * 0.4
    expected = (torch.full((1, 3, 1, 1), y) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(greyscale(x, mean, std), expected)


def test_response_index_of_an_opponent_and_a_luminance_filter():
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, 0.0])  # R - G: blind to grey
        conv.weight[1, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0])  # R + G + B
    model = nn.Sequential(conv)
    x = torch.rand(8, 3, 4, 4)
    index, colour, grey = response_colour_index(model, "0", [(x, torch.zeros(8))], mean, std)
    assert grey[0].item() == pytest.approx(0.0, abs=1e-7) and index[0].item() == pytest.approx(1.0)
    y = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert colour[1].item() == pytest.approx(x.sum(1).mean().item(), rel=1e-5)
    assert grey[1].item() == pytest.approx((3 * y).mean().item(), rel=1e-5)
    assert index[1].item() == pytest.approx(max(0.0, 1 - grey[1].item() / colour[1].item()), abs=1e-6)


def test_k_lowest_statistic_against_the_hypergeometric_law():
    car = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    l1 = torch.tensor([5.0, 4.0, 0.0, 1.0, 3.0, 2.0])
    selective = torch.tensor([True, True, False, False, True, False])
    s = k_lowest_statistic(car, l1, selective, k=2, draws=4000, seed=1)
    assert (s["car_count"], s["car_filters"]) == (2, [0, 1])
    assert (s["l1_count"], s["l1_filters"]) == (0, [2, 3])
    assert s["p_value_exact"] == pytest.approx(math.comb(3, 2) / math.comb(6, 2))  # 3/15
    assert s["random_mean"] == pytest.approx(2 * 3 / 6, abs=0.05)  # k m / n
    assert s["p_value"] == pytest.approx(0.2, abs=0.03)
    assert hypergeom_tail(6, 3, 2, 0) == pytest.approx(1.0)


def rgb_setup(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ds = synthetic_dataset(120, num_classes=4, image_size=8, seed=0)
    splits = DataSplits(train=ds, val=synthetic_dataset(40, num_classes=4, image_size=8, seed=1), name="rgb")
    model = create_model("convnet_small", num_classes=4, in_chans=3, image_size=8)
    from filterprune.config import TrainConfig
    from filterprune.train import fit

    fit(model, BatchLoader(ds, 30, train=True), None, TrainConfig(epochs=2, lr=0.05, device="cpu"))
    path = tmp_path / "m.safetensors"
    save(model, path)
    monkeypatch.setattr("filterprune.data.load_data", lambda data: splits)
    return path, model, ds


@pytest.mark.parametrize("layer", ["features.0", pytest.param("features.3", marks=pytest.mark.slow)])
def test_explain_end_to_end(tmp_path, monkeypatch, capsys, layer):
    path, model, ds = rgb_setup(tmp_path, monkeypatch)
    out = tmp_path / "out"
    rc = main(["-q", "explain", "--weights", str(path), "--data", "rgb", "--layer", layer, "--out", str(out),
               "--images", "80", "--k", "4", "--draws", "200"])
    assert rc == 0
    rec = json.loads((out / "filters.json").read_text())
    width = model.get_submodule(layer).out_channels
    assert [f["index"] for f in rec["filters"]] == list(range(width))
    assert rec["input_std"] == pytest.approx(list(ds.std))
    if layer == "features.0":
        expected = kernel_colour_index(model.features[0].weight, ds.std)
        assert [f["colour_index"] for f in rec["filters"]] == pytest.approx(expected.tolist())
    assert all(set(f["class_car"]) == set(ds.classes) for f in rec["filters"])
    s = rec["statistic"]
    lowest = sorted(rec["filters"], key=lambda f: f["car_score"])[:4]
    assert s["car_count"] == sum(f["colour_selective"] for f in lowest)
    assert (out / "filters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lowest-CAR" in (out / "report.md").read_text()


def test_explain_refuses_grey_data(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save(create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), path)
    rc = main(["-q", "explain", "--weights", str(path), "--data", "digits", "--layer", "features.0",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "RGB" in err and len(err.splitlines()) == 1
