"""``filterprune eval``: accuracy of a model (name + weights, or a filterprune checkpoint) on a split."""

from __future__ import annotations

import argparse
import json

from ._args import MODEL_HELP


def add_parser(sub) -> None:
    """Register ``filterprune eval`` and its flags on the subcommand parsers ``sub``."""
    p = sub.add_parser("eval", help="evaluate a model on validation or test data", description=__doc__)
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--weights", help="'auto', a .th/.pt file or a filterprune .safetensors checkpoint")
    p.add_argument("--data", default="digits", help="dataset name or path")
    p.add_argument("--split", choices=("val", "test", "train"), default="test")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--download", action="store_true", help="allow downloading the dataset if it is not found")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the accuracy (percent), loss and image count of a model on one split as JSON; returns 0.

    Raises:
        FilterpruneError, ValueError: bad flags, unreadable weights or data (one line from ``cli.main``).
    """
    from ..workflows.info import evaluate_model
    from ._args import check_eval_args

    check_eval_args(args)
    result = evaluate_model(args.model, args.weights, args.data, split=args.split, batch_size=args.batch_size,
                            device=args.device, download=args.download)
    print(json.dumps(result, indent=2))
    return 0
