"""CPU latency of the base and pruned ResNet-20s measured side by side in one run (interleaved rounds),
so that machine noise hits every model alike.

Command (from the repository root):
    python benchmarks/latency_side_by_side.py --rounds 11 --threads 1

L1 and C-SGD end with the same widths (C-SGD's clusters come from the same -50% MACs plan), so their two
rows are the same architecture: the gap between them is the noise of the measurement.

Writes benchmarks/results/latency_resnet20.json: per model and batch size, the median over rounds of
each round's median latency, and the speed-up against the base next to the MACs ratio.

``--from TABLE.json`` times the base and every row's checkpoint of an allocation table instead
(``benchmarks/allocation_comparison.py``; rows of one architecture share a timing, so one row per
criterion x allocation, the lowest seed), with :func:`filterprune.metrics.measure_side_by_side`
(interleaved rounds, the median of per-round ratios to the base), and writes ``TABLE_latency.json``::

    OMP_NUM_THREADS=1 python benchmarks/latency_side_by_side.py --threads 1 --rounds 9 \
        --from benchmarks/results/allocation_comparison_resnet20.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from filterprune.api import load
from filterprune.metrics import count, measure_latency
from filterprune.utils.env import environment

MODELS = {
    "base": "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors",
    "l1": "benchmarks/weights/resnet20_l1_macs50.safetensors",
    "random": "benchmarks/weights/resnet20_random_macs50.safetensors",
    "car": "benchmarks/weights/resnet20_car_macs50.safetensors",
    "pls-vip": "benchmarks/weights/resnet20_pls-vip_macs50.safetensors",
    "csgd": "benchmarks/weights/resnet20_csgd_macs50.safetensors",
}


def main(rounds: int = 5) -> int:
    x = torch.randn(1, 3, 32, 32)
    missing = [name for name, path in MODELS.items() if not Path(path).exists()]
    if missing:
        print(f"not timed (no weights file yet): {', '.join(missing)}", file=sys.stderr)
    models = {name: path for name, path in MODELS.items() if name not in missing}
    nets = {name: load(path).eval() for name, path in models.items()}
    per = {name: {"1": [], "64": []} for name in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            r = measure_latency(net, x.shape, batch_sizes=(1, 64), warmup=5, repeats=20)
            for b in ("1", "64"):
                per[name][b].append(r[b]["median_ms"])
    base_macs = count(nets["base"], x)[0]
    rows = {}
    for name, net in nets.items():
        macs = count(net, x)[0]
        med = {b: statistics.median(v) for b, v in per[name].items()}
        rows[name] = {"macs": macs, "macs_ratio": macs / base_macs, "median_ms": med, "round_medians_ms": per[name],
                      "speedup_vs_base": {b: statistics.median(per["base"][b]) / med[b] for b in med},
                      "macs_speedup": base_macs / macs}
        print(f"{name:8s} MACs x{macs / base_macs:.3f}  b=1 {med['1']:.2f} ms  b=64 {med['64']:.1f} ms  "
              f"speed-up b=1 {rows[name]['speedup_vs_base']['1']:.2f}x b=64 {rows[name]['speedup_vs_base']['64']:.2f}x")
    out = {"command": " ".join(["python benchmarks/latency_side_by_side.py", *sys.argv[1:]]), "rounds": rounds, "threads": torch.get_num_threads(),
           "models": models, "results": rows, "env": environment()}
    Path("benchmarks/results/latency_resnet20.json").write_text(json.dumps(out, indent=2))
    return 0


def from_table(table: Path, rounds: int, batch_sizes=(1, 64)) -> int:
    """Base and one checkpoint per architecture of ``table``'s rows, side by side; ``<table>_latency.json``."""
    from filterprune.metrics import measure_side_by_side

    doc = json.loads(table.read_text())
    rows = sorted(doc["rows"], key=lambda r: r["seed"])
    picked = {}
    for r in rows:  # the fine-tune seed changes the weights, not the widths: one timing per architecture
        picked.setdefault(f"{r['criterion']}-{r['allocation']}" + (f"-{r['variant']}" if r.get("variant") else ""), r)
    missing = [r["checkpoint"] for r in picked.values() if not Path(r["checkpoint"]).exists()]
    if missing:
        print(f"not timed (no checkpoint here): {', '.join(missing)}", file=sys.stderr)
    nets = {"base": load(MODELS["base"]).eval()}
    nets.update({k: load(r["checkpoint"]).eval() for k, r in picked.items() if Path(r["checkpoint"]).exists()})
    x1 = torch.randn(1, 3, 32, 32)
    base_macs = count(nets["base"], x1)[0]
    out = {"command": " ".join(["python benchmarks/latency_side_by_side.py", *sys.argv[1:]]), "table": str(table),
           "threads": torch.get_num_threads(), "macs_ratio": {k: count(n, x1)[0] / base_macs for k, n in nets.items()},
           "env": environment(), "batch": {}}
    for bs in batch_sizes:
        r = measure_side_by_side(nets, torch.randn(bs, 3, 32, 32), rounds=rounds, repeats=10, warmup=3)
        out["batch"][str(bs)] = r
        for k, m in r["models"].items():
            print(f"b={bs:3d} {k:24s} MACs x{out['macs_ratio'][k]:.3f} {m['median_ms']:8.2f} ms "
                  f"reduction {m['reduction']:+.3f} speed-up/MACs-speed-up "
                  f"{(1 / max(m['ratio'], 1e-12)) / (1 / out['macs_ratio'][k]):.2f}", flush=True)
    path = table.with_name(table.stem + "_latency.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--from", dest="table", type=Path, help="an allocation table: time its rows' checkpoints")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.exit(from_table(args.table, args.rounds) if args.table else main(args.rounds))
