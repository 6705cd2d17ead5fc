"""The whole chain on one model: (filter pruning) -> magnitude pruning + retraining -> k-means weight
sharing + centroid retraining -> Huffman coding into the container, then the container is decoded and
checked bit-identical to the model that was evaluated.

Source: the CAR paper (Abbasi-Asl & Yu, arXiv 1705.07356) compresses a CAR-filter-pruned layer with
Deep Compression (Han et al., arXiv 1510.00149); the defaults below are Deep Compression's (8-bit
codebooks and 8-bit relative indices for conv layers, 5 and 5 for fully-connected ones, §2-§3).
The filter-pruning step is optional: one layer's group by greedy CAR (default) or by L1, or none when
the weights are already filter-pruned (e.g. by ``filterprune prune``); in every case
``original_weights`` comes from the architecture before filter pruning (``filterprune_cfg``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..train.loop import evaluate, fit
from ..utils.seed import pick_device
from .container import decompress, size_report, write_compressed
from .stages import MaskHook, SharingHook, compressible_layers, magnitude_masks, share_weights

logger = logging.getLogger(__name__)

__all__ = ["CompressOptions", "LayerOptions", "compress_model", "layer_settings"]

FILTER_CRITERIA = ("car", "l1", "none")


@dataclass(frozen=True)
class LayerOptions:
    """One layer's settings; ``None`` takes the network-wide default.

    Attributes:
        sparsity: fraction of the layer's weights removed by magnitude (0 <= s < 1).
        bits: codebook index width b (2**b - 1 centroids plus the zero).
        gap_bits: width of a relative index (zero run) before Huffman coding.
    """

    sparsity: float | None = None
    bits: int | None = None
    gap_bits: int | None = None


@dataclass(frozen=True)
class CompressOptions:
    """The compression recipe.

    Attributes:
        sparsity: default fraction of weights removed per layer.
        conv_bits: codebook bits of conv layers (Deep Compression: 8).
        fc_bits: codebook bits of linear layers (Deep Compression: 5).
        conv_gap_bits: relative-index bits of conv layers (Deep Compression: 8).
        fc_gap_bits: relative-index bits of linear layers (Deep Compression: 5).
        layers: per-layer overrides, ``{name: LayerOptions}``.
        filter_layer: a layer whose filters are pruned first (its channel group); ``None``: skip.
        filter_ratio: fraction of that group's filters removed.
        filter_criterion: ``car`` (greedy, ``car_k`` per step on ``car_images`` training images), ``l1`` or ``none``.
        car_images: CAR's evaluation-set size.
        car_k: filters removed per greedy CAR step.
        prune_epochs: retraining epochs with the masks held.
        share_epochs: centroid fine-tuning epochs.
        share_lr: peak learning rate of the centroid fine-tuning. A centroid moves by the *sum* of its
            members' gradients (Deep Compression Eq. 3), a step many times larger than one weight's, so
            this is lower than the retraining rate [I: the paper gives no rate].
        train_images: training images per epoch (a fixed seeded sample; 0 = all).
        seed: the sample, the data order and k-means.
    """

    sparsity: float = 0.5
    conv_bits: int = 8
    fc_bits: int = 5
    conv_gap_bits: int = 8
    fc_gap_bits: int = 5
    layers: dict[str, LayerOptions] = field(default_factory=dict)
    filter_layer: str | None = None
    filter_ratio: float = 0.5
    filter_criterion: str = "car"
    car_images: int = 500
    car_k: int = 4
    prune_epochs: int = 1
    share_epochs: int = 1
    share_lr: float = 0.001
    train_images: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.filter_criterion not in FILTER_CRITERIA:
            raise ValueError(f"filter_criterion must be one of {', '.join(FILTER_CRITERIA)}, "
                             f"not {self.filter_criterion!r}")
        if not 0 <= self.sparsity < 1 or not 0 < self.filter_ratio < 1:
            raise ValueError("sparsity must be in [0, 1) and filter_ratio in (0, 1)")
        for name in ("conv_bits", "fc_bits", "conv_gap_bits", "fc_gap_bits"):
            if not 1 <= getattr(self, name) <= 16:
                raise ValueError(f"{name} must be in 1..16, got {getattr(self, name)}")
        for name in ("car_images", "car_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if min(self.prune_epochs, self.share_epochs, self.train_images, self.share_lr) < 0:
            raise ValueError("epochs, share_lr and train_images must be >= 0")


def layer_settings(model: nn.Module, options: CompressOptions) -> dict[str, dict[str, Any]]:
    """``{layer: {"sparsity", "bits", "gap_bits"}}`` for every conv/linear layer of ``model``.

    Raises:
        ValueError: an override names no conv/linear layer, or a value is out of range.
    """
    layers = compressible_layers(model)
    unknown = sorted(set(options.layers) - set(layers))
    if unknown:
        raise ValueError(f"no conv/linear layer named {', '.join(unknown)}; layers: {', '.join(layers)}")
    out = {}
    for name, m in layers.items():
        fc = isinstance(m, nn.Linear)
        o = options.layers.get(name, LayerOptions())
        s = {"sparsity": options.sparsity if o.sparsity is None else o.sparsity,
             "bits": (options.fc_bits if fc else options.conv_bits) if o.bits is None else o.bits,
             "gap_bits": (options.fc_gap_bits if fc else options.conv_gap_bits) if o.gap_bits is None else o.gap_bits}
        if not 0 <= s["sparsity"] < 1 or not 1 <= s["bits"] <= 16 or not 1 <= s["gap_bits"] <= 16:
            raise ValueError(f"layer {name}: sparsity must be in [0, 1), bits and gap_bits in 1..16")
        out[name] = s
    return out


def original_weights(model: nn.Module) -> dict[str, int]:
    """Weights per conv/linear layer of the architecture before filter pruning (rebuilt from ``arch``)."""
    from ..models import create_model

    arch = dict(getattr(model, "filterprune_cfg", None) or {})
    if "name" not in arch:
        raise ValueError("model has no filterprune_cfg; build it with filterprune.models.create_model")
    with torch.device("meta"):
        base = create_model(arch["name"], **{k: v for k, v in arch.items() if k not in ("name", "class")})
    return {name: m.weight.numel() for name, m in compressible_layers(base).items()}


def _filter_prune(model: nn.Module, x: torch.Tensor, train_ds, options: CompressOptions) -> dict[str, Any]:
    from ..criteria import ScoringContext, create_criterion
    from ..criteria.car_greedy import car_prune_layer, find_group
    from ..data import BatchLoader
    from ..graph import PrunePlan
    from ..graph.check import apply_plan_checked
    from ..graph.trace import trace_groups

    groups = trace_groups(model, x)
    group = find_group(groups, options.filter_layer)
    n_remove = max(1, round(options.filter_ratio * group.size))
    t = time.perf_counter()
    if options.filter_criterion == "car":
        batches = list(BatchLoader(train_ds.sample(options.car_images, options.seed), 500, train=False))
        res = car_prune_layer(model, x, batches, options.filter_layer, n_remove, k=options.car_k)
        removed = sorted(res.removed)
    else:
        scores = create_criterion("l1").score(ScoringContext(model, x, groups))[group.id]
        removed = sorted(scores.argsort()[:n_remove].tolist())
        apply_plan_checked(model, groups, PrunePlan({group.id: removed}), x)
    return {"group": group.id, "criterion": options.filter_criterion, "removed": removed,
            "kept": group.size - n_remove, "seconds": time.perf_counter() - t}


def _nonzeros(model: nn.Module) -> int:
    return sum(int((m.weight != 0).sum()) for m in compressible_layers(model).values())


def compress_model(model: nn.Module, splits, options: CompressOptions, out_path: str | Path,
                   train_cfg: TrainConfig | None = None, *, base_metrics: dict[str, Any] | None = None,
                   check_accuracy: bool = True) -> dict[str, Any]:
    """Run the chain on ``model`` (changed in place) and write the container to ``out_path``.

    Args:
        model: a trained model built by ``create_model`` (possibly filter-pruned already).
        splits: ``DataSplits``: retraining on ``train``, selection/reporting on ``val``, ``test`` reported.
        options: the recipe.
        out_path: the container file (``*.safetensors``); must not exist.
        train_cfg: the retraining recipe (epochs are taken from ``options``); default: the prune
            workflow's fine-tune recipe (SGD Nesterov, lr 0.01 cosine, batch 128, wd 5e-4).
        base_metrics: the base model's row if already measured (``{"val_acc", "test_acc"}``), to
            save its evaluation. The test split is evaluated for the base and the compressed model
            only; the stages in between are reported on the validation split.
        check_accuracy: also re-evaluate the decompressed model (its weights are always compared
            bit for bit with the evaluated model's).

    Returns:
        ``{"stages": [{stage, val_acc, test_acc, nonzero_weights}], "filter_pruning", "settings",
        "size_report", "path"}``.

    Raises:
        ValueError: bad options; FileExistsError: ``out_path`` exists; RuntimeError: the container
        does not decode to the evaluated model bit for bit (a bug).
    """
    from ..data import BatchLoader

    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; choose another path")
    cfg = train_cfg or TrainConfig(epochs=1, lr=0.01, schedule="cosine", device="cpu")
    originals = original_weights(model)
    settings = layer_settings(model, options)  # validates the overrides before any long work
    x = torch.zeros(2, splits.train.in_chans, splits.train.image_size, splits.train.image_size)
    n_train = options.train_images or len(splits.train)
    train = BatchLoader(splits.train.sample(n_train, options.seed + 1), cfg.batch_size, train=True, seed=options.seed)
    val = BatchLoader(splits.val, cfg.eval_batch_size, train=False)
    test = BatchLoader(splits.test, cfg.eval_batch_size, train=False) if splits.test is not None else None
    stages: list[dict[str, Any]] = []

    device = pick_device(cfg.device)
    model.to(device)  # before the masks and codebooks are made from its tensors

    def record(stage: str, m: nn.Module, with_test: bool = True) -> dict[str, Any]:
        m.to(device)  # the decompressed copy is read onto the CPU
        row = {"stage": stage, "val_acc": evaluate(m, val, device)["acc"],
               "test_acc": evaluate(m, test, device)["acc"] if test is not None and with_test else None,
               "nonzero_weights": _nonzeros(m)}
        stages.append(row)
        logger.info("%s: val acc %.2f, test acc %s, nonzero weights %d", stage, row["val_acc"], row["test_acc"],
                    row["nonzero_weights"])
        return row

    if base_metrics is None:
        record("base", model)
    else:
        stages.append({"stage": "base", "val_acc": base_metrics["val_acc"], "test_acc": base_metrics["test_acc"],
                       "nonzero_weights": _nonzeros(model)})
    filt = None
    if options.filter_layer is not None and options.filter_criterion != "none":
        filt = _filter_prune(model, x, splits.train, options)
        record(f"filter-pruned ({options.filter_criterion})", model, with_test=False)
        settings = layer_settings(model, options)
    masks = magnitude_masks(model, {n: s["sparsity"] for n, s in settings.items()})
    mask_hook = MaskHook(masks)
    mask_hook.on_fit_start(model, None)
    record("magnitude-pruned", model, with_test=False)
    if options.prune_epochs:
        fit(model, train, None, replace(cfg, epochs=options.prune_epochs), hooks=[mask_hook])
        record("pruned + retrained", model, with_test=False)
    shared = share_weights(model, {n: s["bits"] for n, s in settings.items()}, seed=options.seed)
    share_hook = SharingHook(shared)
    record("weight-shared", model, with_test=False)
    if options.share_epochs:
        fit(model, train, None, replace(cfg, epochs=options.share_epochs, lr=options.share_lr, seed=cfg.seed + 1), hooks=[share_hook])
    shared = share_hook.codebooks(model)
    final = record("compressed (evaluated)", model)
    meta = {"settings": settings, "filter_pruning": filt, "stages": stages}
    write_compressed(model.cpu(), shared, out_path, gap_bits={n: s["gap_bits"] for n, s in settings.items()},
                     original_weights=originals, meta=meta)
    restored = decompress(out_path)
    mismatch = [k for k, v in model.state_dict().items() if not torch.equal(v, restored.state_dict()[k])]
    if mismatch:
        raise RuntimeError(f"{out_path}: decompressed tensors differ from the evaluated model: {mismatch[:3]}")
    if check_accuracy:
        check = record("decompressed", restored)
        if (check["val_acc"], check["test_acc"]) != (final["val_acc"], final["test_acc"]):
            raise RuntimeError(f"{out_path}: decompressed model evaluates differently")
    return {"path": str(out_path), "stages": stages, "filter_pruning": filt, "settings": settings,
            "size_report": size_report(out_path)}


def before_after_table(result: dict[str, Any]) -> str:
    """A plain-text table: accuracy per stage, then bits per compressed layer and the network."""
    lines = [f"{'stage':<26}{'val acc':>9}{'test acc':>10}{'nonzero weights':>17}"]
    for r in result["stages"]:
        test = "-" if r["test_acc"] is None else f"{r['test_acc']:.2f}"
        lines.append(f"{r['stage']:<26}{r['val_acc']:>9.2f}{test:>10}{r['nonzero_weights']:>17,}")
    rep = result["size_report"]
    lines.append("")
    lines.append(f"{'layer':<22}{'orig weights':>13}{'now':>8}{'entries':>9}{'bits':>9}{'ratio':>8}")
    for name, r in rep["layers"].items():
        lines.append(f"{name:<22}{r['original_weights']:>13,}{r['weights']:>8,}{r['entries']:>9,}"
                     f"{r['compressed_bits']:>9,}{r['ratio']:>7.1f}x")
    n = rep["network"]
    lines.append(f"{'network (whole file)':<22}{n['original_bits'] // 32:>13,}{'':>8}{'':>9}"
                 f"{n['compressed_bits']:>9,}{n['ratio']:>7.1f}x")
    return "\n".join(lines)


