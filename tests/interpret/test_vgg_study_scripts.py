"""The two VGG study scripts (benchmarks/interpretability.py, benchmarks/car_paper_layer.py) end to end on a
tiny RGB ConvNet and synthetic data, checked against independent recomputations of what they report."""

from __future__ import annotations

import json

import pytest
import torch

from filterprune.api import load, save
from filterprune.config import TrainConfig
from filterprune.data import BatchLoader, DataSplits, synthetic_dataset
from filterprune.interpret import kernel_colour_index, top_response_colour_index
from filterprune.models import create_model
from filterprune.train import fit
from shared_paths import load_benchmark_script


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    splits = DataSplits(train=synthetic_dataset(160, num_classes=4, image_size=8, seed=0),
                        val=synthetic_dataset(40, num_classes=4, image_size=8, seed=1),
                        test=synthetic_dataset(40, num_classes=4, image_size=8, seed=2), name="rgb")
    model = create_model("convnet_small", num_classes=4, in_chans=3, image_size=8)
    fit(model, BatchLoader(splits.train, 32, train=True), None, TrainConfig(epochs=1, lr=0.05, device="cpu"))
    path = tmp_path / "m.safetensors"
    save(model, path)
    return path, splits


@pytest.mark.slow  # ~5 s alone: a greedy CAR, four fine-tunes, two CAR studies
def test_layer_table_then_interpretability(tiny, tmp_path, monkeypatch):
    path, splits = tiny
    table_mod, interp_mod = load_benchmark_script("car_paper_layer"), load_benchmark_script("interpretability")
    monkeypatch.setattr(table_mod, "load_data", lambda data: splits)
    monkeypatch.setattr(interp_mod, "load_data", lambda data: splits)
    table_path = tmp_path / "table.json"
    table = table_mod.main(["--preset", "vgg16", "--weights", str(path), "--layers", "features.0", "--eval-images", "40",
                            "--random-seeds", "2", "--finetune-images", "128", "--out", str(table_path)])
    assert json.loads(table_path.read_text()) == json.loads(json.dumps(table))
    runs = table["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [("car", 0), ("l1", 0), ("random", 0), ("random", 1)]
    car = runs[0]
    assert len(car["removal_order"]) == 8 and sorted(car["removal_order"]) == car["removed"]  # half of 16
    assert [h["removed"] for h in car["history"]] == [[c] for c in car["removal_order"]]  # one filter per step
    w = load(path).features[0].weight
    assert runs[1]["removed"] == sorted(w.abs().sum((1, 2, 3)).argsort()[:8].tolist())  # lowest L1
    s = table["summary"][0]["test_acc_finetuned"]
    rnd = [r["test_acc_finetuned"] for r in runs[2:]]
    assert s["car_minus_best_baseline"] == pytest.approx(s["car"] - max(runs[1]["test_acc_finetuned"], sum(rnd) / 2))
    assert "| features.0 | test, fine-tuned |" in table_path.with_suffix(".md").read_text()

    out = tmp_path / "interp.json"
    res = interp_mod.main(["--weights", str(path), "--images", "40", "--k", "4", "--draws", "100",
                           "--layer-table", str(table_path), "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec == json.loads(json.dumps(res))
    assert {"weights", "layer", "input_std", "filters", "statistic", "second_conv", "table"} <= set(rec)
    assert rec["layer"] == "features.0" and rec["second_conv"]["layer"] == "features.3"
    assert rec["input_std"] == pytest.approx(list(splits.train.std))
    assert [f["index"] for f in rec["filters"]] == list(range(16))
    assert [f["index"] for f in rec["second_conv"]["filters"]] == list(range(32))
    assert [f["colour_index"] for f in rec["filters"]] == pytest.approx(kernel_colour_index(w, splits.train.std).tolist())
    assert rec["second_conv"]["activation"] == "features.4"  # the BatchNorm after the second conv
    batches = list(BatchLoader(splits.train.sample(40, 0), 250, train=False))
    index, _, _ = top_response_colour_index(load(path), "features.3", batches, splits.train.mean, splits.train.std,
                                            top=40)
    second = rec["second_conv"]["filters"]
    assert [f["colour_index"] for f in second] == pytest.approx(index.tolist(), nan_ok=True)
    assert all("colour_index_all_positions" in f for f in second)
    greedy = rec["greedy_car"]
    assert greedy["filters"] == car["removal_order"][:4]
    assert greedy["count"] == sum(rec["filters"][i]["colour_selective"] for i in greedy["filters"])
    assert "greedy_car" not in rec["second_conv"]  # the table has no features.3 run
    rows = rec["table"]
    assert [(r["paper_count"], r["paper_k"]) for r in rows] == [(17, 20), (14, 20)]
    assert rows[0]["greedy_car_count"] == greedy["count"]
    for layer in ("features.0", "features.3"):
        assert (tmp_path / f"interp_{layer}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| features.3 |" in out.with_suffix(".md").read_text()


def test_greedy_order_is_ignored_for_other_weights(tmp_path):
    mod = load_benchmark_script("interpretability")
    t = tmp_path / "t.json"
    t.write_text(json.dumps({"weights": "other.safetensors", "k": 1,
                             "runs": [{"layer": "a", "method": "car", "removal_order": [1, 0]}]}))
    assert mod.greedy_order(str(t), str(tmp_path / "w.safetensors"), "a") is None
    assert mod.greedy_order(str(tmp_path / "absent.json"), "w", "a") is None
    t.write_text(json.dumps({"weights": str(tmp_path / "w.safetensors"), "k": 1,
                             "runs": [{"layer": "a", "method": "car", "removal_order": [1, 0]}]}))
    assert mod.greedy_order(str(t), str(tmp_path / "w.safetensors"), "a") == [1, 0]


def test_greedy_only_recounts_an_existing_result(tmp_path):
    mod = load_benchmark_script("interpretability")
    weights = tmp_path / "w.safetensors"
    flags = [True, False, True, False, False, True]

    def record(layer):
        filters = [{"index": i, "colour_selective": f} for i, f in enumerate(flags)]
        stat = {"k": 2, "filters": 6, "colour_selective": 3, "car_count": 1, "l1_count": 0, "random_mean": 1.0,
                "random_std": 0.7, "p_value": 0.8, "p_value_exact": 0.8}
        return {"weights": str(weights), "layer": layer, "filters": filters, "statistic": stat, "rule": "r",
                "figure": f"{layer}.png"}

    out = tmp_path / "r.json"
    out.write_text(json.dumps({**record("a"), "second_conv": record("b"), "draws": 50, "eval_images": 10,
                               "command": "c", "table": []}))
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"weights": str(weights), "k": 1, "runs": [
        {"layer": "a", "method": "car", "removal_order": [5, 2, 0]},
        {"layer": "a", "method": "l1", "removal_order": [1, 2, 3]}]}))
    mod.main(["--greedy-only", "--out", str(out), "--layer-table", str(table)])
    rec = json.loads(out.read_text())
    assert rec["greedy_car"]["filters"] == [5, 2] and rec["greedy_car"]["count"] == 2  # the first k=2 removed
    assert rec["greedy_car"]["p_value_exact"] == pytest.approx(3 / 15)  # P(X >= 2), k=2 of 6 with 3 selective
    assert "greedy_car" not in rec["second_conv"]
    assert [r["greedy_car_count"] for r in rec["table"] if "greedy_car_count" in r] == [2]
    assert "| a | 3 / 6 | 2 | **1** | 2 |" in out.with_suffix(".md").read_text()
