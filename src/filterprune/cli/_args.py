"""Flags generated from config dataclass fields, so the CLI and the configs never drift apart; and the
checks every command runs on its arguments before it loads data or writes a file.

Ranges live on the config dataclasses (``config.py``); what needs a registry or the machine is checked
here: criterion and model names (with the valid ones listed), criterion option keys (derived from the
criterion's signature or the method's options dataclass), values (by building the criterion), device
availability, that the data spec names something that exists, and that a checkpoint's input shape and
classes fit a named dataset's. Errors are one line; the parser's own errors are one line too.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..config import (
    PruneConfig,
    PruneRunConfig,
    RunConfig,
    check_device_available,
    config_error,
    field_help,
    flag_for,
    parse_options,
)
from ..errors import CheckpointError


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


class CriterionHelp(argparse.Action):
    """``-h/--help`` that, after ``--criterion NAME`` on the same line, also lists NAME's option keys
    (``filterprune prune --criterion car --help``), as ``filterprune info --criterion NAME`` does."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):  # noqa: A002
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        from ..workflows.info import describe_criterion

        name = getattr(namespace, "prune.criterion", None)
        if name is not None:
            try:
                check_criterion(name)
            except ValueError as e:
                parser.exit(2, f"{parser.prog}: error: {e}\n")
        parser.print_help()
        if name is not None:
            print(f"\n--criterion {name}\n" + describe_criterion(name))
        parser.exit()


def add_help(parser: argparse.ArgumentParser) -> None:
    """The :class:`CriterionHelp` ``-h/--help`` (for a parser made with ``add_help=False``)."""
    parser.add_argument("-h", "--help", action=CriterionHelp,
                        help="show this help and exit; after --criterion NAME, also its option keys")


MODEL_HELP = ("a registered model name, or package.module:factory to build your own model (imports and runs that "
              "code: your choice); not needed for a filterprune .safetensors of a registered model")


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_artifact_args(parser: argparse.ArgumentParser, command: str, data_help: str) -> None:
    """``--weights``, ``--data``, ``--out`` and ``--overwrite`` of the commands that read one checkpoint
    and write one output folder (``compress``, ``explain``)."""
    parser.add_argument("--weights", required=True, help="a filterprune model checkpoint (.safetensors)")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help="output folder (refused if it exists and is not empty)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace a previous {command} run in --out")


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: tuple[str, ...] = (),
                    flag_prefix: str = "", defaults: Any = None) -> None:
    """Add ``--field-name`` for every scalar field of ``cls`` (nested dataclasses are flattened).

    Defaults are suppressed, so only flags the user typed appear in the namespace: they override the
    config file, which overrides the dataclass defaults. The ``(default: ...)`` each help shows is read
    from ``defaults`` (an instance of ``cls``; ``cls()`` when not given), so a nested config built by a
    ``default_factory`` (the fine-tune recipe: lr 0.01) shows the values a run really uses.
    """
    hints = typing.get_type_hints(cls)
    defaults = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            # train and prune flatten (--epochs, --criterion); other nested configs keep their name (--finetune-epochs)
            nested_flag = "" if f.name in ("train", "prune") else f"{f.name.replace('_', '-')}-"
            add_config_args(parser, tp, prefix=f"{prefix}{f.name}.", skip=skip, flag_prefix=flag_prefix + nested_flag,
                            defaults=default)
            continue
        dest = f"{prefix}{f.name}"
        flag = "--" + flag_prefix + f.name.replace("_", "-")
        extra = HELP_EXTRAS[dest]() if dest in HELP_EXTRAS else ""
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS,
                                  "help": f"{field_help(cls, f.name)}{extra} (default: {show_default(default)})"}
        args = typing.get_args(tp)
        base = next((a for a in args if a is not type(None)), tp) if args and typing.get_origin(tp) is not tuple else tp
        if typing.get_origin(tp) is tuple:  # tuple[int, ...] -> --milestones 5 8; tuple[str, ...] -> --ignore a b
            item = next(a for a in args if a is not Ellipsis)
            kwargs.update(nargs="*", type=item, metavar=f.name.upper().removesuffix("S") if item is str else None)
        elif base is bool:
            kwargs.update(type=_parse_bool, metavar="BOOL", nargs="?", const=True)  # bare --flag means true
        else:
            kwargs.update(type=base)
        parser.add_argument(flag, **kwargs)


