"""The sensitivity pass of ``--allocation sensitivity`` as a runner stage, and the plot of its curves.

Stage ``stepK.sensitivity``: per prunable group, the validation metric with that group alone pruned to
each ratio of the grid by the criterion's ranking (:func:`filterprune.selection.measure_curves`),
measured with :func:`filterprune.train.evaluate` on a fixed, seeded subset of the validation split
(``--sensitivity-images``). The curves go to ``sensitivity.json`` in the run folder (``sensitivity-stepK.json``
for later steps), written after every group, so a run killed inside the pass measures only the groups
it had not finished when resumed. ``sensitivity.png`` plots them (when matplotlib is installed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..graph.groups import PrunePlan
from ..selection import SensitivityCurves, measure_curves
from ..types import PathLike

logger = logging.getLogger(__name__)


def curves_file(step: int) -> str:
    """The run-folder file name of step ``step``'s curves."""
    return "sensitivity.json" if step == 1 else f"sensitivity-step{step}.json"


def _val_loader(job: Any) -> Any:
    from ..data import BatchLoader
    from ..utils.seed import pick_device

    p, ft = job.cfg.prune, job.cfg.finetune
    val = job.splits.val
    if not p.sensitivity_images or p.sensitivity_images >= len(val):
        return job.val
    return BatchLoader(val.sample(p.sensitivity_images, p.seed), ft.eval_batch_size, train=False,
                       device=pick_device(ft.device))


def job_curves(job: Any, groups: Any, scores: Any, step: int) -> SensitivityCurves:
    """Measure step ``step``'s curves on ``job.model`` (resuming from, and writing, the run folder's
    file, and its plot) with ``train.evaluate`` on the validation subset."""
    from ..train import evaluate

    p = job.cfg.prune
    path = job.folder / curves_file(step)
    loader = _val_loader(job)

    def measure(model):
        r = evaluate(model, loader, job.device)
        return {"loss": r["loss"], "acc": r["acc"], "images": r["n"]}

    curves = measure_curves(job.model, groups, scores, measure, points=p.sensitivity_points,
                            metric=p.sensitivity_metric, cache=path if job.runner.writer else None,
                            ignored_layers=tuple(p.layer_ratios()))
    if job.runner.writer:
        plot_sensitivity(curves, path.with_suffix(".png"))
    return curves


def sensitivity_stage(job: Any, groups: Any, scores: Any, step: int) -> SensitivityCurves:
    """Run (or resume) stage ``step{step}.sensitivity`` (:func:`job_curves`); return the curves."""
    return SensitivityCurves.from_dict(job.runner.stage(f"step{step}.sensitivity",
                                                        lambda: job_curves(job, groups, scores, step).to_dict()))


def plan_summary(curves: SensitivityCurves, groups: Any, plan: PrunePlan, step: int) -> dict[str, Any]:
    """For ``summary.json``: the pass's cost, its file, and the equal-drop threshold the plan reached
    (the largest predicted drop among the pruned groups) with the ratio each group got."""
    sizes = {g.id: g.size for g in groups}
    ratios = {gid: len(idxs) / sizes[gid] for gid, idxs in plan.prune_idxs.items() if gid in curves.groups}
    drops = [curves.drop(gid, r) for gid, r in ratios.items()]
    return {"step": step, "file": curves_file(step), "metric": curves.metric, "cost": curves.cost,
            "threshold": max(drops, default=0.0), "ratios": ratios}


def plot_sensitivity(curves: SensitivityCurves, out: PathLike) -> Path | None:
    """Plot every group's measured drop (dots) and monotone fit (line) against the ratio removed.

    Returns the file written, or ``None`` (and a log line) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s (pip install matplotlib)", out)
        return None
    from ..utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for gid, e in curves.groups.items():
        line, = ax.plot([0, *e["ratios"]], [0, *e["monotone"]], lw=1.2, label=gid)
        ax.plot(e["ratios"], e["drop"], "o", ms=2.5, color=line.get_color())
    unit = "loss increase (cross-entropy)" if curves.metric == "loss" else "accuracy drop (points)"
    ax.set(xlabel="fraction of the group's channels removed", ylabel=unit,
           title=f"sensitivity per group ({curves.cost.get('images', 0):,} images measured)")
    ax.grid(alpha=0.3)
    if len(curves.groups) <= 24:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(out)
