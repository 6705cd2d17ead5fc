"""Time full CAR scoring of every prunable filter of ResNet-20: fast path vs naive vs the floor.

For each evaluation-set size (training images, a seeded random subset, no augmentation), in one run:

* ``forward_s``: one full forward over the evaluation set (median of ``--repeats``);
* ``floor_s`` = sum over filters of (MACs of the layers a filter's mask changes / MACs of the whole
  net) x ``forward_s``: what evaluating only the affected suffix would cost at the full forward's speed;
* ``fast_s``: ``car_analysis(fast=True)`` (includes its one full forward and the tie-break bookkeeping);
* ``naive_s``: one full evaluation per filter (``fast=False``); with ``--naive-per-group N`` only N
  filters per group are timed and the total is extrapolated (every naive evaluation is one full
  forward, so the per-filter cost does not depend on the group); the sampled filters' CARs are
  compared with the fast ones;
* the ratios ``fast/floor`` and ``naive/fast``, and whether the scores are identical.

On a shared CPU the load changes while the benchmark runs, so a forward timed once at the start can be
off. Every naive evaluation is also one full forward, timed right after the fast run, so the result
also gives ``forward_s_naive`` (naive seconds / evaluations, the base one included) and the floor and
``fast/floor`` recomputed with it; ``forward_s_end`` re-times the full forward at the end.

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/car_scoring.py --eval-images 1000 2000 --naive-per-group 0 8 \\
        --out benchmarks/results/car_scoring_resnet20.json

(every filter's naive evaluation on 1,000 images; 8 filters per group, extrapolated, on 2,000)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from filterprune.api import load
from filterprune.criteria import ScoringContext
from filterprune.criteria._car_fast import CarEngine
from filterprune.criteria.car import car_analysis, stats_to_result
from filterprune.data import BatchLoader, load_data
from filterprune.graph.trace import trace_groups
from filterprune.metrics.macs import layer_table
from filterprune.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def eval_batches(train, n: int, batch_size: int, seed: int) -> list:
    return list(BatchLoader(train.sample(n, seed), batch_size, train=False))


def time_forward(model, batches, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            for x, _ in batches:
                model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def floor_fractions(model, x, groups, batches) -> dict[str, float]:
    """Per group: MACs of the modules its masks change / MACs of the whole model."""
    macs = {r["name"]: r["macs"] for r in layer_table(model, x)}
    total = sum(macs.values())
    engine = CarEngine(model, groups, batches[:1])
    return {g.id: sum(macs.get(m, 0) for m in engine.plan(g).modules) / total for g in groups if g.prunable}


def run_size(model, x, groups, train, n: int, per_group: int, args) -> dict:
    batches = eval_batches(train, n, args.batch_size, args.seed)
    model.eval()
    fwd = time_forward(model, batches, args.repeats)
    frac = floor_fractions(model, x, groups, batches)
    prunable = [g for g in groups if g.prunable]
    floor = sum(g.size * frac[g.id] for g in prunable) * fwd
    ctx = ScoringContext(model, x, groups, data=batches, num_batches=len(batches))

    t = time.perf_counter()
    fast = car_analysis(ctx, fast=True, max_rows=args.max_rows)
    fast_s = time.perf_counter() - t

    n_filters = sum(g.size for g in prunable)
    if per_group:
        picks = [(g, c) for g in prunable
                 for c in torch.linspace(0, g.size - 1, per_group).round().long().unique().tolist()]
    else:
        picks = [(g, c) for g in prunable for c in range(g.size)]
    with torch.no_grad():
        engine = CarEngine(model, groups, batches, fast=False)
        t = time.perf_counter()
        stats = engine.evaluate(picks)
        naive_measured = time.perf_counter() - t
    naive_s = naive_measured if not per_group else naive_measured * (n_filters + 1) / (len(picks) + 1)
    ids = list(dict.fromkeys(g.id for g, _ in picks))
    split = [sum(1 for g, _ in picks if g.id == gid) for gid in ids]
    naive = stats_to_result("accuracy", ids, split, batches, stats, False)
    mism_acc, max_dloss = 0, 0.0
    pos = {gid: 0 for gid in ids}
    for g, c in picks:
        i = pos[g.id]
        pos[g.id] += 1
        mism_acc += int(float(naive.drop[g.id][i]) != float(fast.drop[g.id][c]))
        max_dloss = max(max_dloss, abs(float(naive.delta_loss[g.id][i]) - float(fast.delta_loss[g.id][c])))
    fwd_end = time_forward(model, batches, args.repeats)
    return {
        "eval_images": n, "batch_size": args.batch_size, "filters": n_filters,
        "forward_s": fwd, "forward_s_end": fwd_end, "floor_s": floor, "floor_in_forwards": floor / fwd,
        "fast_s": fast_s, "naive_s": naive_s,
        "naive_measured": {"filters": len(picks), "seconds": naive_measured,
                           "extrapolated": bool(per_group)},
        "fast_over_floor": fast_s / floor, "naive_over_fast": naive_s / fast_s,
        "identical": {"filters_compared": len(picks), "accuracy_mismatches": mism_acc,
                      "max_abs_delta_loss_diff": max_dloss, "base_equal": naive.base == fast.base},
        "base_acc": fast.base, "fast_path": fast.fast,
        "car_zero_fraction": float(sum(int((d == 0).sum()) for d in fast.drop.values()) / n_filters),
        "floor_fraction_per_group": frac,
    }


def derive(r: dict) -> dict:
    """Add the floor recomputed from the naive evaluations' per-forward time (see the module docstring)."""
    per_forward = r["naive_measured"]["seconds"] / (r["naive_measured"]["filters"] + 1)
    floor = r["floor_in_forwards"] * per_forward
    r.update({"forward_s_naive": per_forward, "floor_s_naive": floor, "fast_over_floor_naive": r["fast_s"] / floor})
    return r