def _criterion_names() -> str:
    return "; one of: " + ", ".join(criterion_options())


#: Help text that depends on the registries, appended to a field's docstring help (by dotted key).
HELP_EXTRAS: dict[str, Callable[[], str]] = {"prune.criterion": _criterion_names}


def show_default(value: Any) -> str:
    """How ``--help`` shows a default: ``unset`` for ``None``, nothing typed for ``""``, a tuple as its
    items (``--ignore a b``), else ``str(value)``; the inverse is what the flag parses."""
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    if value == "":
        return '""'
    return str(value)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The dotted-key overrides the user typed (``{"train.epochs": 3, "model": "resnet20"}``)."""
    fields = set(_dotted_fields(cls))
    return {k: v for k, v in vars(args).items() if k in fields}


def _dotted_fields(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _dotted_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def add_run_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--config FILE``, ``--download`` and one flag per field of the run config ``cls``."""
    parser.add_argument("--config", help="YAML run config; flags override it")
    parser.add_argument("--download", action="store_true", help="allow downloading the dataset if it is not found")
    add_config_args(parser, cls)


def resolve_config(args: argparse.Namespace, cls: type[Any]) -> Any:
    """Defaults < ``--config`` file < flags the user typed."""
    from ..config import from_dict, load_yaml, merge

    cfg = load_yaml(cls, args.config) if args.config else from_dict(cls, {})
    return validate_config(merge(cfg, overrides(args, cls)))


# ---- checks that need a registry, the file system or the machine ----------------------------------------

def training_methods() -> dict[str, type]:
    """Criteria that are training-time methods, with the options dataclass each takes (``csgd``)."""
    from ..workflows.info import training_method_options

    return training_method_options()


def criterion_options() -> dict[str, list[str]]:
    """Every name ``--criterion`` takes, with the option keys each accepts (from its signature or fields)."""
    from ..criteria import CRITERIA, list_criteria

    names = {n: sorted(inspect.signature(CRITERIA.get(n)).parameters) for n in list_criteria()}
    names.update({n: [f.name for f in dataclasses.fields(cls)] for n, cls in training_methods().items()})
    return dict(sorted(names.items()))


def check_criterion(name: str, options: str = "", key: str = "prune.criterion", options_key: str | None = None
                    ) -> None:
    """Refuse an unknown criterion name, an option key it does not take, or an option value it refuses."""
    valid = criterion_options()
    if name not in valid:
        raise config_error(key, f"{name!r} is not a criterion; valid: {', '.join(valid)}")
    opts_key = options_key or (key.rpartition(".")[0] + ".criterion_options" if "." in key else "criterion_options")
    check_options(name, parse_options(options, key=opts_key), opts_key)


