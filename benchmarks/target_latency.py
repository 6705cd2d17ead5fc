"""``target_latency=0.4`` on the ResNet-20 base at batch 64 and at batch 1 on this CPU.

For each batch size: ``fp.prune(model, x, "l1", target_latency=0.4, round_to="auto")`` (a per-group
latency table measured in the network on this CPU, round_to chosen from measured per-MAC gains,
selection on the table's prediction, side-by-side measured refinement), then an independent
verification: the base and the pruned model timed side by side again (interleaved rounds, median of
per-round ratios), the measured reduction compared with the target (within +-0.05), and the measured
speed-up divided by the MACs speed-up (base MACs / pruned MACs) for the rounded widths. No fine-tuning:
latency does not depend on the weights' values.

Command (from the repository root; single-threaded torch, as the standard comparison's latency; a fresh
``--work`` folder: a cached table measured under another load is refused):
    OMP_NUM_THREADS=1 python benchmarks/target_latency.py --threads 1 --work /tmp/target_latency_$(date +%s)

Writes benchmarks/results/target_latency_resnet20.json (with ``uptime`` before and after: the machine is
shared, state its load next to the numbers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import filterprune as fp
from filterprune.latency_target import LatencyOptions
from filterprune.metrics import count, measure_side_by_side
from filterprune.utils.env import environment

BASE = "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors"
OUT = Path("benchmarks/results/target_latency_resnet20.json")


def uptime() -> str:
    """The ``uptime`` line (load averages over 1, 5, 15 minutes)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def one(batch: int, target: float, work: Path, rounds: int, verify_rounds: int, repeats: int) -> dict:
    """Prune a fresh base to ``target`` at ``batch``, then verify side by side; the row of the results."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    base, model = fp.load(BASE).eval(), fp.load(BASE).eval()
    t0 = time.perf_counter()
    report = fp.prune(model, x, "l1", target_latency=target, round_to="auto",
                      latency_table=work / f"latency_table_b{batch}.json",
                      latency_options=LatencyOptions(rounds=rounds, repeats=repeats))
    prune_s = time.perf_counter() - t0
    check = measure_side_by_side({"base": base, "pruned": model}, x, rounds=verify_rounds, repeats=repeats)
    measured = check["models"]["pruned"]["reduction"]
    macs_base, params_base = count(base, x[:1])
    macs, params = count(model, x[:1])
    speedup = 1 / check["models"]["pruned"]["ratio"]
    macs_speedup = macs_base / macs
    lat = report.latency
    row = {
        "batch_size": batch, "target": target, "prune_seconds": prune_s,
        "round_to": lat["round_to"]["round_to"], "round_to_gain": lat["round_to"]["gain"],
        "table": lat["table"], "refinement": lat["iterations"],
        "predicted_reduction": lat["predicted"], "refinement_measured_reduction": lat["measured"],
        "verification": {"measured_reduction": measured, "within_0.05": abs(measured - target) <= 0.05,
                         "base_ms": check["models"]["base"]["median_ms"],
                         "pruned_ms": check["models"]["pruned"]["median_ms"],
                         "rounds": verify_rounds, "repeats": repeats,
                         "round_ms": {k: v["round_ms"] for k, v in check["models"].items()}},
        "macs": {"base": macs_base, "pruned": macs, "reduction": 1 - macs / macs_base},
        "params": {"base": params_base, "pruned": params, "reduction": 1 - params / params_base},
        "speedup": speedup, "macs_speedup": macs_speedup, "speedup_over_macs_speedup": speedup / macs_speedup,
        "widths": report.widths_after, "round_to_evidence": lat["round_to"],
    }
    print(f"batch {batch}: round_to={row['round_to']}, predicted -{100 * lat['predicted']:.1f}%, refinement "
          f"-{100 * lat['measured']:.1f}%, verification -{100 * measured:.1f}% "
          f"({row['verification']['base_ms']:.2f} -> {row['verification']['pruned_ms']:.2f} ms), MACs "
          f"-{100 * row['macs']['reduction']:.1f}%, speed-up {speedup:.2f}x / MACs {macs_speedup:.2f}x = "
          f"{row['speedup_over_macs_speedup']:.2f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.4)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=15, help="side-by-side rounds of each refinement")
    ap.add_argument("--verify-rounds", type=int, default=31, help="side-by-side rounds of the verification")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--work", default="/tmp/target_latency", help="folder for the cached latency tables")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile (kept in the results)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    before = uptime()
    rows = [one(b, args.target, work, args.rounds, args.verify_rounds, args.repeats) for b in args.batches]
    out = {"command": " ".join(["python benchmarks/target_latency.py", *(argv or sys.argv[1:])]), "note": args.note,
           "weights": BASE, "criterion": "l1", "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "uptime_before": before, "uptime_after": uptime(),
           "results": rows, "env": environment()}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