def write(args, results: list[dict], complete: bool) -> None:
    out = {
        "benchmark": (f"CAR scoring of every prunable filter, {args.model or 'ResNet-20 base'}, "
                      "CIFAR-10 (JPEG copy) training images"),
        "command": "PYTHONPATH=src python benchmarks/car_scoring.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("weights", "data", "out") and v is not None),
        "complete": complete,
        "weights": f"{args.model} (published)" if args.model else os.path.relpath(args.weights, ROOT), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "loadavg_at_end": os.getloadavg(),
        "note": ("shared 2-core CPU with other jobs running: absolute times are noisy; the ratios come "
                 "from measurements taken back to back in one process"),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors"))
    p.add_argument("--model", default=None, help="a registered model with published weights (e.g. resnet56) "
                   "instead of --weights")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--eval-images", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--max-rows", type=int, default=2048)
    p.add_argument("--naive-per-group", type=int, nargs="+", default=[0],
                   help="time only N filters per group (0: all); one value, or one per --eval-images size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/car_scoring_resnet20.json"))
    args = p.parse_args()

    model = (create_model(args.model, pretrained=True) if args.model else load(args.weights)).eval()
    train = load_data(args.data).train
    x = torch.zeros(2, 3, 32, 32)
    groups = trace_groups(model, x)
    per_group = args.naive_per_group * len(args.eval_images) if len(args.naive_per_group) == 1 else args.naive_per_group
    if len(per_group) != len(args.eval_images):
        p.error("--naive-per-group takes one value or one per --eval-images size")
    results = []
    for n, k in zip(args.eval_images, per_group, strict=True):
        results.append(derive(run_size(model, x, groups, train, n, k, args)))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "floor_fraction_per_group"}), flush=True)
        write(args, results, complete=len(results) == len(args.eval_images))  # partial results survive a kill
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
