"""Run records: what a run folder holds besides its model, read and written in one place.

Every ``prune`` and ``train`` run folder ends with

* ``summary.json``: the run's numbers, schema :data:`SCHEMA_VERSION` (``docs/summary_schema.md``, JSON
  Schema in :mod:`filterprune.workflows.summary_schema`). Fractions are always fractions *removed*
  (``macs.removed_fraction``); accuracies are percent;
* ``metrics.jsonl``: one JSON object per line, always present; a prune run writes one line per
  evaluation (``phase`` = ``base``, ``iteration``, ``pruned``, ``finetune`` (one per epoch), ``final``),
  so a run with 0 fine-tune epochs still has its base and pruned accuracy there;
* ``scores.csv`` (prune runs of a scoring criterion: l1, l2, bn, taylor, random, car, pls-vip...):
  one row per filter and scoring step, ``step,group,channel,score,removed``; ``channel`` indexes the
  group's channels *at that step* (after earlier steps removed some), ``removed`` is 1 if the step's
  selection removed it. C-SGD scores no filter (it clusters them) and writes none;
* ``sensitivity.json`` (optional, written by sensitivity allocation): per group, accuracy against the
  fraction of its filters removed; :func:`read_sensitivity` reads it, ``filterprune plot`` draws it;
* ``report.md`` (:mod:`filterprune.workflows.report`) and its PNG plots.

``sensitivity.json`` (format ``filterprune.sensitivity/1``, :mod:`filterprune.selection.sensitivity`) holds,
among the curves' other fields, the two lists read here::

    {"format": "filterprune.sensitivity/1", "metric": "loss",
     "groups": {"layer1.0.conv1": {"removed_fraction": [0.0, 0.25, ...], "accuracy": [91.2, 90.8, ...], ...}}}
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FilterpruneError
from ..utils.io import atomic_write, atomic_write_json

__all__ = ["SCHEMA_VERSION", "RunRecord", "command_line", "latency_lines", "read_run", "read_scores",
           "read_sensitivity", "stage_timings", "write_metrics", "write_scores"]

#: Version of ``summary.json``'s layout (``schema_version``); bumped on any change a reader must know.
SCHEMA_VERSION = 1

SCORE_FIELDS = ("step", "group", "channel", "score", "removed")


def command_line(argv: Sequence[str] | None) -> str | None:
    """``filterprune ARGS...`` as a shell would need it typed (``None`` for ``None``: a Python call)."""
    return None if argv is None else shlex.join(["filterprune", *argv])


def stage_timings(state: Mapping[str, Any]) -> dict[str, float]:
    """Seconds per finished stage, from a ``run_state.json`` dict, in run order."""
    return {s["name"]: float(s.get("seconds", 0.0)) for s in state.get("stages", []) if s.get("done")}


def write_metrics(folder: Path, lines: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``folder/metrics.jsonl`` whole and atomically, one JSON object per line; return its path."""
    path = Path(folder) / "metrics.jsonl"
    atomic_write(path, "".join(json.dumps(dict(r)) + "\n" for r in lines))
    return path


def _plan_of(result: Any) -> dict[str, list[int]]:
    """Removed channels per group of a ``.select`` stage's stored result (a plan, or ``{"prune_idxs": ...}``)."""
    if isinstance(result, dict) and "__plan__" in result:
        return result["__plan__"]
    if isinstance(result, dict) and isinstance(result.get("prune_idxs"), dict):
        return result["prune_idxs"]
    return {}


def score_rows(folder: Path, state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``scores.csv`` from the run's stored stages (``stepK.score`` / ``iterK.score`` tensors
    and the ``.select`` plan of the same step)."""
    from ..checkpoint import read_checkpoint

    stages = {s["name"]: s for s in state.get("stages", []) if s.get("done")}
    rows: list[dict[str, Any]] = []
    for name, rec in stages.items():
        if not name.endswith(".score") or not isinstance(rec.get("result"), dict):
            continue
        stored = rec["result"].get("__tensors__")
        if not stored:
            continue
        tensors, _ = read_checkpoint(Path(folder) / "stages" / stored)
        step = name[: -len(".score")]
        removed = {g: set(v) for g, v in _plan_of(stages.get(f"{step}.select", {}).get("result")).items()}
        for group, t in tensors.items():
            if t.dim() != 1:  # bookkeeping entries (a scoring time) are 0-d
                continue
            for c, v in enumerate(t.double().tolist()):
                rows.append({"step": step, "group": group, "channel": c, "score": v,
                             "removed": int(c in removed.get(group, ()))})
    return rows


def write_scores(folder: Path, state: Mapping[str, Any]) -> Path | None:
    """Write ``folder/scores.csv`` (module docstring); ``None`` (and no file) if no stage scored filters."""
    rows = score_rows(folder, state)
    if not rows:
        return None
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SCORE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "score": repr(r["score"])})
    path = Path(folder) / "scores.csv"
    atomic_write(path, buf.getvalue())
    return path


def read_scores(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``folder/scores.csv`` typed back (``[]`` when there is none)."""
    path = Path(folder) / "scores.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{"step": r["step"], "group": r["group"], "channel": int(r["channel"]), "score": float(r["score"]),
                 "removed": r["removed"] == "1"} for r in csv.DictReader(f)]


