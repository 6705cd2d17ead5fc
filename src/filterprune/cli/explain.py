"""``filterprune explain``: per-filter CAR, class-wise CAR and colour selectivity of one layer.

Writes filters.json (every per-filter number), filters.png (kernels of the first layer as RGB tiles,
else each filter's strongest-response image patch; lowest CAR first, colour-selective in red) and
report.md, with the CAR paper's statistic: colour-selective filters among the k lowest by CAR, by L1
and in random k-subsets (mean, one-sided p-value). See filterprune.interpret for the exact rules.

Example:
    filterprune explain --weights base.safetensors --data ../shared/data/cifar10 --layer conv1 \\
        --images 1000 --k 8 --out runs/explain-conv1
"""

from __future__ import annotations

import argparse
import json

from ._args import add_artifact_args


def add_parser(sub) -> None:
    """Register ``filterprune explain``."""
    p = sub.add_parser("explain", help="per-filter CAR, class-wise CAR and colour selectivity of a layer",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_artifact_args(p, "explain", "dataset name or path with RGB images")
    p.add_argument("--layer", required=True, help="a conv layer's qualified name (e.g. conv1, features.3)")
    p.add_argument("--images", type=int, default=1000, help="training images for CAR and the responses")
    p.add_argument("--k", type=int, default=20, help="filters in the k-lowest statistic (the paper: 20)")
    p.add_argument("--draws", type=int, default=1000, help="random k-subsets for the baseline")
    p.add_argument("--seed", type=int, default=0, help="image sample and random draws")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Call :func:`~filterprune.interpret.workflow.run_explain` and print the statistic."""
    from ..interpret.workflow import run_explain

    rec = run_explain(args.weights, args.data, args.layer, args.out, images=args.images, k=args.k,
                      draws=args.draws, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps({"layer": rec["layer"], "rule": rec["rule"], "statistic": rec["statistic"]}, indent=2))
    print(f"wrote {args.out}/report.md, filters.json and filters.png")
    return 0
