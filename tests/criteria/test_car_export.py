"""``export_car_records``: the JSON and CSV files against records written out by hand (issue 14:
every key, column and value of both formats is read back)."""

import csv
import json

import pytest
import torch

from filterprune.criteria.car import CarResult, export_car_records


def _result(classwise: bool) -> CarResult:
    drop = {"conv1": torch.tensor([2.0, -1.0]), "conv2": torch.tensor([0.5])}
    per = {"conv1": torch.tensor([[4.0, 0.0], [-2.0, 1.0]]), "conv2": torch.tensor([[0.5, 3.0]])}
    return CarResult(metric="accuracy", num_images=40, base=92.5, base_loss=0.25, drop=drop,
                     delta_loss={"conv1": torch.tensor([0.125, -0.5]), "conv2": torch.tensor([1.0])},
                     class_drop=per if classwise else None, class_counts=torch.tensor([20, 20]) if classwise else None,
                     fast=True)


def test_json_holds_the_metadata_and_every_record(tmp_path):
    path = export_car_records(_result(classwise=True), tmp_path / "car.json", class_names=["cat", "dog"])
    text = path.read_text()
    assert text.startswith('{\n "metric"')  # indent=1: one key per line, one space
    doc = json.loads(text)
    assert {k: v for k, v in doc.items() if k != "records"} == {
        "metric": "accuracy", "num_images": 40, "base": 92.5, "base_loss": 0.25, "fast": True}
    first = doc["records"][0]
    assert first["group"] == "conv1" and first["channel"] == 0 and first["car"] == 2.0
    assert first["delta_loss"] == 0.125 and first["class_car"] == {"cat": 4.0, "dog": 0.0}
    assert first["most_affected"] == "cat" and first["least_affected"] == "dog"
    assert [(r["group"], r["channel"]) for r in doc["records"]] == [("conv1", 0), ("conv1", 1), ("conv2", 0)]


def test_csv_has_one_column_per_class_after_the_plain_fields(tmp_path):
    path = export_car_records(_result(classwise=True), tmp_path / "car.csv", class_names=["cat", "dog"])
    raw = path.read_bytes()
    assert b"\r\n" in raw and b"\r\r\n" not in raw  # csv's own line ends, not re-translated (newline="")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["group", "channel", "score", "car", "delta_loss", "most_affected",
                                 "least_affected", "class_car:cat", "class_car:dog"]
    assert rows[1] == {"group": "conv1", "channel": "1", "score": rows[1]["score"], "car": "-1.0",
                       "delta_loss": "-0.5", "most_affected": "dog", "least_affected": "cat",
                       "class_car:cat": "-2.0", "class_car:dog": "1.0"}
    assert rows[2]["class_car:dog"] == "3.0"


def test_csv_without_classwise_records_has_no_class_columns(tmp_path):
    path = export_car_records(_result(classwise=False), tmp_path / "car.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["group", "channel", "score", "car", "delta_loss"] and len(rows) == 3


def test_an_other_suffix_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"writes \.json or \.csv, not '\.txt'"):
        export_car_records(_result(classwise=False), tmp_path / "car.txt")


@pytest.mark.parametrize("groups", [{}, {"conv2": torch.tensor([0.5])}])
def test_csv_of_no_record_or_one_record(tmp_path, groups):
    result = _result(classwise=True)
    result.drop = groups
    path = export_car_records(result, tmp_path / "car.csv", class_names=["cat", "dog"])
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["group"], r["class_car:dog"]) for r in rows] == [(g, "3.0") for g in groups]


def test_a_regression_result_writes_rar_and_default_class_names_are_the_indices(tmp_path):
    result = _result(classwise=True)
    result.metric = "r2"
    doc = json.loads(export_car_records(result, tmp_path / "rar.json").read_text())
    first = doc["records"][0]
    assert "car" not in first and first["rar"] == 2.0 and doc["metric"] == "r2"
    assert first["class_car"] == {"0": 4.0, "1": 0.0} and first["most_affected"] == "0"
