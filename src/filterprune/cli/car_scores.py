"""``filterprune car-scores``: CAR scores of a saved model's filters, sharded over ``torchrun`` processes.

Example (two processes on one machine; plain ``filterprune car-scores ...`` runs one):
    torchrun --nproc_per_node 2 -m filterprune car-scores --weights base.safetensors \\
        --data ../shared/data/cifar10 --eval-images 1000 --out car_scores.json
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    """Register ``filterprune car-scores`` and its flags on the subcommand parsers ``sub``."""
    p = sub.add_parser("car-scores", help="CAR scores of every filter, sharded over torchrun processes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a model saved by filterprune (safetensors)")
    p.add_argument("--data", required=True, help="dataset root or name for filterprune.data.load_data")
    p.add_argument("--eval-images", type=int, default=1000, help="training images in the evaluation set")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="picks the evaluation images (a random subset)")
    p.add_argument("--criterion", choices=("car", "car-classwise"), default="car")
    p.add_argument("--options", default="", help="criterion options, key=value,key=value")
    p.add_argument("--out", required=True, help="JSON file for the scores (written by rank 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Compute and write the scores (:func:`~filterprune.workflows.car_scores.car_scores`); returns 0."""
    from ..workflows.car_scores import car_scores
    from ._args import check_car_scores_args

    check_car_scores_args(args)
    car_scores(args.weights, args.data, args.out, eval_images=args.eval_images, batch_size=args.batch_size,
               seed=args.seed, criterion=args.criterion, options=args.options)
    return 0
