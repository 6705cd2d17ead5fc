"""The method registry: each pruning method owns its workflow as a sequence of runner stages.

``run_prune`` (:mod:`filterprune.workflows.prune_run`) knows no method: it evaluates the base model,
asks :func:`method_for` which :class:`Method` handles ``--criterion`` (and ``--step-ratio``), runs it,
evaluates, fine-tunes if the method leaves that to it, and writes the summary. A method is a function
``run(job) -> MethodResult`` that calls ``job.runner.stage(...)`` for each unit of work, so every
method is resumable the same way (:mod:`filterprune.workflows.runner`). Registered here:

===================  ===========================================================================
``scores`` (default)  every registered criterion (l1, l2, bn, taylor, random, pls-vip...): per step
                      ``stepK.score`` -> ``stepK.select`` -> ``stepK.apply`` [-> ``stepK.finetune``]
``car``, ``car-classwise``  the same stages on a fixed, seeded, un-augmented training subset, raw
                      accuracy drops (no normalisation), ``k=N``: about N filters per greedy step
``iterative``         ``--step-ratio P`` (PLS+VIP's schedule, any criterion): ``iterK.score`` ->
                      ``iterK.select`` -> ``iterK.apply`` -> ``iterK.finetune`` until the MACs target
``csgd``              ``csgd.widths`` -> ``csgd.clusters`` -> ``csgd.centripetal`` -> ``csgd.trim``
===================  ===========================================================================

A method also declares which config changes only *extend* a run (``extends``, e.g. more fine-tune
epochs) and from which stage a resumed run must then run again (``reopens``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PruneRunConfig, TrainConfig
from ..registry import Registry
from ..selection import Baseline
from .runner import Runner

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "Method", "MethodResult", "PruneJob", "method_for", "method_names", "register_method"]


@dataclass
class PruneJob:
    """Everything a method's stages read: the config, the runner, the model being pruned and the data.

    Attributes:
        cfg: the resolved run config.
        runner: records the stages; ``runner.model`` is the model being pruned (methods read it there,
            since a resumed run replaces it by the last snapshot).
        x: example inputs (tracing, counting, the masked-vs-pruned check).
        splits: the data splits (``DataSplits``).
        train, val, test: batch loaders (``test`` may be ``None``).
        device: where the model runs.
        baseline: MACs, params and group widths of the unpruned model (targets are fractions of it).
        widths_before: conv widths of the unpruned model.
        folder: the run folder.
        recalibrations: one record per BatchNorm re-calibration so far (:meth:`recalibrate`).
    """

    cfg: PruneRunConfig
    runner: Runner
    x: torch.Tensor
    splits: Any
    train: Any
    val: Any
    test: Any
    device: torch.device
    baseline: Baseline
    widths_before: dict[str, int]
    folder: Path
    recalibrations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        """The model being pruned (the runner's current one)."""
        return self.runner.model

    def accuracies(self, model: nn.Module | None = None) -> dict[str, float]:
        """Validation (and test, if any) accuracy in percent."""
        from ..train import evaluate

        model = model if model is not None else self.model
        out = {"val_acc": evaluate(model, self.val, self.device)["acc"]}
        if self.test is not None:
            out["test_acc"] = evaluate(model, self.test, self.device)["acc"]
        return out

    def val_accuracy(self, model: nn.Module | None = None) -> float:
        """Validation accuracy in percent."""
        from ..train import evaluate

        return evaluate(model if model is not None else self.model, self.val, self.device, desc="evaluate val")["acc"]

    def evaluate_now(self, step: int, last: bool) -> bool:
        """Whether step ``step`` (1-based) of a schedule is evaluated: every ``--eval-every`` K-th, and the last."""
        return last or step % self.cfg.prune.eval_every == 0

    def recalibration_loader(self) -> Any:
        """``--bn-recalibrate N`` fixed training images, stratified, shuffled once (a batch never holds
        one class only), not augmented, in balanced batches of at most the eval batch size."""
        from ..data.stream import make_loader
        from ..data.subsets import SUBSET_SEED, fixed_subset

        n = self.cfg.prune.bn_recalibrate
        images = fixed_subset(self.splits.train, n)
        images = images.sample(len(images), SUBSET_SEED)  # stratified subsets come in class order
        ebs = self.cfg.finetune.eval_batch_size
        batch = -(-len(images) // -(-len(images) // ebs))  # ceil(n / ceil(n / ebs)): no short last batch
        return make_loader(images, batch, train=False, device=self.device)

    def recalibrate(self, name: str, *, report: bool = True) -> dict[str, Any]:
        """Stage ``name``: re-estimate every BatchNorm's running statistics on ``--bn-recalibrate N``
        training images (:func:`~filterprune.train.bn_recalibrate.recalibrate_bn`), snapshot the model;
        with ``report``, val accuracy before and after. Returns (and keeps in :attr:`recalibrations`)
        ``{"stage", "images", "layers", "val_acc_before", "val_acc_after"}``; ``{}`` when it is off."""
        n = self.cfg.prune.bn_recalibrate
        if n <= 0:
            return {}

        def work() -> dict[str, Any]:
            from ..train.bn_recalibrate import batchnorms, recalibrate_bn

            if not batchnorms(self.model):
                return {"stage": name, "images": 0, "layers": 0, "val_acc_before": None, "val_acc_after": None}
            before = self.val_accuracy() if report else None
            done = recalibrate_bn(self.model, self.recalibration_loader(), n, self.device)
            after = self.val_accuracy() if report else None
            if report:
                logger.info("%s: BatchNorm re-calibrated on %d training images: val acc %.2f -> %.2f",
                            name, done["images"], before, after)
            return {"stage": name, **done, "val_acc_before": before, "val_acc_after": after}

        record = self.runner.stage(name, work, snapshot=True)
        self.recalibrations.append(record)
        return record

    def recalibration_summary(self) -> dict[str, Any]:
        """``summary.json``'s ``bn_recalibration``: the images asked for (0 when none ran: ``--bn-recalibrate
        0``, or C-SGD, whose trim is lossless), the last reported before/after val accuracies (right after
        the last prune step) and every re-calibration's record."""
        n = self.cfg.prune.bn_recalibrate if self.recalibrations else 0
        reported = [r for r in self.recalibrations if r.get("val_acc_before") is not None]
        last = reported[-1] if reported else {}
        return {"images": n, "val_acc_before": last.get("val_acc_before"), "val_acc_after": last.get("val_acc_after"),
                "steps": list(self.recalibrations)}

    def fit(self, name: str, cfg: TrainConfig, hooks=(), run_dir: Path | None = None) -> list[dict[str, Any]]:
        """Train :attr:`model` with ``cfg`` in stage ``name``, checkpointing each epoch in ``run_dir``
        (default ``stages/<name>``) and continuing after the newest checkpoint there."""
        from ..train import fit

        run_dir = run_dir or self.runner.fit_dir(name)
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("epoch_*.safetensors"))
        return fit(self.model, self.train, self.val, cfg, run_dir=run_dir, hooks=hooks, resume=resume)

    def step_finetune(self) -> Callable[[str], Any] | None:
        """``finetune(stage_name)`` between steps/iterations, or ``None`` without ``--step-finetune-epochs``."""
        p = self.cfg.prune
        if p.step_finetune_epochs <= 0:
            return None
        cfg = dataclasses.replace(self.cfg.finetune, epochs=p.step_finetune_epochs)

        def finetune(name: str) -> Any:
            return self.runner.stage(name, lambda: self.fit(name, cfg), snapshot=True)

        return finetune


@dataclass
class MethodResult:
    """What a method hands back to ``run_prune``.

    Attributes:
        report: a :class:`~filterprune.api.PruneReport`.
        summary: extra ``summary.json`` entries (``iterations``, ``csgd``...).
        finetuned: ``True`` if the method already spent the fine-tune budget (C-SGD's centripetal
            training); ``run_prune`` then does not fine-tune.
        history: the per-epoch records of that training.
    """

    report: Any
    summary: dict[str, Any] = field(default_factory=dict)
    finetuned: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    Attributes:
        name: the registry key (a ``--criterion`` value, or ``scores``/``iterative``).
        run: ``run(job) -> MethodResult``.
        extends: config keys a resumed run may change, and how (``"increase"`` or ``"any"``).
        reopens: for each of those keys, the first stage a resumed run redoes when it changed.
        description: one line for ``--help``.
    """

    name: str
    run: Callable[[PruneJob], MethodResult]
    extends: Mapping[str, str] = field(default_factory=dict)
    reopens: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


METHODS: Registry[Method] = Registry("method")

#: Every run may change these on resume: more fine-tune epochs (the fine-tune runs again from its newest
#: checkpoint with the longer schedule), how many fine-tune checkpoints are kept.
COMMON_EXTENDS = {"finetune.epochs": "increase", "finetune.keep_checkpoints": "any"}
COMMON_REOPENS = {"finetune.epochs": "finetune"}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` under ``method.name`` (replacing nothing)."""
    METHODS.register(method.name)(lambda: method)
    return method


def method_names() -> list[str]:
    """Names ``--criterion`` accepts besides the registered criteria (``csgd``)."""
    from ..criteria import list_criteria

    return sorted(set(METHODS.names()) - {"scores", "iterative"} - set(list_criteria()))


def method_for(cfg: PruneRunConfig) -> Method:
    """The method that runs ``cfg``: the one registered under ``--criterion``, else ``iterative`` with
    ``--step-ratio``, else ``scores``. A criterion's own method may refuse ``--step-ratio``."""
    p = cfg.prune
    if p.criterion in METHODS and (p.step_ratio is None or p.criterion in method_names()):
        return METHODS.create(p.criterion)
    return METHODS.create("iterative" if p.step_ratio is not None else "scores")
