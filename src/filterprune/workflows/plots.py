"""Plots of run folders: accuracy against MACs with the Pareto front, per-layer widths, score
distributions, sensitivity curves. Built from the run records only (:mod:`filterprune.workflows.records`).

matplotlib is an optional extra (``pip install "filterprune[plots]"``); without it :func:`require_matplotlib`
raises one line saying so. Figures are drawn with ``matplotlib.figure.Figure`` and the Agg canvas, never
``pyplot``, so no global backend or figure state is touched. Every PNG written here carries a
``Software: filterprune`` text chunk; :func:`written_by_filterprune` reads it back (a few lines of the PNG
chunk layout, so no imaging library is needed to decide whether a file may be replaced).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FilterpruneError
from .records import RunRecord, read_run

__all__ = ["DPI", "PANEL", "Point", "check_out", "figure_size", "panels_for", "pareto_front", "plot_runs", "read_inputs", "require_matplotlib",
           "run_points", "written_by_filterprune"]

#: ``filterprune plot``: each panel ``PANEL`` inches, two panels per row, at ``DPI`` (a panel is 720 x 540 pixels).
PANEL, DPI = (6.0, 4.5), 120
SOFTWARE = "filterprune"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INSTALL_HINT = 'pip install "filterprune[plots]" (or pip install matplotlib)'


def require_matplotlib() -> None:
    """Raise :class:`FilterpruneError` (one line, how to install it) when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FilterpruneError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from None


def written_by_filterprune(path: str | Path) -> bool:
    """Whether ``path`` is a PNG whose ``Software`` text chunk names filterprune (so it may be replaced)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                return False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = struct.unpack(">I4s", head)
                if kind == b"tEXt":
                    key, _, value = f.read(length).partition(b"\0")
                    if key == b"Software" and value.startswith(SOFTWARE.encode()):
                        return True
                    f.seek(4, 1)  # CRC
                elif kind in (b"IDAT", b"IEND"):  # matplotlib writes its text chunks before the image data
                    return False
                else:
                    f.seek(length + 4, 1)
    except OSError:
        return False


def check_out(out: str | Path) -> Path:
    """Refuse an ``--out`` that is not a ``.png`` path in an existing folder, or an existing file that
    filterprune did not write (a user's file is never replaced).

    Raises:
        FilterpruneError: one line naming ``out`` and what to do.
    """
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise FilterpruneError(f"--out {out}: the plot is a PNG; pass a file name ending in .png")
    if not path.parent.is_dir():
        raise FilterpruneError(f"--out {out}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise FilterpruneError(f"--out {out} is a folder; pass a file name ending in .png")
    if path.exists() and not written_by_filterprune(path):
        raise FilterpruneError(f"--out {out} exists and was not written by filterprune; choose another file")
    return path


def save_png(fig: Any, path: Path) -> Path:
    """Render ``fig`` (a ``matplotlib.figure.Figure``) to ``path`` as a PNG tagged as filterprune's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..utils.env import code_version

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=fig.dpi, metadata={"Software": f"{SOFTWARE} {code_version()}"})
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- points and the front
@dataclass(frozen=True)
class Point:
    """One run on the accuracy/MACs plane.

    Attributes:
        label: the run's name.
        macs: MACs of the final model.
        acc: its accuracy (percent), after fine-tuning for a prune run.
        pruned_acc: accuracy right after removal (``None`` for a train run).
        base_macs, base_acc: the model the run started from (``None`` for a train run).
    """

    label: str
    macs: float
    acc: float
    pruned_acc: float | None = None
    base_macs: float | None = None
    base_acc: float | None = None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (fewer or equal MACs and higher or equal accuracy,
    one of them strictly), in increasing MACs.

    Args:
        points: ``(macs, accuracy)`` pairs.

    >>> pareto_front([(10, 90), (5, 80), (7, 70), (5, 85)])
    [3, 0]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_below = float("-inf")  # best accuracy among points with strictly fewer MACs
    i = 0
    while i < len(order):
        x = points[order[i]][0]
        same = [j for j in order[i:] if points[j][0] == x]
        top = max(points[j][1] for j in same)
        if top > best_below:
            front += [j for j in same if points[j][1] == top]
        best_below = max(best_below, top)
        i += len(same)
    return front


def _acc(d: Any, metric: str) -> float | None:
    return float(d[metric]) if isinstance(d, dict) and isinstance(d.get(metric), (int, float)) else None


