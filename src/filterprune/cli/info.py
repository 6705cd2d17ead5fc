"""``filterprune info``: parameters, MACs and per-layer widths of a model or checkpoint; ``--list``: every
model, criterion and method; ``--criterion NAME``: that criterion's option keys."""

from __future__ import annotations

import argparse

from ._args import MODEL_HELP


def add_parser(sub) -> None:
    """Register ``filterprune info`` and its flags on the subcommand parsers ``sub``."""
    p = sub.add_parser("info", help="params, MACs and per-layer widths", description=__doc__)
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--weights", help="'auto', a .th/.pt file or a filterprune .safetensors checkpoint")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the one the checkpoint records, else 3 32 32, or 1 8 8 for convnet_small)")
    p.add_argument("--list", action="store_true",
                   help="list every registered model, criterion and method, one line each (what it is, its source)")
    p.add_argument("--criterion", metavar="NAME",
                   help="describe criterion or method NAME: its source and each --criterion-options key (type, "
                        "default, meaning)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print parameters, MACs and per-layer widths of a model (or the registered names); returns 0.

    Raises:
        FilterpruneError, ValueError: bad flags or unreadable weights (one line from ``cli.main``).
    """
    from ..workflows.info import describe_criterion, describe_model, registered
    from ._args import check_info_args

    check_info_args(args)
    if args.criterion:
        print(describe_criterion(args.criterion))
    else:
        print(registered() if args.list or not (args.model or args.weights) else
              describe_model(args.model, args.weights, args.input_size))
    return 0
