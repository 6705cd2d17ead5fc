"""``filterprune plot``: one PNG of run folders: accuracy against MACs with the Pareto front, per-layer
widths before / after, score distributions, sensitivity curves (where the runs have them).

Example:
    filterprune plot runs/l1 runs/car runs/pls --out runs/comparison.png
    filterprune plot benchmarks/results/standard_comparison_resnet20.json --out comparison.png

A run folder is the ``--out`` of ``filterprune prune`` or ``train`` (its ``summary.json``); a results
file with ``rows`` (``benchmarks/standard_comparison.py``'s output) adds its rows to the accuracy panel.
``--out`` is never a file filterprune did not write. Needs matplotlib (``pip install "filterprune[plots]"``).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    """Register ``filterprune plot`` and its flags on the subcommand parsers ``sub``."""
    p = sub.add_parser("plot", help="plot run folders: accuracy against MACs (Pareto front), widths, scores",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="prune/train run folders (or a results .json with rows)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    p.add_argument("--metric", choices=("test_acc", "val_acc"), default="test_acc",
                   help="the accuracy on the y axis")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the inputs and ``--out`` (one line, exit 2, before any work), draw, print the path; returns 0."""
    from ..workflows.plots import check_out, plot_runs, read_inputs, require_matplotlib

    check_out(args.out)
    records, rows = read_inputs(args.runs)
    require_matplotlib()
    path = plot_runs(records, args.out, rows=rows, metric=args.metric)
    print(f"wrote {path}")
    return 0
