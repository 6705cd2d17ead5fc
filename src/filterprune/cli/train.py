"""``filterprune train``: train or fine-tune a model; every run folder can be resumed.

C-SGD's "train wider, then squeeze" (Ding et al., arXiv 1904.03837): ``--width-mult 1.5 --csgd-squeeze-to
1.0 --csgd-options centripetal=0.05,vector_ratio=1.0`` trains a 1.5x wider model with centripetal SGD,
one cluster per channel of the 1.0x model, then trims it to exactly the 1.0x architecture (summary.json:
``csgd``); model.safetensors is then a plain checkpoint of the 1.0x model.
"""

from __future__ import annotations

import argparse
import json

from ..config import RunConfig
from ._args import add_run_args
from ._run import add_output_args, run_config


def add_parser(sub) -> None:
    """Register ``filterprune train`` with flags generated from :class:`RunConfig`."""
    p = sub.add_parser("train", help="train or fine-tune a model", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_args(p, RunConfig)
    add_output_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one training job (:func:`~filterprune.workflows.train_run.run_training`) and print its summary as JSON;
    returns 0.
    """
    from ..workflows.records import command_line
    from ..workflows.train_run import run_training

    cfg = run_config(args, RunConfig)
    summary = run_training(cfg, resume=args.resume, overwrite=args.overwrite, download=args.download,
                           command=command_line(getattr(args, "argv", None)))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "test_per_class_acc")}, indent=2))
    return 0
