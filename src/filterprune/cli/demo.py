"""``filterprune demo``: the whole job on the embedded default (scikit-learn's digits), no files needed.

Trains the small ConvNet, prunes half of its MACs by L1-norm, fine-tunes, and prints the before/after
table. Runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    """Register ``filterprune demo`` and its flags on the subcommand parsers ``sub``."""
    p = sub.add_parser("demo", help="train, prune and fine-tune a small ConvNet on digits", description=__doc__)
    p.add_argument("--criterion", default="l1", help="pruning criterion")
    p.add_argument("--target-macs", type=float, default=0.5, help="fraction of MACs to remove")
    p.add_argument("--out", help="also write the run folders (base/, pruned/) here; it must not exist yet")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's base/ and pruned/ in --out")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo (train, prune, fine-tune on digits); returns the exit status, 0 on success.

    Raises:
        FilterpruneError: bad flags (checked before any work) or a failed stage; ``cli.main`` prints one line.
    """
    import logging

    from ..workflows.demo import run_demo
    from ._args import check_demo_args

    check_demo_args(args)
    if not args.verbose:
        logging.getLogger("filterprune").setLevel(logging.WARNING)

    result = run_demo(criterion=args.criterion, target_macs=args.target_macs, out=args.out, overwrite=args.overwrite)
    print(result["text"])
    return 0