def check_options(name: str, kwargs: dict[str, Any], key: str) -> None:
    """Refuse option keys criterion/method ``name`` does not take (listing those it does), then bad values."""
    valid = criterion_options()[name]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise config_error(key, f"{', '.join(map(repr, unknown))}: not an option of {name}; valid: "
                           f"{', '.join(valid) or 'none'}")
    try:
        if name in training_methods():
            training_methods()[name].from_kwargs(kwargs)
        elif kwargs:
            from ..criteria import create_criterion

            create_criterion(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise config_error(key, f"refused by {name}: {str(e).strip().splitlines()[0]}") from None


def check_model_name(model: str, key: str = "model") -> None:
    """Refuse a model name that is not registered (``package.module:factory`` forms are left to the loader)."""
    if not model or ":" in model or "." in model:
        return
    from ..models import list_models

    if model not in list_models():
        raise config_error(key, f"{model!r} is not a registered model; valid: {', '.join(list_models())}")


def check_data_spec(spec: str, key: str = "data") -> None:
    """Refuse a ``--data`` that is neither a registered dataset (with an existing path after ``:``) nor a path."""
    from ..data import list_datasets

    name, colon, arg = spec.partition(":")
    if name in list_datasets():
        if colon and name == "digits":
            raise config_error(key, f"{spec!r}: digits takes no argument; pass digits")
        if colon and not Path(arg).expanduser().exists():
            raise config_error(key, f"{spec!r}: {arg} does not exist; pass {name}:PATH with an existing path")
        return
    if not Path(spec).expanduser().exists():
        raise config_error(key, f"{spec!r} is neither a path that exists nor a dataset "
                           f"({', '.join(list_datasets())}); pass a dataset name or a path")


def check_weights_file(path: str, key: str) -> None:
    """Refuse a weights path that does not exist or is not a file, or a ``.safetensors`` file whose header
    is unreadable (``auto`` and empty pass); the tensors' digest is checked when they are loaded."""
    if not path or path == "auto":
        return
    p = Path(path).expanduser()
    if not p.is_file():
        problem = "not a file" if p.exists() else "no such file"
        raise CheckpointError(f"{path}: {problem} ({flag_for(key)}); pass an existing checkpoint or auto")
    if p.suffix == ".safetensors":  # a torn or foreign file is refused now, not after the data is loaded
        from ..checkpoint import read_metadata

        read_metadata(p)


def expected_input(model: str, weights: str):
    """What the model will expect, known before data is loaded (``None`` when it adapts to the data)."""
    from ..inputs import checkpoint_spec, model_spec

    if weights.endswith(".safetensors") and Path(weights).is_file():
        return checkpoint_spec(weights)
    if weights == "auto" and model and ":" not in model:
        from ..models import create_model

        return model_spec(create_model(model))  # the published weights' shapes: the defaults
    if weights.endswith((".th", ".pt", ".pth")) and Path(weights).is_file():
        from ..inputs import state_spec
        from ..models.weights import read_foreign_state_dict

        return state_spec(read_foreign_state_dict(weights))  # weights_only: no pickle runs
    return None


def check_model_fits_data(model: str, weights: str, data: str) -> None:
    """Refuse a checkpoint whose input channels / classes / size a named dataset does not give."""
    from ..inputs import check_fits, data_spec

    given = data_spec(data)
    if given is not None:
        check_fits(expected_input(model, weights), given, weights if weights != "auto" else f"{model} (auto weights)",
                   f"--data {data}")


def validate_config(cfg: Any) -> Any:
    """Every check of a resolved run config that needs more than its own fields; returns ``cfg``."""
    if isinstance(cfg, RunConfig):
        check_model_name(cfg.model)
        check_weights_file(cfg.pretrained, "pretrained")
        check_data_spec(cfg.data)
        check_device_available(cfg.train.device, "train.device")
        if cfg.csgd.squeeze_to or cfg.csgd.options:
            check_options("csgd", parse_options(cfg.csgd.options, key="csgd.options"), "csgd.options")
        check_model_fits_data(cfg.model, cfg.pretrained, cfg.data)
    elif isinstance(cfg, PruneRunConfig):
        check_model_name(cfg.model)
        if not cfg.weights and not cfg.model:
            raise config_error("weights", "is required (a trained checkpoint), or --model for a fresh model")
        if cfg.weights == "auto" and not cfg.model:
            raise config_error("weights", "auto needs --model to know which published weights to take")
        check_weights_file(cfg.weights, "weights")
        check_data_spec(cfg.data)
        check_device_available(cfg.finetune.device, "finetune.device")
        check_prune(cfg.prune)
        check_model_fits_data(cfg.model, cfg.weights, cfg.data)
    return cfg


def check_prune(p: PruneConfig) -> None:
    """The pruning request as a whole: a known criterion with valid options, and a target."""
    check_criterion(p.criterion, p.criterion_options)
    if p.criterion == "car" and parse_options(p.criterion_options).get("scope") == "layer":
        from ..criteria.car_greedy import check_layer_scope

        try:
            check_layer_scope({"target_macs": p.target_macs, "target_params": p.target_params, "ratio": p.ratio,
                               "target_latency": p.target_latency}, p.layer_ratios(), p.steps, p.allocation_mode())
        except ValueError as e:
            raise config_error("prune.criterion_options", str(e)) from None
        if p.step_ratio is not None:
            raise config_error("prune.step_ratio", "does not apply to CAR scope=layer (k filters per step)")
    if p.step_ratio is not None:  # PLS+VIP's schedule: stops at --target-macs or after --steps
        if p.ratio is not None or p.target_params is not None:
            raise config_error("prune.step_ratio", "stops at --target-macs or after --steps; --ratio and "
                               "--target-params do not apply to it")
        if p.target_macs is None and p.steps == 1:
            raise config_error("prune.step_ratio", "needs --target-macs or --steps > 1: nothing would stop it")
    elif (p.target_macs is None and p.target_params is None and p.ratio is None and p.target_latency is None
          and not p.layer_ratio):
        raise config_error("prune.target_macs", "or --target-params, --ratio, --target-latency or --layer-ratio is "
                           "required: say how much to remove")
    if (p.target_latency is not None or p.round_to == 0) and (
            p.step_ratio is not None or p.criterion in training_methods() or "k" in parse_options(p.criterion_options)):
        raise config_error("prune.target_latency", "and --round-to 0 work with score criteria (not with --step-ratio, "
                           "a training method or CAR's k=); give --target-macs there")
    if p.criterion in training_methods() and (p.steps != 1 or p.step_ratio is not None):
        raise config_error("prune.steps", f"must be 1 and --step-ratio unset for {p.criterion}: it prunes in one "
                           f"round, got --steps {p.steps}")
    if p.allocation_mode() == "sensitivity" and p.step_ratio is not None:
        raise config_error("prune.allocation", "sensitivity is not available with --step-ratio: use global, uniform "
                           "or cost")


def check_eval_args(args: argparse.Namespace) -> None:
    """``filterprune eval``'s flags, before the data is loaded."""
    check_model_name(args.model or "")
    if not args.weights and not args.model:
        raise config_error("weights", "is required (a checkpoint), or --model with --weights auto/FILE")
    if args.weights and not args.weights.endswith(".safetensors") and not args.model:
        raise config_error("model", f"is required with --weights {args.weights} (only a filterprune .safetensors "
                           "names its own model)")
    check_weights_file(args.weights or "", "weights")
    check_data_spec(args.data)
    check_device_available(args.device)
    if args.batch_size < 1:
        raise config_error("batch_size", f"must be an integer >= 1, got {args.batch_size}")
    check_model_fits_data(args.model or "", args.weights or "", args.data)


def check_info_args(args: argparse.Namespace) -> None:
    """``filterprune info``'s flags, before the model is built."""
    if getattr(args, "criterion", None):
        check_criterion(args.criterion, key="criterion")
    check_model_name(args.model or "")
    check_weights_file(args.weights or "", "weights")
    if args.input_size is not None and min(args.input_size) < 1:
        raise config_error("input_size", f"must be three sizes >= 1 (C H W), got {' '.join(map(str, args.input_size))}")


def check_demo_args(args: argparse.Namespace) -> None:
    """``filterprune demo``'s flags, before it trains."""
    from ..config import FRACTION, check_fields

    check_criterion(args.criterion, key="criterion")
    check_fields(args, {"target_macs": FRACTION})


def check_export_args(args: argparse.Namespace) -> None:
    """``filterprune export``'s flags, before the model is built or anything is written."""
    from ..config import POSITIVE, POSITIVE_INT, check_fields

    check_info_args(args)
    if not args.weights and not args.model:
        raise config_error("weights", "or --model is required: say which model to export")
    check_fields(args, {"batch": POSITIVE_INT, "atol": POSITIVE})


def check_car_scores_args(args: argparse.Namespace) -> None:
    """``filterprune car-scores``' flags, before the model or the data is loaded."""
    from ..config import POSITIVE_INT, SEED, check_fields

    check_weights_file(args.weights, "weights")
    check_data_spec(args.data)
    check_fields(args, {"eval_images": POSITIVE_INT, "batch_size": POSITIVE_INT, "seed": SEED})
    check_criterion(args.criterion, args.options, key="criterion", options_key="options")
    check_model_fits_data("", args.weights, args.data)
