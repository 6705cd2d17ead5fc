"""``filterprune prune --criterion csgd``: :func:`~filterprune.methods.csgd_run.csgd_prune` (the function
``fp.csgd`` calls too) with the run's stages, so every step is recorded and resumable.

``csgd.widths`` (target widths from the width criterion's ranking) -> ``csgd.clusters`` (k-means per
group, also written to ``centripetal/clusters.json``) -> ``csgd.centripetal`` (the fine-tune epochs, checkpointed
every epoch under ``centripetal/``; model snapshot) -> ``csgd.trim`` (the checked trim; model snapshot).
A refused trim leaves the trained, untrimmed model in the folder; the message says how to force the trim
or train longer with ``--resume``. ``job`` is a :class:`filterprune.workflows.methods.PruneJob` (read by
attribute only: this layer does not import the workflows).
"""

from __future__ import annotations

from typing import Any

from ..errors import PruningError
from .csgd_run import CSGDOptions, CSGDResult, csgd_prune


def csgd_stages(job: Any, curves_for: Any = None) -> CSGDResult:
    """Run (or resume) C-SGD on ``job.runner.model`` to ``job.cfg.prune``'s target.

    ``curves_for(groups, scores)``: the sensitivity curves, for ``--allocation sensitivity`` widths.

    Raises:
        ValueError: multi-step or iterative requests (C-SGD prunes in one round), or bad options.
        PruningError: the target is unreachable or the trim is refused (the untrimmed model is kept).
    """
    p, ft = job.cfg.prune, job.cfg.finetune
    if p.steps != 1 or p.step_ratio is not None:
        raise ValueError("C-SGD prunes in one round: leave --steps at 1 and --step-ratio unset")
    opts = CSGDOptions.from_kwargs(p.criterion_kwargs())
    try:
        return csgd_prune(job.model, job.x, job.train, job.val, ft, target_macs=p.target_macs,
                          target_params=p.target_params, ratio=p.ratio, global_ranking=p.global_ranking,
                          min_channels=p.min_channels, round_to=p.round_to, allocation=p.allocation_mode(), seed=p.seed,
                          options=opts, curves_for=curves_for,
                          run_dir=job.folder / "centripetal", stage=job.runner.stage,
                          baseline=(job.baseline.macs, job.baseline.params, job.widths_before))
    except PruningError as e:
        if not job.runner.done("csgd.centripetal") or job.runner.done("csgd.trim"):
            raise
        more = dict(p.criterion_kwargs(), force=True)
        forced = ",".join(f"{k}={v}" for k, v in more.items())
        raise PruningError(f"{e}. The trained, untrimmed model is kept: trim it with filterprune prune --resume "
                           f"--out {job.folder} --criterion-options {forced}, or train longer with --resume "
                           f"--out {job.folder} --finetune-epochs {2 * ft.epochs}") from None
