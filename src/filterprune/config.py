"""Typed, strict configuration: frozen dataclasses with defaults in one place, YAML in and out.

Precedence: dataclass defaults < YAML file < explicitly passed CLI flags. Unknown keys and wrong types
raise a one-line ``ValueError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .types import PathLike

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    """One recipe for training from scratch, fine-tuning and training-time methods (C-SGD).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimizer step.
        lr: peak learning rate (after warm-up).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 on conv/linear weights; never on BatchNorm parameters or biases.
        warmup_epochs: linear warm-up from 0 to ``lr`` (fractional epochs allowed).
        schedule: ``"cosine"`` (to 0 at the end), ``"step"`` (x ``gamma`` at each milestone) or ``"constant"``.
        milestones: epochs at which the step schedule decays.
        gamma: step schedule factor.
        label_smoothing: cross-entropy label smoothing.
        amp: mixed precision on CUDA (``"bf16"``, ``"fp16"`` with a grad scaler, or ``"off"``); ignored on CPU.
        channels_last: channels-last memory format on CUDA; ignored on CPU.
        eval_batch_size: batch size for evaluation.
        seed: seeds the initialisation, the data order and the augmentation.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        keep_checkpoints: per-epoch checkpoints kept on disk (the newest ones; 0 keeps all).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.0
    amp: str = "bf16"
    channels_last: bool = True
    eval_batch_size: int = 500
    seed: int = 0
    device: str = "auto"
    keep_checkpoints: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"train.schedule must be cosine, step or constant, not {self.schedule!r}")
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"train.amp must be bf16, fp16 or off, not {self.amp!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"train.keep_checkpoints must be >= 0 (0 keeps all), got {self.keep_checkpoints}")
        if self.lr < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("train.lr and train.weight_decay must be >= 0 and train.momentum in [0, 1)")


@dataclass(frozen=True)
class CSGDConfig:
    """C-SGD's "train wider, then squeeze" (Ding et al. 2019): ``--width-mult 1.5 --csgd-squeeze-to 1.0``.

    Attributes:
        squeeze_to: train with centripetal SGD towards this width multiplier (one cluster per channel of
            the narrower model), then trim to exactly that architecture; 0 trains normally.
        options: C-SGD options as ``key=value,key=value``, e.g. ``centripetal=0.05,vector_ratio=1.0``
            (see ``filterprune.methods.csgd_run.CSGDOptions``).
    """

    squeeze_to: float = 0.0
    options: str = ""


@dataclass(frozen=True)
class RunConfig:
    """A training run: which model, which data, which recipe, where to write.

    Attributes:
        model: registered model name (``filterprune list-models``... see ``create_model``).
        pretrained: ``""`` (random init), ``"auto"`` (the known checkpoint for ``model``) or a file path.
        width_mult: width multiplier passed to the model.
        data: a dataset name (``digits``, ``fashion-mnist``, ``cifar10``) or a path.
        val_fraction: share of the training split held out for validation (dataset default if unset).
        out: run folder.
        train: the training recipe.
        csgd: C-SGD "train wider, then squeeze" (off unless ``csgd.squeeze_to`` is set).
    """

    model: str = "convnet_small"
    pretrained: str = ""
    width_mult: float = 1.0
    data: str = "digits"
    val_fraction: float | None = None
    out: str = "runs/train"
    train: TrainConfig = field(default_factory=TrainConfig)
    csgd: CSGDConfig = field(default_factory=CSGDConfig)

    def __post_init__(self) -> None:
        if self.csgd.squeeze_to and not 0 < self.csgd.squeeze_to < self.width_mult:
            raise ValueError(f"csgd.squeeze_to ({self.csgd.squeeze_to:g}) must lie between 0 and width_mult "
                             f"({self.width_mult:g})")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-able dict (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} must be a mapping")
        return from_dict(tp, value, prefix=f"{name}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        return _coerce(name, tp, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {name!r} must be a list")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(name, item, v) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ValueError(f"config key {name!r} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build the frozen dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(cls: type[C], path: PathLike) -> C:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    return from_dict(cls, data)


def dump_yaml(cfg: Any, path: PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def merge(cfg: C, overrides: dict[str, Any]) -> C:
    """Apply dotted-key overrides (``{"train.epochs": 3}``) to a frozen config."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return from_dict(type(cfg), data)


def _finetune_default() -> TrainConfig:
    return TrainConfig(epochs=10, lr=0.01, warmup_epochs=0.0, schedule="cosine")


@dataclass(frozen=True)
class PruneConfig:
    """What to remove and how to choose it.

    Attributes:
        criterion: a registered criterion (``filterprune prune --help`` lists them).
        target_macs: fraction of MACs to remove (0.5 halves them).
        target_params: fraction of parameters to remove.
        ratio: fraction of channels to remove (when no MACs/params target is given).
        steps: prune in this many steps, re-scoring (and fine-tuning, if asked) between them.
        step_finetune_epochs: epochs of fine-tuning between steps (part of the total budget).
        min_channels: never keep fewer channels in a group.
        round_to: kept channel counts are multiples of this.
        global_ranking: rank channels across all groups (else the same ratio in every group).
        num_batches: batches of training data a data-driven criterion sees.
        seed: seeds random choices (the ``random`` criterion, sampling).
        check: verify after every removal that the pruned model equals the masked one.
        criterion_options: criterion-specific options as ``key=value,key=value`` (values parsed as
            Python literals where possible), e.g. ``n_components=2,pooling=max``.
        step_ratio: iterative mode (PLS+VIP's schedule): each step removes this fraction of the
            remaining channels by one ranking of raw scores, re-scoring on unaugmented training images
            and fine-tuning step_finetune_epochs between steps, until target_macs (the last step lands
            on it) or, if steps > 1, after that many steps. Total fine-tuning: (steps done - 1) x
            step_finetune_epochs + finetune epochs.
    """

    criterion: str = "l1"
    target_macs: float | None = None
    target_params: float | None = None
    ratio: float | None = None
    steps: int = 1
    step_finetune_epochs: int = 0
    min_channels: int = 1
    round_to: int = 1
    global_ranking: bool = True
    num_batches: int = 16
    seed: int = 0
    check: bool = True
    criterion_options: str = ""
    step_ratio: float | None = None

    def criterion_kwargs(self) -> dict[str, Any]:
        """``criterion_options`` as a dict: ``"a=1,b=max"`` -> ``{"a": 1, "b": "max"}``."""
        return parse_options(self.criterion_options)


def parse_options(text: str) -> dict[str, Any]:
    """Parse ``key=value,key=value``; values are Python literals where they parse, else strings.

    >>> parse_options("n_components=2,pooling=max,scale=True")
    {'n_components': 2, 'pooling': 'max', 'scale': True}
    """
    import ast

    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"criterion option {item!r} is not key=value")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class PruneRunConfig:
    """A pruning run: base model, data, pruning request, fine-tune recipe, output folder.

    Attributes:
        model: registered model name (optional when ``weights`` is a filterprune checkpoint).
        weights: ``auto`` (the known checkpoint), a ``.th``/``.pt`` file or a filterprune ``.safetensors``.
        data: dataset name or path (see ``filterprune train --help``).
        val_fraction: share of the training split held out for validation (dataset default if unset).
        out: output folder; must not exist yet.
        prune: the pruning request.
        finetune: the fine-tune recipe after pruning (``--finetune-epochs 0`` skips it).
    """

    model: str = ""
    weights: str = ""
    data: str = "digits"
    val_fraction: float | None = None
    out: str = "runs/prune"
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: TrainConfig = field(default_factory=_finetune_default)
