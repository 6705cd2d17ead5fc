"""``filterprune compress`` as one library call: claim ``--out``, load, compress, write the report.

The output folder follows the project's rule (:func:`filterprune.utils.io.open_run_folder`): an
existing, non-empty ``--out`` is refused before any work unless ``overwrite`` (which replaces only the
files this command writes). The folder gets ``model.compressed.safetensors`` (the container),
``summary.json`` (stages, settings, size report) and ``report.txt`` (the before/after table).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..types import PathLike
from .pipeline import CompressOptions, LayerOptions, before_after_table, compress_model, layer_settings

logger = logging.getLogger(__name__)

__all__ = ["COMPRESS_FILES", "parse_layer_option", "run_compress"]

COMPRESS_FILES = ("model.compressed.safetensors", "summary.json", "report.txt")


def parse_layer_option(text: str) -> tuple[str, LayerOptions]:
    """``"layer3.1.conv1:sparsity=0.9,bits=5,gap_bits=4"`` -> ``("layer3.1.conv1", LayerOptions(0.9, 5, 4))``.

    Raises:
        ValueError: no ``NAME:`` prefix, an unknown key, or a value of the wrong type.
    """
    from ..config import parse_options

    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--layer takes NAME:sparsity=S,bits=B,gap_bits=G, got {text!r}")
    opts = parse_options(rest, key="--layer")
    unknown = sorted(set(opts) - {"sparsity", "bits", "gap_bits"})
    if unknown:
        raise ValueError(f"--layer {name}: unknown keys {unknown}; use sparsity, bits, gap_bits")
    for key, tp in (("sparsity", (int, float)), ("bits", int), ("gap_bits", int)):
        if key in opts and (not isinstance(opts[key], tp) or isinstance(opts[key], bool)):
            raise ValueError(f"--layer {name}: {key} must be a number, got {opts[key]!r}")
    return name.strip(), LayerOptions(**opts)


def run_compress(weights: PathLike, data: str, out: PathLike, options: CompressOptions, *,
                 train_cfg: TrainConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Compress the model in ``weights`` with ``options`` into the folder ``out``; returns the summary.

    Args:
        weights: a filterprune model checkpoint (``*.safetensors``), filter-pruned or not.
        data: a dataset name or path (``load_data``); its train split retrains, val and test report.
        out: the output folder (refused if it exists and is not empty, unless ``overwrite``).
        options: the recipe; the per-layer overrides are checked against the model before data loads.
        train_cfg: the retraining recipe (see :func:`~.pipeline.compress_model`).
        overwrite: replace a previous ``compress`` run in ``out``.

    Raises:
        RunFolderError, CheckpointError, DataError, ValueError: one line each, before any long work.
    """
    from ..api import load
    from ..data import load_data
    from ..utils.io import atomic_write, atomic_write_json, open_run_folder

    out = Path(out)
    with open_run_folder(out, "compress", overwrite=overwrite, owned=COMPRESS_FILES, inputs=[weights],
                         can_resume=False) as run, run.discarded_on_refusal():
        model = load(weights)
        layer_settings(model, options)  # unknown layer names and bad values fail here, before the data
        if options.filter_layer is not None and options.filter_layer not in dict(model.named_modules()):
            raise ValueError(f"--filter-layer {options.filter_layer!r} is not a layer of the model")
        splits = load_data(data)
        cfg = train_cfg or TrainConfig(epochs=1, lr=0.01, device="cpu" if not torch.cuda.is_available() else "auto")
        result = compress_model(model, splits, options, out / COMPRESS_FILES[0], cfg)
        table = before_after_table(result)
        summary = {"weights": str(weights), "data": data, "options": asdict(options),
                   "train": {"lr": cfg.lr, "batch_size": cfg.batch_size, "device": cfg.device}, **result,
                   "table": table}
        atomic_write_json(out / "summary.json", summary)
        atomic_write(out / "report.txt", table + "\n")
    return summary
