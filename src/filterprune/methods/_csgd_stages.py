"""``filterprune prune --criterion csgd`` as runner stages: widths, clusters, centripetal training, trim.

``csgd.widths`` (target widths from the width criterion's ranking) -> ``csgd.clusters`` (k-means per
group, also written to ``centripetal/clusters.json``) -> ``csgd.centripetal`` (the fine-tune epochs, checkpointed
every epoch under ``centripetal/``; model snapshot) -> ``csgd.trim`` (the checked trim; model snapshot).
A refused trim leaves the trained, untrimmed model in the folder; the message says how to force the trim
or train longer with ``--resume``. ``job`` is a :class:`filterprune.workflows.methods.PruneJob` (read by
attribute only: this layer does not import the workflows).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..api import PruneReport, StepRecord, conv_widths
from ..errors import PruningError
from ..graph.groups import PrunePlan
from ..graph.trace import trace_groups
from ..metrics import count
from ..selection import SelectOptions
from ..train.ddp import is_main
from ..utils.io import atomic_write
from ._clusters import cluster_groups, target_widths
from ._slots import Deviation
from ._trim import TrimResult
from .csgd_run import CSGDOptions, CSGDResult, _first_batch, centripetal_hook, trim_checked


def csgd_stages(job: Any) -> CSGDResult:
    """Run (or resume) C-SGD on ``job.runner.model`` to ``job.cfg.prune``'s target.

    Raises:
        ValueError: multi-step or iterative requests (C-SGD prunes in one round), or bad options.
        PruningError: the target is unreachable or the trim is refused (the untrimmed model is kept).
    """
    p, ft, run = job.cfg.prune, job.cfg.finetune, job.runner.stage
    if p.steps != 1 or p.step_ratio is not None:
        raise ValueError("C-SGD prunes in one round: leave --steps at 1 and --step-ratio unset")
    opts = CSGDOptions.from_kwargs(p.criterion_kwargs())
    select_opts = SelectOptions(target_macs=p.target_macs, target_params=p.target_params, ratio=p.ratio,
                                global_ranking=p.global_ranking, min_channels=p.min_channels, round_to=p.round_to,
                                allocation=p.allocation)
    widths = run("csgd.widths", lambda: target_widths(job.model, job.x, trace_groups(job.model, job.x), select_opts,
                                                      criterion=opts.width_criterion, data=job.train, seed=p.seed))
    clusters = run("csgd.clusters", lambda: cluster_groups(
        job.model, trace_groups(job.model, job.x, probe=False), widths, method=opts.clustering, seed=p.seed,
        include_bn=opts.include_bn, n_init=opts.n_init))
    if is_main() and not (job.folder / "centripetal" / "clusters.json").exists():
        atomic_write(job.folder / "centripetal" / "clusters.json", json.dumps(clusters, indent=1))

    def centripetal() -> list[dict[str, Any]]:
        groups = trace_groups(job.model, job.x, probe=False)
        hook = centripetal_hook(job.model, groups, clusters, ft, opts, len(job.train))
        return job.fit("csgd.centripetal", ft, hooks=[hook], run_dir=job.folder / "centripetal")

    history = run("csgd.centripetal", centripetal, snapshot=True)

    def trim_stage() -> dict[str, Any]:
        groups = trace_groups(job.model, job.x, probe=False)
        try:
            result = trim_checked(job.model, groups, clusters, opts, _first_batch(job.val))
        except PruningError as e:
            more = dict(p.criterion_kwargs(), force=True)
            forced = ",".join(f"{k}={v}" for k, v in more.items())
            raise PruningError(f"{e}. The trained, untrimmed model is kept: trim it with filterprune prune --resume "
                               f"--out {job.folder} --criterion-options {forced}, or train longer with --resume "
                               f"--out {job.folder} --finetune-epochs {2 * ft.epochs}") from None
        return {"plan": result.plan.prune_idxs, "deviation": dataclasses.asdict(result.deviation),
                "logit_diff": result.logit_diff}

    t = run("csgd.trim", trim_stage, snapshot=True)
    trimmed = TrimResult(PrunePlan({k: list(v) for k, v in t["plan"].items()}), Deviation(**t["deviation"]),
                         t["logit_diff"])
    macs, params = count(job.model, job.x)
    name, target = select_opts.target
    report = PruneReport(
        criterion="csgd", target_name=name, target=target, macs_before=job.baseline.macs, macs_after=int(macs),
        params_before=job.baseline.params, params_after=int(params), widths_before=job.widths_before,
        widths_after=conv_widths(job.model),
        steps=(StepRecord(1, target, trimmed.plan.num_removed(), int(macs), int(params), trimmed.logit_diff),),
        max_error=trimmed.logit_diff,
    )
    return CSGDResult(report, trimmed, clusters, history)
