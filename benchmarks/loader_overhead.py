"""Per-batch cost of BatchLoader (train=True: shuffle, crop, flip, normalise) vs one ResNet-20 SGD step, on CPU.

Command (from the repository root):
    python benchmarks/loader_overhead.py

Loader batches and training steps are timed alternately, as in a training loop, so both see the same
machine load; the loader is also timed alone over many batches. Uses the CIFAR-10 JPEG copy in
../shared/data/cifar10 when present (decoded once, then cached), else random uint8 images of the same
shape. Target: the loader costs at most 5% of a training step.
Writes benchmarks/results/loader_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from filterprune.data import BatchLoader, load_data, synthetic_dataset
from filterprune.models import create_model

REPO = Path(__file__).resolve().parents[1]


def _stats(seconds: list[float]) -> dict[str, float]:
    q = statistics.quantiles(seconds, n=4)
    return {
        "median_ms": 1e3 * statistics.median(seconds),
        "q1_ms": 1e3 * q[0],
        "q3_ms": 1e3 * q[2],
        "n": len(seconds),
    }


def _batches(loader: BatchLoader):
    """Endless training batches, epoch after epoch."""
    while True:
        yield from loader


def time_loader(ds, batch_size: int, batches: int, warmup: int) -> list[float]:
    """Seconds per training batch of the loader alone (epoch plans included, amortised)."""
    it = _batches(BatchLoader(ds, batch_size, train=True, seed=0))
    times = []
    for _ in range(warmup + batches):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def time_interleaved(ds, batch_size: int, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per loader batch and per ResNet-20 step (forward, cross-entropy, backward, SGD), alternated
    as in a training loop, so that both see the same machine load."""
    model = create_model("resnet20").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    it = _batches(BatchLoader(ds, batch_size, train=True, seed=1))
    load_t, step_t = [], []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        t2 = time.perf_counter()
        load_t.append(t1 - t0)
        step_t.append(t2 - t1)
    return load_t[warmup:], step_t[warmup:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / ".." / "shared" / "data" / "cifar10"))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--loader-batches", type=int, default=500)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[0, 1], help="torch thread counts to run (0: default)"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "loader_overhead.json"))
    args = ap.parse_args(argv)

    data = Path(args.data)
    if data.exists():
        t0 = time.perf_counter()
        ds = load_data(str(data)).train
        source = f"{os.path.relpath(data, REPO)} (train split, {len(ds)} images; load {time.perf_counter() - t0:.1f} s)"
    else:
        ds = synthetic_dataset(45000, image_size=32)
        ds.pad, ds.flip = 4, True
        source = "random uint8, 45000 x 3 x 32 x 32 (JPEG copy not found)"
    print(f"data: {source}")

    default_threads = torch.get_num_threads()
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        load_before = os.getloadavg()[0]
        alone = _stats(time_loader(ds, args.batch_size, args.loader_batches, warmup=10))
        load_t, step_t = time_interleaved(ds, args.batch_size, args.steps, warmup=5)
        loader, step = _stats(load_t), _stats(step_t)
        ratio = loader["median_ms"] / step["median_ms"]
        runs.append({
            "threads": torch.get_num_threads(),
            "loader_per_batch_alone": alone,
            "loader_per_batch": loader,
            "resnet20_train_step": step,
            "ratio_loader_to_step": ratio,
            "meets_target": ratio <= 0.05,
            "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        })  # fmt: skip
        print(f"threads {runs[-1]['threads']}:")
        for label, st, unit in (
            ("loader alone", alone, "batch"),
            ("loader", loader, "batch"),
            ("resnet20", step, "step"),
        ):
            iqr = f"IQR {st['q1_ms']:.2f}-{st['q3_ms']:.2f}"
            print(f"  {label:12s}: {st['median_ms']:8.2f} ms/{unit} (median of {st['n']}; {iqr})")
        print(f"  ratio       : {100 * ratio:.2f}% of a step (target <= 5%)")
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "batch_size": args.batch_size,
        "data": source,
        "note": "loader/step medians are timed alternately within one loop; the load average shows how busy the shared machine was",
        "target_ratio": 0.05,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["meets_target"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