def run_points(records: Sequence[RunRecord], rows: Sequence[dict[str, Any]] = (), metric: str = "test_acc") -> list[Point]:
    """The plane's points of prune/train runs and of a results file's rows (``standard_comparison``
    format: ``macs``, ``finetuned_test``...); runs without ``metric`` or MACs are left out."""
    points = []
    for r in records:
        s = r.summary
        if r.kind == "prune":
            macs = s.get("macs", {})
            acc = _acc(s.get("finetuned"), metric)
            if acc is not None and "pruned" in macs:
                points.append(Point(r.label, macs["pruned"], acc, _acc(s.get("pruned"), metric),
                                    macs.get("base"), _acc(s.get("base"), metric)))
        elif isinstance(s.get("macs"), (int, float)) and isinstance(s.get(metric), (int, float)):
            points.append(Point(r.label, s["macs"], float(s[metric])))
    split = metric.removesuffix("_acc")
    seen = {(p.macs, p.acc) for p in points}
    for row in rows:
        if f"finetuned_{split}" in row and "macs" in row and (row["macs"], row[f"finetuned_{split}"]) not in seen:
            points.append(Point(str(row.get("criterion", "?")), row["macs"], row[f"finetuned_{split}"],
                                row.get(f"pruned_{split}"), row.get("macs_base"), row.get(f"base_{split}")))
    return points


