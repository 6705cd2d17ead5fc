"""Run every ``configs/quick_*.yaml`` one at a time and record its transcript and wall time.

Writes ``benchmarks/results/quick_mode.md`` (command, stdout, wall time, per-stage seconds, load average)
and ``quick_mode.json``. The configs name their paths relative to the repository root
(``../shared/data/cifar10``, ``benchmarks/weights/...``), so ``--repo`` is the folder the commands run
in; run folders go to ``--out`` (created; existing run folders there are refused by filterprune).

    PYTHONPATH=src python benchmarks/quick_mode.py --out /tmp/quick-runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("l1", "random", "car", "pls_vip", "csgd")
RESULTS = Path(__file__).resolve().parent / "results"


def run_one(name: str, repo: Path, out: Path, nice: int) -> dict:
    """Run ``filterprune prune --config configs/quick_NAME.yaml`` in ``repo``; return its record."""
    shown = f"filterprune prune --config configs/quick_{name}.yaml"
    folder = out / f"quick_{name}"
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "filterprune", "prune", "--config",
           f"configs/quick_{name}.yaml", "--out", str(folder)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = json.loads((folder / "summary.json").read_text()) if proc.returncode == 0 else {}
    return {"method": name, "command": shown, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "stdout": proc.stdout, "stderr_tail": proc.stderr.splitlines()[-5:],
            "timings_s": summary.get("timings_s", {}), "base": summary.get("base"), "pruned": summary.get("pruned"),
            "finetuned": summary.get("finetuned"), "bn_recalibration": {
                k: v for k, v in (summary.get("bn_recalibration") or {}).items() if k != "steps"},
            "macs_removed": (summary.get("macs") or {}).get("removed_fraction")}


def _abridged(stdout: str) -> str:
    """The transcript without the per-layer width rows (kept in the run's summary.json and report.md)."""
    lines = stdout.splitlines()
    keep, in_table = [], False
    for line in lines:
        if line.startswith("layer "):
            in_table = True
            keep.append(line)
            keep.append("...                (per-layer rows: summary.json / report.md)")
            continue
        if in_table and (line.startswith("{") or line.startswith("BatchNorm")):
            in_table = False
        if not in_table:
            keep.append(line)
    return "\n".join(keep)


def write(records: list[dict], env: dict) -> None:
    """``quick_mode.json`` and the readable ``quick_mode.md``."""
    (RESULTS / "quick_mode.json").write_text(json.dumps({"env": env, "runs": records}, indent=1) + "\n")
    md = ["# Quick mode: each method on the CIFAR-10 JPEG copy (`configs/quick_*.yaml`)", "",
          "Produced by `benchmarks/quick_mode.py` (numbers in `quick_mode.json`); ResNet-20 base "
          "`benchmarks/weights/resnet20_cifar10jpeg_base.safetensors`, -50% MACs, 500 fixed val + 500 fixed test images "
          "per evaluation, 2,000 fixed training images, BatchNorm re-calibration on 256 images after every prune step, "
          "1 fine-tune (C-SGD: centripetal) epoch. Quick numbers are for trying a method, not for comparing methods.",
          "", f"Machine: {env['cpu']} CPU, torch {env['torch']}, OMP_NUM_THREADS={env['threads']}, each command under "
          f"`nice -n {env['nice']}`, one at a time, on the shared 2-core machine (the load average, 1 min, before "
          "and after each run is shown: at a load of ~2 the same runs take a fraction of these times). The decoded "
          "images came from the cache (`~/.cache/filterprune`); a first run also decodes the 60,000 JPEGs.", "",
          "| method | wall time | load before -> after | base val/test | right after pruning, BN before -> after (val) "
          "| after pruning val/test | fine-tuned val/test |", "|---|---:|---|---|---|---|---|"]
    for r in records:
        if r["returncode"] != 0:
            md.append(f"| {r['method']} | failed ({r['returncode']}) | | | | | |")
            continue
        bn = r["bn_recalibration"]
        recal = (f"{bn['val_acc_before']:.1f} -> {bn['val_acc_after']:.1f}" if bn.get("val_acc_before") is not None
                 else "not re-calibrated (C-SGD's trim is lossless)")
        md.append(f"| {r['method']} | {r['wall_s']:.0f} s | {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} "
                  f"| {r['base']['val_acc']:.1f} / {r['base']['test_acc']:.1f} | {recal} "
                  f"| {r['pruned']['val_acc']:.1f} / {r['pruned']['test_acc']:.1f} "
                  f"| {r['finetuned']['val_acc']:.1f} / {r['finetuned']['test_acc']:.1f} |")
    for r in records:
        md += ["", f"## {r['method']}", "", "```console", f"$ {r['command']}", _abridged(r["stdout"]).rstrip(),
               "```", "", f"Wall time {r['wall_s']:.1f} s (load average {r['loadavg_before'][0]:.1f} before, "
               f"{r['loadavg_after'][0]:.1f} after). Stages (s): "
               + ", ".join(f"{k} {v:.1f}" for k, v in r["timings_s"].items())]
        if r["returncode"] != 0:
            md += ["", "stderr (last lines):", "```", *r["stderr_tail"], "```"]
    (RESULTS / "quick_mode.md").write_text("\n".join(md) + "\n")


def main() -> int:
    """Run the quick configs (``--methods``), write the results; returns 0 when every run succeeded."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd(), help="folder the commands run in (repository root)")
    ap.add_argument("--out", type=Path, required=True, help="where the run folders go")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--nice", type=int, default=5)
    args = ap.parse_args()
    import platform

    import torch

    env = {"torch": torch.__version__, "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
           "cpu": platform.machine(), "nice": args.nice}
    args.out.mkdir(parents=True, exist_ok=True)
    kept = {}  # a run of some --methods keeps the other methods' committed records
    if (RESULTS / "quick_mode.json").exists():
        kept = {r["method"]: r for r in json.loads((RESULTS / "quick_mode.json").read_text())["runs"]
                if r["method"] not in args.methods}
    records = []
    for name in args.methods:
        records.append(run_one(name, args.repo, args.out, args.nice))
        print(f"{name}: rc {records[-1]['returncode']}, {records[-1]['wall_s']} s", flush=True)
        write(sorted([*kept.values(), *records], key=lambda r: METHODS.index(r["method"])), env)
    return 0 if all(r["returncode"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
