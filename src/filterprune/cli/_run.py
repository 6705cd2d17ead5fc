"""Flags and config resolution shared by the commands that write a run folder (train, prune, demo...)."""

from __future__ import annotations

import argparse
from typing import Any


def add_output_args(parser: argparse.ArgumentParser, *, resume: bool = True) -> None:
    """``--overwrite`` (and ``--resume``) for a command that writes a run folder."""
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out where it stopped (flags must match the saved run, "
                                 "except ones that extend it, e.g. more epochs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run of this command in --out (only files it wrote; others stay)")


def run_config(args: argparse.Namespace, cls: type[Any]) -> Any:
    """The run config: defaults < ``--config`` < typed flags; with ``--resume``, the folder's saved
    ``config.yaml`` replaces the defaults, so only the flags typed now can differ from it."""
    from ..config import load_yaml, merge
    from ..utils.io import check_run_folder
    from ..utils.resume import saved_config
    from ._args import overrides, resolve_config, validate_config

    if not getattr(args, "resume", False):
        return resolve_config(args, cls)
    typed = overrides(args, cls)
    out = typed.get("out") or cls().out
    check_run_folder(out, args.command, resume=True, overwrite=args.overwrite)  # before reading its config
    base = load_yaml(cls, args.config) if args.config else saved_config(cls, out)
    return validate_config(merge(base, {**typed, "out": out}))