def read_inputs(paths: Sequence[str | Path]) -> tuple[list[RunRecord], list[dict[str, Any]]]:
    """Run folders; results files with ``rows`` (``benchmarks/results/standard_comparison_*.json``); and
    ``summary.json`` files kept apart from their folder (``benchmarks/results/*_summary.json``).

    Raises:
        FilterpruneError: a path that is none of these (one line naming it).
    """
    records, rows = [], []
    for p in paths:
        path = Path(p)
        if not (path.is_file() and path.suffix == ".json"):
            records.append(read_run(path))
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FilterpruneError(f"{p}: unreadable JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            rows += [r for r in data["rows"] if isinstance(r, dict)]
        elif isinstance(data, dict) and isinstance(data.get("macs"), (dict, int)) and (
                "pruned" in data or "val_acc" in data):
            records.append(RunRecord(path.parent, data, name=path.stem.removesuffix("_summary")))
        else:
            raise FilterpruneError(f"{p}: not a run folder, a summary.json nor a results file with 'rows' "
                                   "(pass the --out folder of a prune or train run)")
    return records, rows


# ----------------------------------------------------------------------------- panels
def draw_accuracy(ax: Any, points: Sequence[Point], metric: str) -> None:
    """Accuracy against MACs: base (star), after removal (hollow), after fine-tune (filled), Pareto front."""
    colors = [f"C{i % 10}" for i in range(len(points))]
    bases = {(p.base_macs, p.base_acc) for p in points if p.base_macs is not None and p.base_acc is not None}
    for bm, ba in sorted(bases):
        ax.scatter([bm / 1e6], [ba], marker="*", s=160, color="black", zorder=4)
    if bases:
        ax.scatter([], [], marker="*", s=80, color="black", label="base")
    for p, c in zip(points, colors, strict=True):
        ax.scatter([p.macs / 1e6], [p.acc], color=c, zorder=3, label=p.label)
        if p.pruned_acc is not None:
            ax.scatter([p.macs / 1e6], [p.pruned_acc], facecolors="none", edgecolors=c, zorder=3)
            ax.plot([p.macs / 1e6] * 2, [p.pruned_acc, p.acc], color=c, alpha=0.3, lw=1)
    plane = [(p.macs, p.acc) for p in points] + sorted(bases)
    front = pareto_front(plane)
    if front:
        ax.plot([plane[i][0] / 1e6 for i in front], [plane[i][1] for i in front], "--", color="grey",
                drawstyle="steps-post", label="Pareto front", zorder=2)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel(f"{metric.replace('_acc', '')} accuracy (%)")
    ax.set_title("accuracy against MACs (hollow: right after removal)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _zoom(ax, points, colors)


def _zoom(ax: Any, points: Sequence[Point], colors: Sequence[str]) -> None:
    """An inset on the final points when they crowd into a fifth of the panel's height (runs at one
    operating point after fine-tuning), so that their order can be read."""
    accs = [p.acc for p in points]
    lo, hi = ax.get_ylim()
    if len(points) < 2 or max(accs) - min(accs) > (hi - lo) / 5:
        return
    inset = ax.inset_axes((0.25, 0.42, 0.45, 0.36))
    for p, c in zip(points, colors, strict=True):
        inset.scatter([p.macs / 1e6], [p.acc], color=c, zorder=3)
    front = pareto_front([(p.macs, p.acc) for p in points])
    inset.plot([points[i].macs / 1e6 for i in front], [points[i].acc for i in front], "--", color="grey",
               drawstyle="steps-post")
    pad = max(0.1, 0.15 * (max(accs) - min(accs)))
    inset.set_ylim(min(accs) - pad, max(accs) + pad)
    macs = [p.macs / 1e6 for p in points]
    xpad = max(1e-3, 0.15 * (max(macs) - min(macs)))
    inset.set_xlim(min(macs) - xpad, max(macs) + xpad)
    inset.tick_params(labelsize=6)
    inset.grid(alpha=0.3)
    inset.set_title("zoom: after fine-tuning, with their Pareto front", fontsize=7)


def _widths(r: RunRecord) -> tuple[dict[str, int], dict[str, int]]:
    rep = r.summary.get("report") or {}
    return rep.get("widths_before") or {}, rep.get("widths_after") or {}


def draw_widths(ax: Any, records: Sequence[RunRecord]) -> None:
    """Per-layer widths: the base (grey bars) and each run's pruned widths (one line each)."""
    runs = [r for r in records if _widths(r)[0]]
    if not runs:
        _empty(ax, "per-layer widths", "no prune run among the inputs")
        return
    before = _widths(runs[0])[0]
    layers = list(before)
    ax.bar(range(len(layers)), [before[n] for n in layers], color="lightgrey", label="before")
    for r in runs:
        after = _widths(r)[1]
        ax.plot(range(len(layers)), [after.get(n, before[n]) for n in layers], "o-", ms=3, label=f"{r.label} after")
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel("filters")
    ax.set_title("per-layer widths, before / after")
    ax.legend(fontsize=7)


def draw_scores(ax: Any, records: Sequence[RunRecord]) -> None:
    """Each run's first-step filter scores, per group min-max normalised: removed and kept filters."""
    runs = [r for r in records if r.scores]
    if not runs:
        _empty(ax, "score distributions", "no scores.csv among the inputs")
        return
    for i, r in enumerate(runs):
        first = r.scores[0]["step"]
        rows = [s for s in r.scores if s["step"] == first]
        spans: dict[str, tuple[float, float]] = {}
        for s in rows:
            lo, hi = spans.get(s["group"], (s["score"], s["score"]))
            spans[s["group"]] = (min(lo, s["score"]), max(hi, s["score"]))

        normed = [((s["score"] - spans[s["group"]][0]) / (spans[s["group"]][1] - spans[s["group"]][0])
                   if spans[s["group"]][1] > spans[s["group"]][0] else 0.5, s["removed"]) for s in rows]
        kept = [v for v, gone in normed if not gone]
        gone = [v for v, g in normed if g]
        c = f"C{i % 10}"
        ax.hist(kept, bins=20, range=(0, 1), histtype="step", color=c, label=f"{r.label} ({first}) kept")
        if gone:
            ax.hist(gone, bins=20, range=(0, 1), histtype="stepfilled", alpha=0.3, color=c, label=f"{r.label} removed")
    ax.set_xlabel("score, min-max normalised within its group")
    ax.set_ylabel("filters")
    ax.set_title("score distributions (first scoring step)")
    ax.legend(fontsize=7)


def draw_sensitivity(ax: Any, records: Sequence[RunRecord]) -> None:
    """Accuracy against the fraction of a group's filters removed (``sensitivity.json``), one line per group."""
    runs = [r for r in records if r.sensitivity]
    if not runs:
        _empty(ax, "sensitivity curves", "no sensitivity.json among the inputs")
        return
    for r in runs:
        for group, curve in r.sensitivity.items():
            ax.plot(curve["removed_fraction"], curve["accuracy"], lw=1,
                    label=f"{r.label}: {group}" if len(runs) > 1 else group)
    ax.set_xlabel("fraction of the group's filters removed")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("sensitivity per group")
    ax.legend(fontsize=6, ncol=2)


def _empty(ax: Any, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def panels_for(records: Sequence[RunRecord]) -> list[Any]:
    """The panels ``filterprune plot`` draws for ``records``: accuracy against MACs always, then per-layer
    widths, score distributions and sensitivity curves when some input has them."""
    wanted: list[Any] = [draw_accuracy]
    if any(_widths(r)[0] for r in records):
        wanted.append(draw_widths)
    if any(r.scores for r in records):
        wanted.append(draw_scores)
    if any(r.sensitivity for r in records):
        wanted.append(draw_sensitivity)
    return wanted


def figure_size(panels: int) -> tuple[float, float]:
    """Inches of a figure of ``panels`` panels: ``PANEL`` each, two per row."""
    cols, rows = min(panels, 2), (panels + 1) // 2
    return PANEL[0] * cols, PANEL[1] * rows


def plot_runs(records: Sequence[RunRecord], out: str | Path, *, rows: Sequence[dict[str, Any]] = (),
              metric: str = "test_acc") -> Path:
    """``filterprune plot``: one PNG at ``DPI``, :func:`figure_size` of the :func:`panels_for` the inputs
    (accuracy against MACs with the Pareto front; per-layer widths; score distributions; sensitivity).

    Raises:
        FilterpruneError: matplotlib is missing, or no input has ``metric`` and MACs.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    points = run_points(records, rows, metric)
    if not points:
        raise FilterpruneError(f"no run among the inputs records {metric} and MACs; try --metric val_acc")
    panels = panels_for(records)
    fig = Figure(figsize=figure_size(len(panels)), dpi=DPI)
    axes = fig.subplots((len(panels) + 1) // 2, min(len(panels), 2), squeeze=False).ravel()
    draw_accuracy(axes[0], points, metric)
    for ax, draw in zip(axes[1:], panels[1:], strict=False):
        draw(ax, records)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_png(fig, Path(out))


def plot_panel(draw: Any, records: Sequence[RunRecord], out: Path, size: tuple[float, float] = PANEL) -> Path:
    """One panel (``draw(ax, records)``) as its own PNG (the plots ``report.md`` links)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    draw(fig.subplots(), records)
    fig.tight_layout()
    return save_png(fig, out)
