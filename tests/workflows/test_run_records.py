"""Run records on real digits runs: summary.json against its schema, metrics.jsonl, scores.csv against
independently computed scores, report.md's numbers against summary.json, eval's class names."""

import json
import re

import pytest
import torch

from filterprune.api import load
from filterprune.cli.main import main
from filterprune.workflows.records import read_scores
from filterprune.workflows.summary_schema import PRUNE_SUMMARY, TRAIN_SUMMARY, schema_for

jsonschema = pytest.importorskip("jsonschema")

def summary(folder):
    return json.loads((folder / "summary.json").read_text())


def validate(s):
    jsonschema.validate(s, schema_for(s), cls=jsonschema.Draft202012Validator)


def test_schemas_are_valid_json_schemas():
    for schema in (PRUNE_SUMMARY, TRAIN_SUMMARY):
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", ["base", "l1", "random"])
def test_real_summaries_validate_against_their_schema(runs, name):
    s = summary(runs / name)
    assert s["schema_version"] == 1 and s["kind"] == ("train" if name == "base" else "prune")
    assert s["command"].startswith("filterprune -q ") and str(runs / name) in s["command"]
    assert s["classes"] == [str(i) for i in range(10)]
    validate(s)


def test_schema_rejects_a_kept_fraction(runs):
    s = summary(runs / "l1")
    s["macs"] = {"base": s["macs"]["base"], "pruned": s["macs"]["pruned"], "ratio": 0.5}  # the old "kept" key
    with pytest.raises(jsonschema.ValidationError):
        validate(s)


def test_removed_fractions_are_one_minus_pruned_over_base(runs):
    s = summary(runs / "l1")
    for key in ("macs", "params"):
        assert s[key]["removed_fraction"] == pytest.approx(1 - s[key]["pruned"] / s[key]["base"], abs=1e-12)
    assert s["macs"]["removed_fraction"] == pytest.approx(0.5, abs=0.01)


