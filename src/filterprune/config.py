"""Typed, strict configuration: frozen dataclasses with defaults in one place, YAML in and out.

Precedence: dataclass defaults < YAML file < explicitly passed CLI flags. Unknown keys and wrong types
raise a one-line ``ValueError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .types import PathLike

C = TypeVar("C")

# ---- range checks: every config field that has a range says so here, once --------------------------
FLATTENED = ("train", "prune")  # nested configs whose flags carry no prefix (--epochs, --criterion)
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MAX_WIDTH_MULT = 16.0  # a 16x wider ResNet-56 already has 220M parameters
MAX_SEED = 2**63 - 1


def flag_for(key: str) -> str:
    """The CLI flag of a dotted config key: ``train.lr`` -> ``--lr``, ``finetune.lr`` -> ``--finetune-lr``."""
    *parents, leaf = key.split(".")
    prefix = "".join(f"{p}-" for p in parents if p not in FLATTENED)
    return "--" + (prefix + leaf).replace("_", "-")


def field_help(cls: type, name: str) -> str:
    """The text documenting field (or argument) ``name`` in ``cls``'s docstring (``name: text``, continuation
    lines indented deeper), joined on one line; ``""`` if it is not documented."""
    lines = (cls.__doc__ or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            indent = len(line) - len(line.lstrip())
            text = line.split(":", 1)[1].strip()
            for cont in lines[i + 1:]:
                if not cont.strip() or len(cont) - len(cont.lstrip()) <= indent:
                    break
                text += " " + cont.strip()
            return text
    return ""


def config_error(key: str, problem: str) -> ConfigError:
    """A :class:`ConfigError` whose message names the flag and, for nested keys, the config key."""
    where = f"{flag_for(key)} ({key})" if "." in key else flag_for(key)
    return ConfigError(f"{where} {problem}", key, problem)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


Rule = tuple[Callable[[Any], bool], str]
POSITIVE_INT: Rule = (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
COUNT: Rule = (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
POSITIVE: Rule = (lambda v: _real(v) and v > 0, "must be a finite number > 0")
NON_NEGATIVE: Rule = (lambda v: _real(v) and v >= 0, "must be a finite number >= 0")
FRACTION: Rule = (lambda v: _real(v) and 0 <= v < 1, "must be a fraction in [0, 1)")
OPEN_FRACTION: Rule = (lambda v: _real(v) and 0 < v < 1, "must be a fraction in (0, 1)")
SEED: Rule = (lambda v: isinstance(v, int) and 0 <= v <= MAX_SEED, "must be an integer in [0, 2**63)")


def _optional(rule: Rule) -> Rule:
    test, text = rule
    return (lambda v: v is None or test(v)), text


def check_fields(cfg: Any, rules: dict[str, Rule]) -> None:
    """Raise :class:`ConfigError` for the first field of ``cfg`` that breaks its rule."""
    for name, (test, text) in rules.items():
        value = getattr(cfg, name)
        if not test(value):
            raise config_error(name, f"{text}, got {value!r}")


def check_device_name(device: str, key: str = "device") -> None:
    """Refuse a device string that is none of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise config_error(key, f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


def check_device_available(device: str, key: str = "device") -> None:
    """Refuse a device this machine's torch cannot use (``cuda`` on a CPU-only build, a missing GPU)."""
    check_device_name(device, key)
    import torch  # deferred: the configs themselves never need torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
            raise config_error(key, f"asks for {device} but this machine has {build}; pass --device cpu or auto")
        if index and int(index) >= n:
            raise config_error(key, f"asks for {device} but only {n} GPU(s) are visible (cuda:0..cuda:{n - 1})")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise config_error(key, "asks for mps but this machine has no MPS device; pass --device cpu or auto")


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
        cpu_amp: bfloat16 autocast of the training forward on CPU as well (faster on CPUs with AMX or
            AVX-512 BF16; numerics differ from float32, so off by default). Evaluation stays float32.
        channels_last: channels-last memory format on CUDA; ignored on CPU.
        eval_batch_size: batch size for evaluation.
        seed: seeds the initialisation, the data order and the augmentation.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        keep_checkpoints: per-epoch checkpoints kept on disk (the newest ones; 0 keeps all).
        sync_bn: under ``torchrun``, BatchNorm trains on the statistics of the global batch (one
            process's numbers); else each process normalises with its own share.
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
    cpu_amp: bool = False
    channels_last: bool = True
    eval_batch_size: int = 500
    seed: int = 0
    device: str = "auto"
    keep_checkpoints: int = 0
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step", "constant"):
            raise config_error("schedule", f"must be cosine, step or constant, got {self.schedule!r}")
        if self.amp not in ("bf16", "fp16", "off"):
            raise config_error("amp", f"must be bf16, fp16 or off, got {self.amp!r}")
        check_fields(self, {
            "epochs": COUNT, "batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT, "lr": POSITIVE,
            "momentum": FRACTION, "weight_decay": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE,
            "gamma": (lambda v: _real(v) and 0 < v <= 1, "must be a factor in (0, 1]"),
            "label_smoothing": FRACTION, "seed": SEED,
            "keep_checkpoints": (COUNT[0], "must be an integer >= 0 (0 keeps all)"),
        })  # fmt: skip
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or list(self.milestones) != sorted(
                set(self.milestones)):
            raise config_error("milestones", f"must be increasing epochs >= 1, got {list(self.milestones)}")
        check_device_name(self.device)


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

    def __post_init__(self) -> None:
        check_fields(self, {"squeeze_to": NON_NEGATIVE})
        parse_options(self.options, key="options")


@dataclass(frozen=True)
class RunConfig:
    """A training run: which model, which data, which recipe, where to write.

    Attributes:
        model: registered model name (``filterprune info --list``), or ``package.module:factory``: your
            own model, built by calling that factory (with num_classes and in_chans if it takes them).
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
        check_fields(self, {
            "width_mult": (lambda v: _real(v) and 0 < v <= MAX_WIDTH_MULT, f"must be in (0, {MAX_WIDTH_MULT:g}]"),
            "val_fraction": _optional(OPEN_FRACTION),
        })  # fmt: skip
        if self.csgd.squeeze_to and not 0 < self.csgd.squeeze_to < self.width_mult:
            raise config_error("csgd.squeeze_to", f"must lie between 0 and --width-mult ({self.width_mult:g}), "
                               f"got {self.csgd.squeeze_to:g}")
        if ":" in self.model and (self.width_mult != 1.0 or self.csgd.squeeze_to):
            key = "width_mult" if self.width_mult != 1.0 else "csgd.squeeze_to"
            raise config_error(key, f"applies to registered models only; --model {self.model} builds its own "
                               "widths (make the factory take a width argument instead)")


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
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if not prefix or e.key.startswith(prefix):
            raise
        raise config_error(prefix + e.key, e.problem) from None


def load_yaml(cls: type[C], path: PathLike) -> C:
    """Read a YAML file into the config dataclass ``cls``, validating keys and types.

    Raises:
        ValueError: unreadable file, not a mapping, or an unknown key / wrong type (named).
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    return from_dict(cls, data)


def dump_yaml(cfg: Any, path: PathLike) -> None:
    """Write ``cfg`` (a config dataclass) to ``path`` as YAML, fields in declaration order."""
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
        criterion: a scoring criterion, or the training-time method csgd (each described by
            ``filterprune info --criterion NAME``, which lists its option keys)
        target_macs: fraction of MACs to remove (0.5 halves them).
        target_params: fraction of parameters to remove.
        ratio: fraction of channels to remove (when no MACs/params target is given).
        target_latency: fraction of the measured latency to remove, on the fine-tune device at
            batch latency_batch: a per-layer latency table (cached in the run folder as
            latency_table.json) predicts it and the pruned model is measured side by side with the base.
        latency_batch: batch size at which --target-latency is measured.
        steps: prune in this many steps, re-scoring (and fine-tuning, if asked) between them.
        step_finetune_epochs: epochs of fine-tuning after each pruning step: of --steps K, of CAR's
            k=N greedy steps, and of --step-ratio's iterations but the last; the final
            --finetune-epochs follow.
        min_channels: never keep fewer channels in a group.
        round_to: kept channel counts are multiples of this; 0 chooses it from measurements on the
            device (the multiple of 1, 4, 8, 16 that makes its convs fastest per MAC).
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
        ignore: layers (qualified names or fnmatch patterns, e.g. stem.0 or head.*) whose output
            channels are kept whole (the API's ignored_layers).
        max_ratio: at most this fraction of any group's channels is removed.
        normalize: per-group score normalisation before the global ranking: mean, max, l2 or none;
            unset: the criterion's own (none for CAR's accuracy drops and for --step-ratio's raw
            scores, else mean).
        schedule: how the target is split over steps: geometric (the kept fraction shrinks by the same
            factor each step) or linear.
        layer_ratio: per-layer ratios NAME=R (NAME a layer or an fnmatch pattern): the group of that
            layer loses exactly the fraction R of its channels and is left out of the global target
            (the API's layer_ratios); with no --target-macs/--target-params/--ratio only these are pruned.
        allocation: how the target is shared among groups: global (one ranking of normalised scores),
            uniform (the same fraction of every group), cost (normalised score per unit of the target's
            MACs/params saved), sensitivity (per-group curves measured on validation images, pruned to an
            equal predicted drop; cached in sensitivity.json), auto: sensitivity where it applies (a
            MACs/params/ratio/latency target; it beat global for every criterion of the comparison),
            global where it does not (--step-ratio, CAR scope=layer, --layer-ratio alone, --global-ranking
            false).
        sensitivity_points: sensitivity allocation: ratios measured per group, k/(N+1) for k=1..N.
        sensitivity_metric: sensitivity allocation: the drop of loss (validation cross-entropy) or acc.
        sensitivity_images: sensitivity allocation: validation images per measurement (a fixed, seeded
            subset; 0 = the whole validation split).
        eval_every: in a schedule of several steps (--steps, --step-ratio iterations) evaluate after
            every K-th step only (the last step is always evaluated); 1 evaluates every step.
        bn_recalibrate: after every prune step, re-estimate the BatchNorm running statistics on this
            many training images (fixed, not augmented; no gradient step), reporting val accuracy
            before and after; 0 turns it off.
    """

    criterion: str = "l1"
    target_macs: float | None = None
    target_params: float | None = None
    ratio: float | None = None
    target_latency: float | None = None
    latency_batch: int = 1
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
    ignore: tuple[str, ...] = ()
    max_ratio: float = 1.0
    normalize: str | None = None
    schedule: str = "geometric"
    layer_ratio: tuple[str, ...] = ()
    allocation: str = "auto"
    sensitivity_points: int = 9
    sensitivity_metric: str = "loss"
    sensitivity_images: int = 1024
    eval_every: int = 1
    bn_recalibrate: int = 256

    def __post_init__(self) -> None:
        self._check_selection()
        check_fields(self, {
            "target_macs": _optional(FRACTION), "target_params": _optional(FRACTION), "ratio": _optional(FRACTION),
            "steps": POSITIVE_INT, "step_finetune_epochs": COUNT, "min_channels": POSITIVE_INT,
            "round_to": COUNT, "num_batches": POSITIVE_INT, "seed": SEED,
            "target_latency": _optional(FRACTION), "latency_batch": POSITIVE_INT,
            "step_ratio": _optional(OPEN_FRACTION), "sensitivity_points": POSITIVE_INT, "sensitivity_images": COUNT,
            "eval_every": POSITIVE_INT,
            "bn_recalibrate": (COUNT[0], "must be an integer >= 0 (0 turns it off)"),
        })  # fmt: skip
        given = [k for k in ("target_macs", "target_params", "ratio", "target_latency") if getattr(self, k) is not None]
        if len(given) > 1:
            raise config_error(given[1], f"cannot be combined with {flag_for(given[0])}: give one target")
        if not isinstance(self.criterion, str) or not self.criterion:
            raise config_error("criterion", f"must name a criterion, got {self.criterion!r}")
        parse_options(self.criterion_options, key="criterion_options")

    def criterion_kwargs(self) -> dict[str, Any]:
        """``criterion_options`` as a dict: ``"a=1,b=max"`` -> ``{"a": 1, "b": "max"}``."""
        return parse_options(self.criterion_options)

    def allocation_mode(self) -> str:
        """The allocation this run uses: ``allocation``, or for ``"auto"`` (the default) ``"sensitivity"``
        where a network-wide target is shared among groups by one ranking, else ``"global"``: with
        ``step_ratio`` (its iterations rank raw scores), CAR ``scope=layer`` and ``layer_ratio`` alone (the
        fractions are given) and ``global_ranking`` off (uniform). The default follows
        ``benchmarks/results/allocation_comparison_resnet20.md`` (issue #15): sensitivity allocation beat
        global for every criterion (and for L1 and random on ResNet-56), at the cost of a pass of about 2
        fine-tune epochs on ResNet-20."""
        if self.allocation != "auto":
            return self.allocation
        targets = (self.target_macs, self.target_params, self.ratio, self.target_latency)
        applies = (self.step_ratio is None and self.global_ranking and any(v is not None for v in targets)
                   and self.criterion_kwargs().get("scope") != "layer")
        return "sensitivity" if applies else "global"

    def _check_selection(self) -> None:
        check_fields(self, {"max_ratio": (lambda v: _real(v) and 0 < v <= 1, "must be a fraction in (0, 1]")})
        if self.normalize not in (None, "mean", "max", "l2", "none"):  # selection.NORMALIZERS
            raise config_error("normalize", f"must be mean, max, l2 or none, got {self.normalize!r}")
        if self.schedule not in ("geometric", "linear"):  # api.SCHEDULES
            raise config_error("schedule", f"must be geometric or linear, got {self.schedule!r}")
        if self.allocation not in ("auto", "global", "uniform", "cost", "sensitivity"):  # + selection.ALLOCATIONS
            raise config_error("allocation", f"must be auto, global, uniform, cost or sensitivity, got {self.allocation!r}")
        if not self.global_ranking and self.allocation not in ("auto", "global", "uniform"):
            raise config_error("allocation", f"cannot be {self.allocation} with global_ranking off (that is uniform)")
        if self.sensitivity_metric not in ("loss", "acc"):  # selection.sensitivity.METRICS
            raise config_error("sensitivity_metric", f"must be loss or acc, got {self.sensitivity_metric!r}")
        if not all(isinstance(n, str) and n for n in self.ignore):
            raise config_error("ignore", f"takes layer names, got {list(self.ignore)!r}")
        self.layer_ratios()

    def layer_ratios(self) -> dict[str, float]:
        """``layer_ratio`` as a dict: ``("conv1=0.5",)`` -> ``{"conv1": 0.5}``."""
        out: dict[str, float] = {}
        for item in self.layer_ratio:
            name, sep, value = str(item).partition("=")
            try:
                ratio = float(value)
            except ValueError:
                ratio = math.nan
            if not sep or not name or not 0 <= ratio < 1:
                raise config_error("layer_ratio", f"takes NAME=R with R a fraction in [0, 1), got {item!r}")
            if name in out:
                raise config_error("layer_ratio", f"gives {name!r} twice")
            out[name] = ratio
        return out


def parse_options(text: str, key: str = "criterion_options") -> dict[str, Any]:
    """Parse ``key=value,key=value``; values are Python literals where they parse, else strings.

    >>> parse_options("n_components=2,pooling=max,scale=True")
    {'n_components': 2, 'pooling': 'max', 'scale': True}
    """
    import ast

    out: dict[str, Any] = {}
    if not isinstance(text, str):
        raise config_error(key, f"must be a key=value,key=value string, got {text!r}")
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise config_error(key, f"takes key=value,key=value; {item!r} is not key=value")
        if name.strip() in out:
            raise config_error(key, f"gives {name.strip()!r} twice")
        try:
            out[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class PruneRunConfig:
    """A pruning run: base model, data, pruning request, fine-tune recipe, output folder.

    Attributes:
        model: registered model name (optional when ``weights`` is a filterprune checkpoint of one), or
            for your own model ``package.module:factory`` (then weights is its checkpoint).
        weights: ``auto`` (the known checkpoint), a ``.th``/``.pt`` file or a filterprune ``.safetensors``.
        data: dataset name or path (see ``filterprune train --help``).
        val_fraction: share of the training split held out for validation (dataset default if unset).
        out: output folder; must not exist yet.
        eval_images: quick mode: evaluate on this many images of each of val and test (a fixed,
            class-stratified subset, the same in every run); 0 uses the whole splits.
        train_images: quick mode: fine-tune, score and re-calibrate on this many training images (a
            fixed, class-stratified subset of the training split, disjoint from val); 0 uses all.
        prune: the pruning request.
        finetune: the fine-tune recipe after pruning (``--finetune-epochs 0`` skips it).
    """

    model: str = ""
    weights: str = ""
    data: str = "digits"
    val_fraction: float | None = None
    out: str = "runs/prune"
    eval_images: int = 0
    train_images: int = 0
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: TrainConfig = field(default_factory=_finetune_default)

    def __post_init__(self) -> None:
        check_fields(self, {
            "val_fraction": _optional(OPEN_FRACTION),
            "eval_images": (COUNT[0], "must be an integer >= 0 (0 uses the whole val and test splits)"),
            "train_images": (COUNT[0], "must be an integer >= 0 (0 uses the whole training split)"),
        })  # fmt: skip
