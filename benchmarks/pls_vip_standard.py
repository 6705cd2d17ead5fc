"""The standard comparison for PLS+VIP: the ResNet-20 base pruned by PLS+VIP iterations to -50% MACs with
the same total fine-tune budget as the single-shot criteria (10 epochs of the fixed recipe).

Protocol: base = benchmarks/weights/resnet20_cifar10jpeg_base.safetensors on the CIFAR-10 JPEG copy
(45k train / 5k val / 10k test); each iteration refits PLS (2 components, pre-BN conv outputs, global
max pooling) on every training image (no augmentation), removes the 10% of the remaining prunable
channels with the lowest raw VIP (one network-wide ranking, every group keeps >= 1 channel) and is
followed by 1 epoch of fine-tuning; the last iteration removes just enough to land on -50% MACs and
is followed by the rest of the budget, 10 - (K - 1) epochs for K iterations. Fine-tuning is the
``PruneRunConfig.finetune`` recipe (SGD nesterov, lr 0.01 cosine per fit call, batch 128, wd 5e-4).
Validation and test accuracy are recorded after every removal and after every fine-tune.

Command (repository root):
    python benchmarks/pls_vip_standard.py
writes benchmarks/results/pls_vip_standard_resnet20.json (updated after every iteration) and the
pruned model to runs/standard/pls-vip/model.safetensors. The same schedule from the CLI (with a fixed
final fine-tune instead of the budget split) is
    filterprune prune --weights <base> --data ../shared/data/cifar10 --criterion pls-vip \\
        --target-macs 0.5 --step-ratio 0.1 --step-finetune-epochs 1 --finetune-epochs 5 --out runs/pls
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from filterprune.api import load, save
from filterprune.config import PruneRunConfig
from filterprune.data import BatchLoader, load_data
from filterprune.metrics import count, measure_latency
from filterprune.train import evaluate, fit
from filterprune.utils.seed import seed_everything
from filterprune.workflows.pls_iterate import pls_vip_iterate
from filterprune.workflows.train_run import loaders

BASE = "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors"
logger = logging.getLogger("pls_vip_standard")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--weights", default=BASE)
    ap.add_argument("--epochs", type=int, default=10, help="total fine-tune epochs (the protocol says 10)")
    ap.add_argument("--p", type=float, default=0.1, help="fraction of the remaining channels per iteration")
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=None, help="PLS images (default: all training images)")
    ap.add_argument("--run-dir", default="runs/standard/pls-vip")
    ap.add_argument("--out", default="benchmarks/results/pls_vip_standard_resnet20.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    seed_everything(0)
    ft = PruneRunConfig().finetune  # the fixed recipe
    splits = load_data(args.data)
    model = load(args.weights)
    train, val, test = loaders(splits, ft.batch_size, ft.eval_batch_size, "cpu", ft.seed)
    features = BatchLoader(splits.train, ft.eval_batch_size, train=False)
    x = torch.randn(2, 3, 32, 32)
    base_macs, base_params = count(model, x)
    latency_base = measure_latency(model, x[:1].shape)

    def accuracies(net) -> dict[str, float]:
        return {"val_acc": evaluate(net, val)["acc"], "test_acc": evaluate(net, test)["acc"]}

    out = Path(args.out)
    result = {
        "protocol": __doc__.split("\n\n")[1],
        "command": "python benchmarks/pls_vip_standard.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget": {"total_epochs": args.epochs, "between_iterations": 1,
                   "final": "total - (iterations - 1)"},
        "criterion_options": {"n_components": 2, "pooling": "max", "position": "pre_bn", "samples": args.samples},
        "p": args.p, "target_macs": args.target_macs,
        "base": {**accuracies(model), "macs": base_macs, "params": base_params},
        "progress": [],
    }
    used = {"epochs": 0}
    start = time.perf_counter()

    def write() -> None:
        result["elapsed_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(result, indent=2))

    def evaluated(net) -> dict[str, float]:  # also checkpoints the JSON after every removal / fine-tune
        acc = accuracies(net)
        macs, params = count(net, x)
        result["progress"].append({"epochs_used": used["epochs"], "macs": macs, "params": params, **acc})
        write()
        return acc

    def between(net, iteration: int) -> None:
        if used["epochs"] >= args.epochs - 1:  # keep at least one epoch for the end
            logger.warning("iteration %d: budget spent, no fine-tune before the next iteration", iteration)
            return
        fit(net, train, val, replace(ft, epochs=1, device="cpu"))
        used["epochs"] += 1

    def final(net) -> None:
        rest = args.epochs - used["epochs"]
        fit(net, train, val, replace(ft, epochs=rest, device="cpu"))
        used["epochs"] += rest
        result["final_epochs"] = rest

    write()
    records = pls_vip_iterate(
        model, x, features, p=args.p, target_macs=args.target_macs,
        criterion_kwargs={"n_components": 2, "pooling": "max", "position": "pre_bn", "samples": args.samples},
        finetune=between, final_finetune=final, evaluate=evaluated,
    )
    macs, params = count(model, x)
    latency = measure_latency(model, x[:1].shape)
    last = records[-1]
    result["iterations"] = [asdict(r) for r in records]
    result["row"] = {  # the standard_comparison.py row format
        "criterion": "pls-vip",
        "base_val": result["base"]["val_acc"], "base_test": result["base"]["test_acc"],
        "pruned_val": last.pruned["val_acc"], "pruned_test": last.pruned["test_acc"],
        "finetuned_val": last.finetuned["val_acc"], "finetuned_test": last.finetuned["test_acc"],
        "macs_base": base_macs, "macs": macs, "macs_ratio": macs / base_macs,
        "params_base": base_params, "params": params, "params_ratio": params / base_params,
        "latency_ms_b1": [latency_base["1"]["median_ms"], latency["1"]["median_ms"]],
        "latency_ms_b64": [latency_base["64"]["median_ms"], latency["64"]["median_ms"]],
        "speedup_b1": latency_base["1"]["median_ms"] / latency["1"]["median_ms"],
        "speedup_b64": latency_base["64"]["median_ms"] / latency["64"]["median_ms"],
        "macs_speedup": base_macs / macs,
        "finetune_epochs": used["epochs"],
        "iterations": len(records),
        "max_equivalence_error": max((r.max_error or 0.0) for r in records),
    }
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save(model, run_dir / "model.safetensors", meta={"summary": result["row"]})
    write()
    print(json.dumps(result["row"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