def test_metrics_jsonl_is_written_with_zero_finetune_epochs(runs):
    s = summary(runs / "random")
    lines = [json.loads(line) for line in (runs / "random" / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["base", "pruned", "final"]
    assert {k: lines[0][k] for k in ("val_acc", "test_acc")} == s["base"]
    assert {k: lines[1][k] for k in ("val_acc", "test_acc")} == s["pruned"] == s["finetuned"]


def test_metrics_jsonl_has_one_line_per_finetune_epoch(runs):
    lines = [json.loads(line) for line in (runs / "l1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["base", "pruned", "finetune", "final"]
    assert lines[2]["val_acc"] == pytest.approx(summary(runs / "l1")["finetuned"]["val_acc"])


def test_scores_csv_holds_every_filter_l1_norm_and_what_was_removed(runs):
    """Oracle: each conv filter's L1 norm computed from the base weights; removed = the widths lost."""
    base = load(runs / "base" / "model.safetensors")
    rows = read_scores(runs / "l1")
    s = summary(runs / "l1")
    before, after = s["report"]["widths_before"], s["report"]["widths_after"]
    convs = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {r["group"] for r in rows} == set(convs)  # the classifier group is not scored
    for name, conv in convs.items():
        mine = sorted((r for r in rows if r["group"] == name), key=lambda r: r["channel"])
        expect = conv.weight.detach().abs().sum((1, 2, 3)).double()
        assert [r["channel"] for r in mine] == list(range(conv.out_channels))
        assert torch.allclose(torch.tensor([r["score"] for r in mine], dtype=torch.float64), expect, rtol=1e-5)
        assert sum(r["removed"] for r in mine) == before[name] - after[name]
        kept = [r["score"] for r in mine if not r["removed"]]
        gone = [r["score"] for r in mine if r["removed"]]
        if gone and kept:  # per-group normalisation keeps the order within a group
            assert max(gone) <= min(kept)


def test_scores_csv_written_for_random_too(runs):
    rows = read_scores(runs / "random")
    s = summary(runs / "random")
    assert sum(r["removed"] for r in rows) == sum(s["report"]["widths_before"].values()) - sum(
        s["report"]["widths_after"].values())


def _cells(md, first):
    """The cells of the markdown table row starting with ``| first |``."""
    for line in md.splitlines():
        if line.startswith(f"| {first} |"):
            return [c.strip() for c in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {first!r} in the report")


def _num(cell):
    return float(re.sub(r"[,%x]|removed|speed-up", "", cell).strip())


@pytest.mark.parametrize("name", ["l1", "random"])
def test_report_numbers_equal_the_summary(runs, name):
    md = (runs / name / "report.md").read_text()
    s = summary(runs / name)
    assert s["command"] in md
    for row, key in (("base", "base"), ("pruned (before fine-tuning)", "pruned"),
                     (f"fine-tuned ({s['finetune_epochs']} epochs)", "finetuned")):
        val, test = map(_num, _cells(md, row))
        assert val == pytest.approx(s[key]["val_acc"], abs=0.005) and test == pytest.approx(s[key]["test_acc"], abs=0.005)
    for row, key in (("MACs", "macs"), ("params", "params")):
        b, p, removed = map(_num, _cells(md, row))
        assert (b, p) == (s[key]["base"], s[key]["pruned"])
        assert removed == pytest.approx(100 * s[key]["removed_fraction"], abs=0.05)
    lat = s["latency"]
    for batch in ("1", "64"):
        b, p, speed = map(_num, _cells(md, f"latency, batch {batch} (cpu, {lat['base'][batch]['threads']} thread(s); "
                                            "median ms)"))
        assert b == pytest.approx(lat["base"][batch]["median_ms"], abs=5e-4)
        assert p == pytest.approx(lat["pruned"][batch]["median_ms"], abs=5e-4)
        assert speed == pytest.approx(lat["base"][batch]["median_ms"] / lat["pruned"][batch]["median_ms"], abs=0.005)
    for layer, width in s["report"]["widths_before"].items():
        b, a, _ = _cells(md, f"`{layer}`")
        assert (int(b), int(a)) == (width, s["report"]["widths_after"][layer])
    bn = s.get("bn_recalibration") or {}
    if bn.get("images"):
        before, after = map(float, re.search(r"right after removal ([\d.]+) -> ([\d.]+)", md).groups())
        assert (before, after) == pytest.approx((bn["val_acc_before"], bn["val_acc_after"]), abs=0.005)
    timings = md.split("## Timings")[1].split("##")[0]
    for stage, sec in s["timings_s"].items():
        assert _num(_cells(timings, stage)[0]) == pytest.approx(sec, abs=0.05)


def test_report_links_plots_that_exist(runs):
    md = (runs / "l1" / "report.md").read_text()
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert "report_widths.png" in linked and "report_scores.png" in linked
    for name in linked:
        assert (runs / "l1" / name).is_file()


def test_report_without_matplotlib_says_how_to_get_the_plots(runs, monkeypatch):
    import sys

    from filterprune.workflows.records import read_run
    from filterprune.workflows.report import render_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    md = render_report(read_run(runs / "l1"))
    assert "pip install" in md and "filterprune plot" in md and "![" not in md


def test_train_report_names_the_classes(runs):
    md = (runs / "base" / "report.md").read_text()
    s = summary(runs / "base")
    assert list(s["test_per_class_acc"]) == s["classes"]
    for cls, acc in s["test_per_class_acc"].items():
        assert _num(_cells(md, cls)[0]) == pytest.approx(acc, abs=0.005)


def test_prune_prints_measured_latency(runs):
    out = (runs / "random.stdout").read_text()
    lat = summary(runs / "random")["latency"]
    for batch in ("1", "64"):
        b, p = lat["base"][batch]["median_ms"], lat["pruned"][batch]["median_ms"]
        assert f"latency, batch {batch} (cpu" in out and f"{b:.2f} ms -> {p:.2f} ms" in out


def test_eval_prints_per_class_accuracy_by_class_name(runs, capsys):
    assert main(["-q", "eval", "--weights", str(runs / "base" / "model.safetensors"), "--data", "digits"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["per_class_acc"]) == [str(i) for i in range(10)]
    assert result["per_class_acc"] == {k: round(v, 2) for k, v in summary(runs / "base")["test_per_class_acc"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    ["--criterion", "car", "--criterion-options", "eval_images=64"],
    ["--criterion", "pls-vip", "--criterion-options", "samples=200", "--step-ratio", "0.2", "--steps", "2",
     "--target-macs", "0.6"],
], ids=["car", "pls-vip"])
def test_car_and_pls_vip_scores_are_saved_per_step(runs, tmp_path, method):
    """Oracle: each step's rows cover exactly the channels the groups had then (the base widths, then
    the widths the previous steps left), and the removed rows add up to the channels the run removed."""
    out = tmp_path / "p"
    assert main(["-q", "prune", "--data", "digits", "--target-macs", "0.5", "--finetune-device", "cpu",
                 "--weights", str(runs / "base" / "model.safetensors"), "--finetune-epochs", "0", *method,
                 "--out", str(out)]) == 0
    s = summary(out)
    validate(s)
    rows = read_scores(out)
    steps = list(dict.fromkeys(r["step"] for r in rows))
    assert len(steps) == len(s.get("iterations") or s["report"]["steps"])
    widths = dict(s["report"]["widths_before"])
    for step in steps:
        mine = [r for r in rows if r["step"] == step]
        for group, width in widths.items():
            assert sorted(r["channel"] for r in mine if r["group"] == group) == list(range(width))
        for group in widths:
            widths[group] -= sum(r["removed"] for r in mine if r["group"] == group)
    assert widths == s["report"]["widths_after"]


def test_prune_table_prints_the_fraction_removed_per_layer():
    from filterprune.api import prune
    from filterprune.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    report = prune(model, torch.randn(2, 1, 8, 8), "l1", ratio=0.25)
    lines = report.table().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert lines[head].split() == ["layer", "before", "after", "removed"]
    for line in lines[head + 1:]:
        name, before, after, removed = line.split()
        assert float(removed.rstrip("%")) == pytest.approx(100 * (1 - int(after) / int(before)), abs=0.05)
        assert (int(before), int(after)) == (report.widths_before[name], report.widths_after[name])


def test_csgd_report_and_metrics_order_follow_its_schedule(runs):
    """C-SGD trains (centripetal) before its trim and is not fine-tuned after: the report and
    metrics.jsonl say so instead of "pruned, then fine-tuned"."""
    from filterprune.workflows.methods import MethodResult
    from filterprune.workflows.prune_run import _metric_lines
    from filterprune.workflows.records import read_run
    from filterprune.workflows.report import render_report

    r = read_run(runs / "l1")
    r.summary["csgd"] = {}
    md = render_report(r, with_plots=False)
    val, test = map(_num, _cells(md, f"after {r.summary['finetune_epochs']} centripetal epochs and the trim"))
    assert (val, test) == pytest.approx((r.summary["pruned"]["val_acc"], r.summary["pruned"]["test_acc"]), abs=0.005)
    assert "fine-tuned (" not in md
    acc = {"val_acc": 1.0}
    lines = _metric_lines(acc, acc, acc, [{"epoch": 0}], MethodResult(None, finetuned=True))
    assert [m["phase"] for m in lines] == ["base", "centripetal", "pruned", "final"]


def test_the_summary_records_the_resolved_allocation(runs):
    s = summary(runs / "l1")
    assert s["allocation"] in ("global", "sensitivity") and s["config"]["prune"]["allocation"] in ("auto", s["allocation"])
    s["allocation"] = "auto"  # the config's word, never the summary's: it says what ran
    with pytest.raises(jsonschema.ValidationError):
        validate(s)
