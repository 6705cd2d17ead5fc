"""The JSON Schema (draft 2020-12) of ``summary.json``, version :data:`~filterprune.workflows.records.SCHEMA_VERSION`.

``docs/summary_schema.md`` explains every field; ``tests/workflows/test_summary_schema.py`` validates the
summaries of real prune and train runs against :data:`PRUNE_SUMMARY` and :data:`TRAIN_SUMMARY` (with the
``jsonschema`` package). Required keys are fixed; a method may add keys of its own (``iterations``,
``csgd``), so objects are open. Every fraction is a fraction *removed*, in [0, 1); accuracies are percent.
"""

from __future__ import annotations

from typing import Any

from .records import SCHEMA_VERSION

__all__ = ["PRUNE_SUMMARY", "TRAIN_SUMMARY", "schema_for"]

_PERCENT = {"type": "number", "minimum": 0, "maximum": 100}
_COUNT = {"type": "integer", "minimum": 0}
_ACCURACIES = {"type": "object", "required": ["val_acc"],
               "properties": {"val_acc": _PERCENT, "test_acc": _PERCENT}}
_REMOVED = {"type": "number", "minimum": 0, "maximum": 1}
_COST = {"type": "object", "required": ["base", "pruned", "removed_fraction"], "additionalProperties": False,
         "properties": {"base": _COUNT, "pruned": _COUNT, "removed_fraction": _REMOVED}}
_LATENCY_ONE = {"type": "object", "required": ["batch_size", "median_ms", "iqr_ms", "repeats", "threads", "device"],
                "properties": {"batch_size": {"type": "integer", "minimum": 1}, "median_ms": {"type": "number", "minimum": 0},
                               "iqr_ms": {"type": "number", "minimum": 0}, "repeats": {"type": "integer", "minimum": 1},
                               "threads": {"type": "integer", "minimum": 1}, "device": {"type": "string"}}}
_LATENCY = {"type": "object", "additionalProperties": _LATENCY_ONE, "minProperties": 1}
_WIDTHS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_COMMON = {
    "schema_version": {"const": SCHEMA_VERSION},
    "command": {"type": ["string", "null"]},
    "model": {"type": ["string", "null"]},
    "data": {"type": "string"},
    "classes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "config": {"type": "object"},
}

#: ``summary.json`` of ``filterprune prune`` (:func:`~filterprune.workflows.prune_run.run_prune`).
PRUNE_SUMMARY: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "filterprune prune summary.json",
    "type": "object",
    "required": ["schema_version", "kind", "command", "model", "criterion", "method", "data", "classes", "base",
                 "pruned", "finetuned", "finetune_epochs", "macs", "params", "latency", "report", "config",
                 "timings_s"],
    "properties": {
        **_COMMON,
        "kind": {"const": "prune"},
        "criterion": {"type": "string"},
        "method": {"type": "string"},
        "allocation": {"enum": ["global", "uniform", "cost", "sensitivity"]},
        "base": _ACCURACIES,
        "pruned": _ACCURACIES,
        "finetuned": _ACCURACIES,
        "finetune_epochs": _COUNT,
        "macs": _COST,
        "params": _COST,
        "latency": {"type": "object", "required": ["base", "pruned"], "additionalProperties": False,
                    "properties": {"base": _LATENCY, "pruned": _LATENCY}},
        "report": {"type": "object",
                   "required": ["criterion", "target_name", "target", "macs_before", "macs_after", "params_before",
                                "params_after", "widths_before", "widths_after", "steps", "max_error",
                                "macs_reduction", "params_reduction"],
                   "properties": {"widths_before": _WIDTHS, "widths_after": _WIDTHS,
                                  "macs_reduction": _REMOVED, "params_reduction": _REMOVED,
                                  "steps": {"type": "array"}, "max_error": {"type": ["number", "null"]}}},
        "timings_s": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
        "eval_images": {"type": "object", "required": ["val", "test", "asked"],
                        "properties": {"val": _COUNT, "test": _COUNT, "asked": _COUNT}},
        "train_images": {"type": "object", "required": ["train", "asked"],
                         "properties": {"train": _COUNT, "asked": _COUNT}},
        "bn_recalibration": {"type": "object", "required": ["images", "val_acc_before", "val_acc_after", "steps"],
                             "properties": {"images": _COUNT, "val_acc_before": {"type": ["number", "null"]},
                                            "val_acc_after": {"type": ["number", "null"]},
                                            "steps": {"type": "array"}}},
    },
}

#: ``summary.json`` of ``filterprune train`` (:func:`~filterprune.workflows.train_run.run_training`).
TRAIN_SUMMARY: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "filterprune train summary.json",
    "type": "object",
    "required": ["schema_version", "kind", "command", "model", "data", "classes", "macs", "params", "config",
                 "val_acc_start", "val_acc", "val_loss", "epochs", "epoch_time_s_median"],
    "properties": {
        **_COMMON,
        "kind": {"const": "train"},
        "macs": _COUNT,
        "params": _COUNT,
        "val_acc_start": _PERCENT,
        "val_acc": _PERCENT,
        "val_loss": {"type": "number"},
        "epochs": _COUNT,
        "epoch_time_s_median": {"type": ["number", "null"], "minimum": 0},
        "test_acc": _PERCENT,
        "test_loss": {"type": "number"},
        "test_per_class_acc": {"type": "object", "additionalProperties": _PERCENT},
    },
}


def schema_for(summary: dict[str, Any]) -> dict[str, Any]:
    """The schema a summary declares by its ``kind`` (``"prune"`` or ``"train"``).

    Raises:
        ValueError: no or an unknown ``kind``.
    """
    kinds = {"prune": PRUNE_SUMMARY, "train": TRAIN_SUMMARY}
    kind = summary.get("kind")
    if kind not in kinds:
        raise ValueError(f"summary kind {kind!r} is not one of {sorted(kinds)}")
    return kinds[kind]
