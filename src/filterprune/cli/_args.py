"""Flags generated from config dataclass fields, so the CLI and the configs never drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_help(cls: type, name: str) -> str:
    doc = cls.__doc__ or ""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            text = line.split(":", 1)[1].strip()
            for cont in lines[i + 1:]:
                if not cont.startswith(" " * 12) or ":" in cont.split()[0]:
                    break
                text += " " + cont.strip()
            return text
    return ""


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: tuple[str, ...] = (),
                    flag_prefix: str = "") -> None:
    """Add ``--field-name`` for every scalar field of ``cls`` (nested dataclasses are flattened).

    Defaults are suppressed, so only flags the user typed appear in the namespace: they override the
    config file, which overrides the dataclass defaults.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            # train and prune flatten (--epochs, --criterion); other nested configs keep their name (--finetune-epochs)
            nested_flag = "" if f.name in ("train", "prune") else f"{f.name.replace('_', '-')}-"
            add_config_args(parser, tp, prefix=f"{prefix}{f.name}.", skip=skip, flag_prefix=flag_prefix + nested_flag)
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        dest = f"{prefix}{f.name}"
        flag = "--" + flag_prefix + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS,
                                  "help": f"{_field_help(cls, f.name)} (default: {default})"}
        args = typing.get_args(tp)
        base = next((a for a in args if a is not type(None)), tp) if args and typing.get_origin(tp) is not tuple else tp
        if typing.get_origin(tp) is tuple:
            kwargs.update(nargs="*", type=int)
        elif base is bool:
            kwargs.update(type=_parse_bool, metavar="BOOL")
        else:
            kwargs.update(type=base)
        parser.add_argument(flag, **kwargs)


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
    return merge(cfg, overrides(args, cls))
