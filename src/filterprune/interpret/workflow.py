"""``filterprune explain`` as one library call: study one layer, write the grid, report.md and JSON.

Output folder (refused if it exists and is not empty, unless ``overwrite``; see
:func:`filterprune.utils.io.open_run_folder`): ``filters.json`` (every per-filter number and the
statistic), ``filters.png`` (the filter grid in CAR order) and ``report.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ..types import PathLike
from .figures import filter_titles, kernel_tiles, save_grid, top_patches
from .study import LayerStudy, study_layer

__all__ = ["EXPLAIN_FILES", "draw_filters", "report_markdown", "run_explain"]

EXPLAIN_FILES = ("filters.json", "filters.png", "report.md")


def draw_filters(model: nn.Module, study: LayerStudy, batches: Sequence[tuple[Tensor, Tensor]],
                 mean: Sequence[float], std: Sequence[float], path: Path) -> Path:
    """The grid of a study's filters, lowest CAR first (red titles: colour-selective), as a PNG at ``path``:
    first-layer kernels in pixel space, else each filter's strongest-response image patch
    (:mod:`.figures`)."""
    order = sorted(study.filters, key=lambda f: f["car_score"])
    if study.rule.startswith("kernel"):
        tiles = kernel_tiles(model.get_submodule(study.layer).weight, std)
        kind = "kernels in pixel space"
    else:
        tiles = top_patches(model, study.layer, batches, mean, std, at=study.activation or None)
        kind = "strongest-response patches"
    return save_grid([tiles[f["index"]] for f in order], filter_titles(order), [f["colour_selective"] for f in order],
                     path, f"{study.layer}: {kind}, lowest CAR first (red: colour-selective)")


def report_markdown(study: LayerStudy, weights: str, picture: str) -> str:
    """The human-readable report of a :class:`LayerStudy`."""
    s = study.statistic
    lines = [
        f"# Filters of `{study.layer}` (group `{study.group}`) in `{weights}`", "",
        f"CAR on {study.eval_images} training images (base accuracy {study.base_acc:.2f}%). "
        f"Colour rule: {study.rule}; colour-selective when >= 0.5. Input std: {study.input_std}.", "",
        f"**Of the k={s['k']} lowest-CAR filters, {s['car_count']} are colour-selective**; lowest L1: "
        f"{s['l1_count']}; random k-subsets: {s['random_mean']:.2f} +- {s['random_std']:.2f} "
        f"({s['random_draws']} draws), one-sided p = {s['p_value']:.3g} (exact hypergeometric {s['p_value_exact']:.3g}). "
        f"{s['colour_selective']} of the layer's {s['filters']} filters are colour-selective. "
        "(The CAR paper: 17/20 in AlexNet's conv1, 14/20 in conv2.)", "",
        f"![filters]({picture})", "",
        "| filter | CAR | colour index | colour-selective | L1 | classes it helps most | least |",
        "|---:|---:|---:|:---:|---:|---|---|",
    ]
    for f in sorted(study.filters, key=lambda f: f["car_score"]):
        lines.append(f"| {f['index']} | {f['car']:.2f} | {f['colour_index']:.3f} | {'yes' if f['colour_selective'] else ''}"
                     f" | {f['l1']:.3f} | {', '.join(f['most_helped_classes'])} | {', '.join(f['least_helped_classes'])} |")
    return "\n".join(lines) + "\n"


def run_explain(weights: PathLike, data: str, layer: str, out: PathLike, *, images: int = 1000, k: int = 20,
                draws: int = 1000, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Study ``layer`` of the model in ``weights`` on ``images`` training images of ``data``; write ``out``.

    Raises:
        RunFolderError, CheckpointError, DataError, ValueError: one line each, before the long work.
    """
    import importlib.util

    from ..api import load
    from ..data import BatchLoader, load_data
    from ..utils.io import atomic_write, atomic_write_json, open_run_folder

    if importlib.util.find_spec("matplotlib") is None:  # the grids need it: say so before any work
        raise ConfigError("filterprune explain draws its filter grids with matplotlib, which is not installed; "
                          "pip install 'filterprune[plots]' (or matplotlib)")
    if images < 1 or k < 1 or draws < 1:
        raise ValueError("--images, --k and --draws must be >= 1")
    out = Path(out)
    with open_run_folder(out, "explain", overwrite=overwrite, owned=EXPLAIN_FILES, inputs=[weights],
                         can_resume=False) as run, run.discarded_on_refusal():
        model = load(weights)
        if layer not in dict(model.named_modules()):
            raise ValueError(f"--layer {layer!r} is not a layer of the model")
        first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if first is None or first.in_channels != 3:
            raise ValueError(f"explain needs a model of RGB images; {weights} reads "
                             f"{getattr(first, 'in_channels', 'no')} input channel(s)")
        splits = load_data(data)
        ds = splits.train
        if ds.in_chans != 3:
            raise ValueError(f"explain needs RGB images; {data} has {ds.in_chans} channel(s)")
        batches = list(BatchLoader(ds.sample(images, seed), 250, train=False))
        study = study_layer(model, layer, batches, mean=ds.mean, std=ds.std, class_names=ds.classes, k=k,
                            draws=draws, seed=seed)
        draw_filters(model, study, batches, ds.mean, ds.std, out / "filters.png")
        record = {"weights": str(weights), "data": data, **dataclasses.asdict(study)}
        atomic_write_json(out / "filters.json", record)
        atomic_write(out / "report.md", report_markdown(study, str(weights), "filters.png"))
    return record
