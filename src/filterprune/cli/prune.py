"""``filterprune prune``: score, select and remove filters of a trained model, then fine-tune it.

Example:
    filterprune prune --model resnet20 --weights base.safetensors --data ../shared/data/cifar10 \\
        --criterion l1 --target-macs 0.5 --finetune-epochs 10 --out runs/l1

    PLS+VIP's schedule: each step removes 10% of the remaining filters (raw VIPs, one global ranking),
    refits PLS and fine-tunes 1 epoch, until -50% MACs; then 5 more epochs:
    filterprune prune --weights base.safetensors --data ../shared/data/cifar10 --criterion pls-vip \\
        --criterion-options n_components=2,samples=5000,pooling=max --target-macs 0.5 \\
        --step-ratio 0.1 --step-finetune-epochs 1 --finetune-epochs 5 --out runs/pls

    C-SGD (a training-time method, not a score): k-means clusters per group to the target widths, the
    fine-tune epochs are spent as centripetal training, then one filter per cluster is kept, losslessly:
    filterprune prune --weights base.safetensors --data ../shared/data/cifar10 --criterion csgd \\
        --criterion-options centripetal=0.1,vector_ratio=1.0,clustering=kmeans --target-macs 0.5 \\
        --finetune-epochs 10 --out runs/csgd

    CAR, greedy: score every filter by the accuracy lost without it (1,000 fixed training images, not
    augmented), remove about k=64 per step, re-score, until -50% MACs (car-classwise: per-class drops):
    filterprune prune --weights base.safetensors --data ../shared/data/cifar10 --criterion car \\
        --criterion-options k=64,eval_images=1000 --target-macs 0.5 --finetune-epochs 10 --out runs/car
    (add --step-finetune-epochs 1 to fine-tune after every greedy step). The paper's setting, greedy
    inside one layer, one filter per step, half of layer1.0.conv1's filters:
    filterprune prune --weights base.safetensors --data ../shared/data/cifar10 --criterion car \
        --criterion-options scope=layer,k=1,eval_images=1000 --layer-ratio layer1.0.conv1=0.5 --out runs/car_layer

    The option keys of a criterion (type, default, meaning): filterprune prune --criterion car --help,
    or filterprune info --criterion car; every criterion and method: filterprune info --list.

    A run is a recorded sequence of stages (run_state.json): after Ctrl-C, a kill, a crash or a refused
    C-SGD trim, the folder keeps what was done and --resume continues it (same flags; more
    --finetune-epochs extend it):
    filterprune prune --resume --out runs/car
"""

from __future__ import annotations

import argparse
import json

from ..config import PruneRunConfig
from ._args import add_help, add_run_args
from ._run import add_output_args, run_config


def add_parser(sub) -> None:
    """Register ``filterprune prune`` with flags generated from :class:`PruneRunConfig`."""
    p = sub.add_parser("prune", help="prune a trained model and fine-tune it", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    add_help(p)  # ``--criterion NAME --help`` also lists NAME's option keys
    add_run_args(p, PruneRunConfig)
    add_output_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one prune job (:func:`~filterprune.workflows.prune_run.run_prune`), print its table and a JSON
    summary; returns 0.
    """
    from ..workflows.prune_run import run_prune
    from ..workflows.records import command_line, latency_lines

    cfg = run_config(args, PruneRunConfig)
    summary = run_prune(cfg, download=args.download, resume=args.resume, overwrite=args.overwrite,
                        command=command_line(getattr(args, "argv", None)))
    print(summary.pop("table"))
    recal = summary.get("bn_recalibration") or {}
    if recal.get("val_acc_before") is not None:  # why "pruned" is not at chance (train/bn_recalibrate.py)
        print(f"BatchNorm re-calibrated on {recal['images']} training images after each prune step: val acc "
              f"{recal['val_acc_before']:.2f} -> {recal['val_acc_after']:.2f} right after the last step")
    print(json.dumps({k: summary[k] for k in ("base", "pruned", "finetuned", "macs", "params")}, indent=2))
    print("\n".join(latency_lines(summary["latency"])))
    print(f"wrote {cfg.out}/summary.json, report.md and model.safetensors")
    return 0
