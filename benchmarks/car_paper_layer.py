"""The CAR paper's layer experiment on the ResNet-20 base: remove half the filters of one layer.

Abbasi-Asl & Yu (arXiv 1705.07356) prune half the filters of AlexNet's conv1 or conv2 greedily by CAR
and compare with other criteria. Here, on the CIFAR-10 ResNet-20 base, for two layers:

* ``conv1``: the stem. Residual adds tie it to every block output of stage 1, so removing stem channel
  c removes channel c of the whole first-stage stream (the group ``conv1``);
* ``layer1.0.conv1``: the first conv of the first block (16 filters, consumed by ``layer1.0.conv2``);

half of the group's 16 channels are removed by greedy CAR (k filters per step, evaluation set =
``--eval-images`` training images, seeded, no augmentation), by L1 norm (lowest removed) and at random
(``--random-seeds`` draws); each pruned net is evaluated on the validation split right after removal and
after a short fine-tune (the prune workflow's recipe: SGD Nesterov, lr 0.01 cosine, batch 128, wd 5e-4)
of ``--finetune-epochs`` passes over ``--finetune-images`` training images (all 45k by default).

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/car_paper_layer.py --out benchmarks/results/car_paper_layer_resnet20.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from filterprune.api import load
from filterprune.config import PruneRunConfig
from filterprune.criteria import ScoringContext, create_criterion
from filterprune.criteria.car_greedy import car_prune_layer, find_group
from filterprune.data import BatchLoader, load_data
from filterprune.graph import PrunePlan
from filterprune.graph.check import apply_plan_checked
from filterprune.graph.trace import trace_groups
from filterprune.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]


def subset_loader(ds, n: int, batch: int, seed: int, train: bool) -> BatchLoader:
    return BatchLoader(ds.sample(n, seed), batch, train=train, seed=seed)


def plan_by(method: str, model, x, layer: str, n_remove: int, eval_batches, args, seed: int = 0):
    """The channels to remove, and a record of how they were chosen."""
    groups = trace_groups(model, x)
    group = find_group(groups, layer)
    if method == "car":
        t = time.perf_counter()
        res = car_prune_layer(model, x, eval_batches, layer, n_remove, k=args.k, apply=False)
        return res.plan, {"order": res.removed, "history": res.history, "seconds": time.perf_counter() - t}
    if method == "l1":
        s = create_criterion("l1").score(ScoringContext(model, x, groups))[group.id]
        chans = s.argsort()[:n_remove].tolist()
    else:
        chans = torch.randperm(group.size, generator=torch.Generator().manual_seed(seed))[:n_remove].tolist()
    return PrunePlan({group.id: sorted(chans)}), {"order": chans}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--layers", nargs="+", default=["conv1", "layer1.0.conv1"])
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--random-seeds", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-images", type=int, default=0, help="0: the whole training split")
    p.add_argument("--val-images", type=int, default=0, help="0: the whole validation split")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/car_paper_layer_resnet20.json"))
    args = p.parse_args()

    torch.manual_seed(0)
    base = load(args.weights).eval()
    splits = load_data(args.data)
    x = torch.zeros(2, 3, 32, 32)
    eval_batches = list(subset_loader(splits.train, args.eval_images, 500, 0, train=False))
    val = subset_loader(splits.val, args.val_images or len(splits.val), 500, 0, train=False)
    ft_cfg = replace(PruneRunConfig().finetune, epochs=args.finetune_epochs, device="cpu")
    n_ft = args.finetune_images or len(splits.train)
    ft_loader = subset_loader(splits.train, n_ft, ft_cfg.batch_size, 1, train=True)
    test = BatchLoader(splits.test, 500, train=False)  # reported only; nothing is chosen on it
    base_acc, base_test = evaluate(base, val)["acc"], evaluate(base, test)["acc"]
    print(f"base val acc {base_acc:.2f}, test acc {base_test:.2f}", flush=True)
    runs = []
    for layer in args.layers:
        size = find_group(trace_groups(base, x), layer).size
        methods = [("car", 0), ("l1", 0)] + [("random", s) for s in range(args.random_seeds)]
        for method, seed in methods:
            model = copy.deepcopy(base)
            plan, how = plan_by(method, model, x, layer, size // 2, eval_batches, args, seed)
            apply_plan_checked(model, trace_groups(model, x), plan, x)
            pruned, pruned_test = evaluate(model, val), evaluate(model, test)
            t = time.perf_counter()
            fit(model, ft_loader, None, ft_cfg)
            tuned, tuned_test = evaluate(model, val), evaluate(model, test)
            rec = {"layer": layer, "method": method, "seed": seed, "removed": next(iter(plan.prune_idxs.values())),
                   "val_acc_pruned": pruned["acc"], "val_acc_finetuned": tuned["acc"],
                   "test_acc_pruned": pruned_test["acc"], "test_acc_finetuned": tuned_test["acc"],
                   "finetune_seconds": time.perf_counter() - t, **{k: v for k, v in how.items() if k != "order"},
                   "removal_order": how["order"]}
            runs.append(rec)
            print(json.dumps({k: rec[k] for k in ("layer", "method", "seed", "val_acc_pruned", "val_acc_finetuned",
                                                    "test_acc_pruned", "test_acc_finetuned")}),
                  flush=True)
    out = {
        "experiment": "half the filters of one ResNet-20 layer removed by CAR (greedy), L1 and random",
        "command": "PYTHONPATH=src python benchmarks/car_paper_layer.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("weights", "data", "out")),
        "base_val_acc": base_acc, "base_test_acc": base_test, "val_images": args.val_images or len(splits.val), "eval_images": args.eval_images, "k": args.k,
        "finetune": {"epochs": args.finetune_epochs, "images": n_ft, "lr": ft_cfg.lr, "batch_size": ft_cfg.batch_size,
                     "schedule": ft_cfg.schedule, "weight_decay": ft_cfg.weight_decay},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
