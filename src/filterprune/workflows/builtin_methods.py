"""The built-in prune methods, registered on import (``workflows/__init__.py`` imports this module).

``scores``, ``iterative``, ``car`` and ``car-classwise`` live in ``workflows/_scored.py``; ``csgd`` runs
the C-SGD stages of ``methods/_csgd_stages.py``. Registering here, above both, keeps the imports
one-way: ``workflows/methods.py`` (the registry) imports neither.
"""

from __future__ import annotations

from ..methods._csgd_stages import csgd_stages
from ..selection import SensitivityCurves
from . import _scored  # noqa: F401  (registers scores, car, car-classwise, iterative)
from ._sensitivity import curves_file, job_curves
from .methods import Method, MethodResult, PruneJob, register_method


def csgd(job: PruneJob) -> MethodResult:
    """C-SGD as a prune method: cluster, centripetal training (the fine-tune epochs), trim. With
    ``--allocation sensitivity`` the widths come from curves measured with the width criterion's ranking.

    No BatchNorm re-calibration after the trim (``--bn-recalibrate`` does not apply): the trim removes
    filters that centripetal training made identical to kept ones, so the trimmed model computes what the
    trained one did and its BatchNorm statistics stay exact."""
    sensitive = job.cfg.prune.allocation_mode() == "sensitivity"
    result = csgd_stages(job, curves_for=(lambda g, s: job_curves(job, g, s, 1)) if sensitive else None)
    summary = {"csgd": result.summary()}
    path = job.folder / curves_file(1)
    if sensitive and path.is_file():
        summary["sensitivity"] = [{"step": 1, "file": path.name, "cost": SensitivityCurves.load(path).cost}]
    return MethodResult(result.report, summary, finetuned=True, history=result.history)


register_method(Method(
    "csgd", csgd, description="C-SGD: cluster, centripetal training (the fine-tune epochs), trim",
    extends={"finetune.epochs": "increase", "finetune.keep_checkpoints": "any",
             "prune.criterion_options.force": "any", "prune.criterion_options.max_deviation": "any"},
    reopens={"finetune.epochs": "csgd.centripetal", "prune.criterion_options.force": "csgd.trim",
             "prune.criterion_options.max_deviation": "csgd.trim"},
))
