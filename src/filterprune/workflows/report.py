"""``report.md``: the page a run folder ends with, built from its records only (``summary.json``,
``run_state.json``, ``metrics.jsonl``, ``scores.csv``, ``sensitivity.json``).

A prune run's report: what was run and the exact command, base / pruned / fine-tuned accuracies, MACs,
params and measured latency (base and pruned, with the fraction removed / the speed-up), the per-layer
width table (before / after), the seconds each stage took, and the plots (PNG files next to it,
linked). A train run's: accuracies (per class, by name), MACs and params, epochs and their times, a
training curve. Without matplotlib the report says how to get the plots. Every number is printed from
``summary.json`` with the formats of :func:`fmt_acc` and :func:`fmt_int`, so a reader (or a test) finds
the same values in both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write
from .records import RunRecord, read_run

logger = logging.getLogger(__name__)

__all__ = ["REPORT_FILES", "fmt_acc", "fmt_int", "render_report", "write_report"]

#: What a report writes into a run folder (a run's ``--overwrite`` may replace these).
REPORT_FILES = ("report.md", "report_widths.png", "report_scores.png", "report_sensitivity.png",
                "report_training.png")


def fmt_acc(v: Any) -> str:
    """An accuracy (percent) as the report prints it: two decimals, ``-`` when absent."""
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def fmt_int(v: Any) -> str:
    """A count (MACs, params) as the report prints it: thousands separated by commas."""
    return f"{int(v):,}" if isinstance(v, (int, float)) else "-"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def _command(s: dict[str, Any], folder: Path) -> list[str]:
    cmd = s.get("command")
    if cmd:
        return ["```console", f"$ {cmd}", "```"]
    return [f"Run from Python; the resolved config is `{folder.name}/config.yaml` "
            f"(`filterprune {s.get('kind', 'prune')} --config {folder}/config.yaml --out NEW_FOLDER` runs it again)."]


def _accuracy_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| | validation acc (%) | test acc (%) |", "|---|---:|---:|"]
    lines += [f"| {name} | {fmt_acc(d.get('val_acc'))} | {fmt_acc(d.get('test_acc'))} |" for name, d in rows]
    return lines


def _latency_rows(lat: dict[str, Any]) -> list[str]:
    rows = []
    base, pruned = lat.get("base") or {}, lat.get("pruned") or {}
    for key, b in base.items():
        p = pruned.get(key) or {}
        if not p:
            continue
        speed = b["median_ms"] / p["median_ms"] if p.get("median_ms") else float("nan")
        rows.append(f"| latency, batch {b['batch_size']} ({b['device']}, {b['threads']} thread(s); median ms) "
                    f"| {b['median_ms']:.3f} | {p['median_ms']:.3f} | x{speed:.2f} speed-up |")
    return rows


def _prune_body(r: RunRecord) -> list[str]:
    s = r.summary
    cfg = s.get("config") or {}
    p = cfg.get("prune") or {}
    rep = s.get("report") or {}
    centripetal = "csgd" in s  # C-SGD trains before its trim and is not fine-tuned after it
    target = f"{rep.get('target_name', 'target')}={rep.get('target', '?')}"
    allocation = s.get("allocation") or p.get("allocation", "global")  # older summaries: the config's
    lines = [f"# Prune run `{r.folder.name}`", "",
             f"Criterion **{s.get('criterion')}** (method `{s.get('method')}`) on model **{s.get('model')}**, "
             f"{target}, {allocation} allocation, {len(rep.get('steps') or [])} step(s); "
             f"{s.get('finetune_epochs')} "
             f"{'centripetal' if centripetal else 'fine-tune'} epoch(s). "
             f"Data: {s.get('data')}.", ""]
    if p.get("criterion_options"):
        lines += [f"Criterion options: `{p['criterion_options']}`.", ""]
    lines += ["## Command", "", *_command(s, r.folder), "", "## Accuracy", ""]
    if centripetal:
        rows = [("base", s.get("base") or {}),
                (f"after {s.get('finetune_epochs')} centripetal epochs and the trim", s.get("pruned") or {})]
    else:
        rows = [("base", s.get("base") or {}), ("pruned (before fine-tuning)", s.get("pruned") or {}),
                (f"fine-tuned ({s.get('finetune_epochs')} epochs)", s.get("finetuned") or {})]
    lines += _accuracy_table(rows)
    bn = s.get("bn_recalibration") or {}
    if bn.get("images"):
        lines += ["", f"BatchNorm re-calibrated on {bn['images']} training images after each prune step: validation "
                      f"accuracy right after removal {fmt_acc(bn.get('val_acc_before'))} -> "
                      f"{fmt_acc(bn.get('val_acc_after'))} after re-calibration."]
    ev = s.get("eval_images") or {}
    if ev.get("asked"):
        lines += ["", f"Quick mode: accuracies on {ev.get('val')} validation and {ev.get('test')} test images "
                      "(a fixed, seeded subset)."]
    macs, params = s.get("macs") or {}, s.get("params") or {}
    lines += ["", "## Cost", "", "| | base | pruned | change |", "|---|---:|---:|---:|",
              f"| MACs | {fmt_int(macs.get('base'))} | {fmt_int(macs.get('pruned'))} | "
              f"{_pct(macs.get('removed_fraction'))} removed |",
              f"| params | {fmt_int(params.get('base'))} | {fmt_int(params.get('pruned'))} | "
              f"{_pct(params.get('removed_fraction'))} removed |",
              *_latency_rows(s.get("latency") or {}), "",
              "Latency is measured on this machine in this run (warm-up, then timed forwards); compare it "
              "only with numbers from the same machine.", ""]
    before, after = rep.get("widths_before") or {}, rep.get("widths_after") or {}
    if before:
        lines += ["## Per-layer widths", "", "| layer | before | after | removed |", "|---|---:|---:|---:|"]
        for name, b in before.items():
            a = after.get(name, b)
            lines.append(f"| `{name}` | {b} | {a} | {_pct(1 - a / b if b else 0)} |")
        lines.append("")
    return lines


def _train_body(r: RunRecord) -> list[str]:
    s = r.summary
    cfg = s.get("config") or {}
    t = cfg.get("train") or {}
    lines = [f"# Train run `{r.folder.name}`", "",
             f"Model **{s.get('model')}**, {s.get('epochs')} epoch(s) (lr {t.get('lr')}, batch {t.get('batch_size')}, "
             f"{t.get('schedule')} schedule). Data: {s.get('data')}.", "",
             "## Command", "", *_command(s, r.folder), "", "## Accuracy", ""]
    lines += _accuracy_table([("start", {"val_acc": s.get("val_acc_start")}),
                              ("end", {"val_acc": s.get("val_acc"), "test_acc": s.get("test_acc")})])
    per_class = s.get("test_per_class_acc")
    if isinstance(per_class, dict) and per_class:
        lines += ["", "Test accuracy per class (%):", "", "| class | acc |", "|---|---:|"]
        lines += [f"| {name} | {fmt_acc(v)} |" for name, v in per_class.items()]
    lines += ["", "## Cost", "", f"MACs {fmt_int(s.get('macs'))}, params {fmt_int(s.get('params'))}.", ""]
    return lines


def _timings(r: RunRecord) -> list[str]:
    timings = r.summary.get("timings_s") or {}
    if not timings:
        epochs = _metrics(r.folder)
        timings = {f"epoch {m.get('epoch')}": m["epoch_time_s"] for m in epochs if "epoch_time_s" in m}
    if not timings:
        return []
    lines = ["## Timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in timings.items()]
    lines.append(f"| **total** | {sum(timings.values()):.1f} |")
    return [*lines, ""]


def _metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _draw_training(ax: Any, records: list[RunRecord]) -> None:
    epochs = [m for m in _metrics(records[0].folder) if "val_acc" in m and "epoch" in m]
    ax.plot([m["epoch"] for m in epochs], [m["val_acc"] for m in epochs], "o-", label="validation")
    if epochs and "train_acc" in epochs[0]:
        ax.plot([m["epoch"] for m in epochs], [m["train_acc"] for m in epochs], "o-", label="training")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("training curve")
    ax.legend()


def _plots(r: RunRecord) -> list[str]:
    from . import plots

    try:
        plots.require_matplotlib()
    except Exception as e:  # noqa: BLE001 - the report still lands; it says how to get the plots
        return ["## Plots", "", f"No plots: {e}; then run `filterprune plot {r.folder} --out {r.folder.name}.png`.", ""]
    wanted = []
    if r.kind == "prune":
        if _widths_known(r):
            wanted.append(("report_widths.png", "per-layer widths", plots.draw_widths))
        if r.scores:
            wanted.append(("report_scores.png", "score distributions", plots.draw_scores))
        if r.sensitivity:
            wanted.append(("report_sensitivity.png", "sensitivity curves", plots.draw_sensitivity))
    elif _metrics(r.folder):
        wanted.append(("report_training.png", "training curve", _draw_training))
    lines = ["## Plots", ""]
    for name, title, draw in wanted:
        try:
            plots.plot_panel(draw, [r], r.folder / name)
        except Exception as e:  # noqa: BLE001 - a plot that fails must not lose the run's report
            logger.warning("report: %s not drawn (%s)", name, e)
            lines += [f"{title}: not drawn ({type(e).__name__}: {e})", ""]
            continue
        lines += [f"![{title}]({name})", ""]
    lines.append(f"Across runs (accuracy against MACs, Pareto front): `filterprune plot {r.folder} OTHER_RUN... "
                 "--out runs.png`.")
    return [*lines, ""]


def _widths_known(r: RunRecord) -> bool:
    return bool((r.summary.get("report") or {}).get("widths_before"))


def render_report(r: RunRecord, *, with_plots: bool = True) -> str:
    """The markdown of ``r``'s report (drawing its PNGs into the folder when ``with_plots``)."""
    body = _prune_body(r) if r.kind == "prune" else _train_body(r)
    body += _timings(r)
    if with_plots:
        body += _plots(r)
    return "\n".join(body).rstrip() + "\n"


def write_report(folder: str | Path) -> Path:
    """Write ``folder/report.md`` (and its plots) from the folder's records; return its path.

    Raises:
        FilterpruneError: ``folder`` has no readable ``summary.json``.
    """
    r = read_run(folder)
    path = r.folder / "report.md"
    atomic_write(path, render_report(r))
    return path