def read_sensitivity(folder: Path) -> dict[str, dict[str, list[float]]]:
    """Per group, ``{"removed_fraction": [...], "accuracy": [...]}`` from ``folder/sensitivity.json``
    (``{}`` when absent or not in the documented format; module docstring)."""
    path = Path(folder) / "sensitivity.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, dict):
        return {}
    out = {}
    for name, curve in groups.items():
        if isinstance(curve, dict):
            xs, ys = curve.get("removed_fraction"), curve.get("accuracy")
            if isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys):
                out[str(name)] = {"removed_fraction": [float(v) for v in xs], "accuracy": [float(v) for v in ys]}
    return out


def latency_lines(latency: Mapping[str, Any]) -> list[str]:
    """``latency, batch 1 (cpu, 1 thread): 2.60 ms -> 1.83 ms (x1.42)`` per batch size, from
    ``summary["latency"]`` (medians of :func:`~filterprune.metrics.measure_latency`)."""
    lines = []
    base, pruned = latency.get("base") or {}, latency.get("pruned") or {}
    for key, b in base.items():
        p = pruned.get(key)
        if not p:
            continue
        speed = b["median_ms"] / p["median_ms"] if p["median_ms"] > 0 else math.inf
        lines.append(f"latency, batch {b['batch_size']} ({b['device']}, {b['threads']} thread"
                     f"{'s' if b['threads'] != 1 else ''}): {b['median_ms']:.2f} ms -> {p['median_ms']:.2f} ms "
                     f"(x{speed:.2f}, median of {b['repeats']})")
    return lines


@dataclass
class RunRecord:
    """One run folder as its files describe it.

    Attributes:
        folder: the run folder.
        summary: ``summary.json``.
        state: ``run_state.json`` (``{}`` for a run that has none, e.g. ``train``).
        scores: ``scores.csv`` rows (:func:`read_scores`).
        sensitivity: ``sensitivity.json`` curves (:func:`read_sensitivity`).
        name: the label in plots (default: the folder's name).
    """

    folder: Path
    summary: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    name: str = ""

    @property
    def kind(self) -> str:
        """``"prune"`` or ``"train"`` (older summaries without ``kind``: guessed from their keys)."""
        return self.summary.get("kind") or ("prune" if "pruned" in self.summary else "train")

    @property
    def label(self) -> str:
        """A short name for legends: :attr:`name`, else the folder's name."""
        return self.name or self.folder.name


def read_run(folder: str | Path) -> RunRecord:
    """Read a run folder's records.

    Raises:
        FilterpruneError: ``folder`` is not a folder, or has no readable ``summary.json`` (one line, what to pass).
    """
    path = Path(folder)
    if not path.is_dir():
        raise FilterpruneError(f"{folder}: not a run folder (pass the --out folder of a prune or train run)")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        raise FilterpruneError(f"{folder}: no summary.json (not a finished prune or train run folder)") from None
    except (OSError, ValueError) as e:
        raise FilterpruneError(f"{folder}/summary.json: unreadable ({e})") from None
    if not isinstance(summary, dict):
        raise FilterpruneError(f"{folder}/summary.json: not a JSON object")
    try:
        state = json.loads((path / "run_state.json").read_text())
    except (OSError, ValueError):
        state = {}
    return RunRecord(path, summary, state if isinstance(state, dict) else {}, read_scores(path),
                     read_sensitivity(path))


def save_summary(folder: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``folder/summary.json`` atomically; return its path."""
    path = Path(folder) / "summary.json"
    atomic_write_json(path, dict(summary))
    return path
