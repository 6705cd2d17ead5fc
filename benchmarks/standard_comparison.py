"""The standard comparison (benchmarks/README.md) on CPU: prune the ResNet-20 base to -50% MACs with each
criterion, fine-tune 10 epochs with the one fixed recipe, report base / pruned / fine-tuned accuracy on
validation and test, MACs, params and measured CPU latency.

Command (from the repository root; the base weights are committed, see benchmarks/README.md):
    python benchmarks/standard_comparison.py --criteria l1 random

Each criterion runs `filterprune prune` into runs/standard/<criterion>; the collected table goes to
benchmarks/results/standard_comparison_resnet20.json (and .md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BASE = "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors"


def row(name: str, s: dict) -> dict:
    lat_b, lat_p = s["latency"]["base"], s["latency"]["pruned"]
    return {
        "criterion": name,
        "base_val": s["base"]["val_acc"], "base_test": s["base"]["test_acc"],
        "pruned_val": s["pruned"]["val_acc"], "pruned_test": s["pruned"]["test_acc"],
        "finetuned_val": s["finetuned"]["val_acc"], "finetuned_test": s["finetuned"]["test_acc"],
        "macs_base": s["macs"]["base"], "macs": s["macs"]["pruned"], "macs_ratio": 1 - s["macs"]["removed_fraction"],
        "params_base": s["params"]["base"], "params": s["params"]["pruned"], "params_ratio": 1 - s["params"]["removed_fraction"],
        "latency_ms_b1": [lat_b["1"]["median_ms"], lat_p["1"]["median_ms"]],
        "latency_ms_b64": [lat_b["64"]["median_ms"], lat_p["64"]["median_ms"]],
        "speedup_b1": lat_b["1"]["median_ms"] / lat_p["1"]["median_ms"],
        "speedup_b64": lat_b["64"]["median_ms"] / lat_p["64"]["median_ms"],
        "macs_speedup": 1 / (1 - s["macs"]["removed_fraction"]),
        "finetune_epochs": s["finetune_epochs"],
        "max_equivalence_error": s["report"]["max_error"],
    }


def markdown(rows: list[dict]) -> str:
    head = ("| criterion | base val/test | pruned val/test | fine-tuned val/test | MACs | params | MACs ratio speed-up |\n"
            "|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['criterion']} | {r['base_val']:.2f} / {r['base_test']:.2f} | {r['pruned_val']:.2f} / {r['pruned_test']:.2f} "
        f"| {r['finetuned_val']:.2f} / {r['finetuned_test']:.2f} | {r['macs'] / 1e6:.2f}M ({r['macs_ratio']:.3f}) "
        f"| {r['params'] / 1e3:.1f}k ({r['params_ratio']:.3f}) | {r['macs_speedup']:.2f}x |\n" for r in rows)
    note = ("\nMeasured CPU latency: see latency_resnet20.json (every model timed side by side in one run); the "
            "latency fields in the JSON rows were taken at each run's start and end under different load.\n")
    return head + body + note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criteria", nargs="+", default=["l1", "random"])
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--weights", default=BASE)
    ap.add_argument("--epochs", type=int, default=10, help="fine-tune epochs (the protocol says 10)")
    ap.add_argument("--runs", default="runs/standard")
    ap.add_argument("--out", default="benchmarks/results/standard_comparison_resnet20")
    ap.add_argument("--rows-from", nargs="*", default=[],
                    help="result files of schedules run by their own script, merged by their 'row' "
                         "(benchmarks/pls_vip_standard.py)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for filterprune prune")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.with_suffix(".json").read_text())["rows"] if out.with_suffix(".json").exists() else []
    for crit in args.criteria:
        run_dir = Path(args.runs) / crit
        cmd = [sys.executable, "-m", "filterprune", "-q", "prune", "--weights", args.weights, "--data", args.data,
               "--criterion", crit, "--target-macs", "0.5", "--allocation", "global", "--finetune-epochs", str(args.epochs),
               "--out", str(run_dir), *args.extra]
        if not (run_dir / "summary.json").exists():
            subprocess.run(cmd, check=True)
        results = [r for r in results if r["criterion"] != crit]
        results.append({**row(crit, json.loads((run_dir / "summary.json").read_text())),
                        "command": " ".join(["filterprune", *cmd[3:]])})
    for path in args.rows_from:
        other = json.loads(Path(path).read_text())
        extra = {**other["row"], "command": other["command"], "result_file": path}
        results = [r for r in results if r["criterion"] != extra["criterion"]] + [extra]
    out.with_suffix(".json").write_text(json.dumps({"protocol": __doc__.split("\n\n")[0], "rows": results}, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
