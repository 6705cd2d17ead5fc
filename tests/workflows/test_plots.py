"""``filterprune plot``: a PNG of real run folders, the Pareto front against brute force, refusals."""

import json
import random
import sys

import pytest

from filterprune.cli.main import main
from filterprune.workflows.plots import DPI, PANEL, pareto_front, run_points, written_by_filterprune
from filterprune.workflows.records import read_run


def brute_front(points):
    """Every point that no other point dominates (definition, O(n^2))."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    return {i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)}


@pytest.mark.parametrize("seed", range(40))
def test_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    # small integer grids make ties in MACs, in accuracy and duplicated points common
    points = [(rng.randint(0, 8), rng.randint(0, 8)) for _ in range(n)]
    front = pareto_front(points)
    assert set(front) == brute_front(points)
    assert len(front) == len(set(front))
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)  # in increasing MACs


def test_pareto_front_of_nothing_is_empty():
    assert pareto_front([]) == []


def test_plot_of_two_digits_runs_writes_a_png_of_the_expected_size(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    out = tmp_path / "runs.png"
    assert main(["plot", str(runs / "l1"), str(runs / "random"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    pixels = imread(out)
    # three panels (accuracy, widths, scores; no sensitivity.json): two rows of two panels
    assert pixels.shape[:2] == (round(2 * PANEL[1] * DPI), round(2 * PANEL[0] * DPI))
    assert pixels[..., :3].std() > 0.05  # something is drawn
    assert written_by_filterprune(out)
    # filterprune's own plot may be replaced by filterprune
    assert main(["plot", str(runs / "base"), "--out", str(out), "--metric", "val_acc"]) == 0
    assert imread(out).shape[:2] == (round(PANEL[1] * DPI), round(PANEL[0] * DPI))  # a train run: accuracy only


def test_points_come_from_the_summaries(runs):
    records = [read_run(runs / n) for n in ("l1", "random", "base")]
    points = run_points(records)
    by = {p.label: p for p in points}
    for name in ("l1", "random"):
        s = json.loads((runs / name / "summary.json").read_text())
        assert (by[name].macs, by[name].acc, by[name].pruned_acc) == (
            s["macs"]["pruned"], s["finetuned"]["test_acc"], s["pruned"]["test_acc"])
    base = json.loads((runs / "base" / "summary.json").read_text())
    assert (by["base"].macs, by["base"].acc) == (base["macs"], base["test_acc"])


def test_results_file_rows_are_points(tmp_path):
    rows = [{"criterion": "l1", "macs": 10, "macs_base": 20, "finetuned_test": 80.0, "pruned_test": 10.0,
             "base_test": 88.0}, {"criterion": "x"}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": rows}))
    from filterprune.workflows.plots import read_inputs

    records, got = read_inputs([path])
    assert records == [] and run_points([], got)[0].acc == 80.0 and len(run_points([], got)) == 1


def test_a_summary_file_is_a_run_and_its_row_is_not_counted_twice(runs, tmp_path):
    s = json.loads((runs / "l1" / "summary.json").read_text())
    (tmp_path / "l1_summary.json").write_text(json.dumps(s))
    row = {"criterion": "l1", "macs": s["macs"]["pruned"], "finetuned_test": s["finetuned"]["test_acc"]}
    (tmp_path / "results.json").write_text(json.dumps({"rows": [row]}))
    from filterprune.workflows.plots import read_inputs

    records, rows = read_inputs([tmp_path / "l1_summary.json", tmp_path / "results.json"])
    assert [r.label for r in records] == ["l1"] and records[0].summary == s
    assert [p.label for p in run_points(records, rows)] == ["l1"]


def test_refuses_to_overwrite_a_users_file(runs, tmp_path, capsys):
    out = tmp_path / "mine.png"
    out.write_bytes(b"\x89PNG\r\n\x1a\nnot filterprune's")
    assert main(["plot", str(runs / "l1"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not written by filterprune" in err
    assert out.read_bytes() == b"\x89PNG\r\n\x1a\nnot filterprune's"


@pytest.mark.parametrize("bad", ["missing", "no_summary", "json_without_rows"])
def test_bad_inputs_exit_2_in_one_line_before_any_work(runs, tmp_path, capsys, bad):
    path = tmp_path / bad
    if bad == "no_summary":
        path.mkdir()
    elif bad == "json_without_rows":
        path = tmp_path / "x.json"
        path.write_text("{}")
    out = tmp_path / "p.png"
    assert main(["plot", str(runs / "l1"), str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert not out.exists()


@pytest.mark.parametrize("out", ["p.jpg", "nofolder/p.png"])
def test_bad_out_exits_2(runs, tmp_path, capsys, out):
    assert main(["plot", str(runs / "l1"), "--out", str(tmp_path / out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_without_matplotlib_one_line_and_no_file(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "p.png"
    assert main(["plot", str(runs / "l1"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err and "pip install" in err
    assert not out.exists()


def test_sensitivity_curves_are_read_and_drawn(runs, tmp_path):
    pytest.importorskip("matplotlib")
    import shutil

    run = tmp_path / "with_curves"
    shutil.copytree(runs / "l1", run)
    curves = {"features.0": {"removed_fraction": [0, 0.5, 0.9], "accuracy": [90, 80, 20]}}
    (run / "sensitivity.json").write_text(json.dumps({"schema_version": 1, "metric": "val_acc", "groups": curves}))
    assert read_run(run).sensitivity == {k: {a: [float(x) for x in b] for a, b in v.items()} for k, v in curves.items()}
    assert main(["plot", str(run), "--out", str(tmp_path / "s.png")]) == 0


@pytest.mark.parametrize(("accs", "zoomed"), [([85.2, 84.9, 82.9, 85.1], True), ([85.0, 40.0, 60.0, 20.0], False)])
def test_crowded_final_points_get_a_zoom_inset(accs, zoomed):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from filterprune.workflows.plots import Point, draw_accuracy

    points = [Point(f"r{i}", 20e6 + i * 1e4, a, pruned_acc=10.0, base_macs=40e6, base_acc=88.0)
              for i, a in enumerate(accs)]
    ax = Figure().subplots()
    draw_accuracy(ax, points, "test_acc")
    assert len(ax.child_axes) == int(zoomed)
    if zoomed:
        lo, hi = ax.child_axes[0].get_ylim()
        assert lo < min(accs) and hi > max(accs) and hi - lo < 5
