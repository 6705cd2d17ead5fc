"""The standard comparison with per-layer allocation (issue #15): criterion x allocation x fine-tune seed.

Each row is one ``filterprune prune`` run on the ResNet-20 base: ``--target-macs 0.5``, ``--allocation``
global / cost / sensitivity, ``--finetune-epochs 10`` of the one fine-tune recipe (``--finetune-seed``),
in ``runs/allocation/<criterion>-<allocation>-s<seed>``. Every row of this table uses the same recipe, with
bfloat16 autocast of the training forward on CPU (``--finetune-cpu-amp``; about twice the float32
throughput on this AMX CPU), so its rows are not mixed with the float32 rows of
``standard_comparison_resnet20.json``. A run already finished is read, not re-run; an interrupted one is
resumed (``--resume``). The table is written after every row, so a stopped sweep keeps what it measured.
C-SGD's rows spend the 10 epochs in centripetal training with the smallest eps of ``CSGD_EPS`` whose
predicted deviation is at most 1e-4 (:func:`csgd_eps`; recorded in the table with the official setting's).
A fourth field names a paper-faithful schedule of :data:`VARIANTS` (``car:global:0:paper``): the 10 epochs
planned as epochs between pruning steps plus a final fine-tune (the row records the steps and epochs spent,
which can differ when the run makes another number of steps); its ``pruned`` accuracies are measured after
the last removal, so after the fine-tuning between steps.

Command (from the repository root; one thread per run, two runs at most on 2 cores)::

    OMP_NUM_THREADS=1 python benchmarks/allocation_comparison.py --rows l1:global:0 l1:cost:0 ...

Writes ``benchmarks/results/allocation_comparison_resnet20.{json,md}`` and ``..._widths.png`` (the
per-layer widths of every row). Latency is measured side by side afterwards
(``benchmarks/latency_side_by_side.py --from benchmarks/results/allocation_comparison_resnet20.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

BASE = "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors"
OUT = "benchmarks/results/allocation_comparison_resnet20"
#: criterion options of the standard comparison (benchmarks/results/standard_comparison_resnet20.json)
OPTIONS = {"car": "k=64,eval_images=1000"}
OFFICIAL_EPS = (3e-3, 0.1)  # C-SGD's CIFAR setting: eps on kernels, vectors at 0.1 eps (Ding et al. 2019)
#: centripetal strengths tried for C-SGD's rows (the smallest that collapses within the budget is used)
CSGD_EPS = (0.01, 0.02, 0.03, 0.05, 0.1)


#: paper-faithful schedules (issue #15) in the same fine-tune budget: criterion options replacing
#: :data:`OPTIONS`, prune flags, and the epochs those flags are expected to spend between steps (the final
#: fine-tune gets the rest). CAR: k=32 filters per greedy step with 1 epoch after each, against the table's
#: k=64 (2 steps, no retraining between them); 5 steps were expected (``steps_for_k``'s L1 estimate), the run
#: made 4 (the count of its own CAR ranking), so it spent 9 epochs. PLS+VIP: 20% of the remaining filters
#: per iteration (3 iterations) with 3 epochs between them, against the standard comparison's 10% with 1
#: epoch (5 iterations; the official code trains 10 epochs per iteration). The row records what was spent.
VARIANTS = {
    ("car", "paper"): {"options": "k=32,eval_images=1000", "flags": ["--step-finetune-epochs", "1"], "spent": 5,
                       "label": "k=32, 1 epoch after each greedy step"},
    ("pls-vip", "paper"): {"options": None, "flags": ["--step-ratio", "0.2", "--step-finetune-epochs", "3"],
                           "spent": 6, "label": "p=0.2, 3 epochs between iterations"},
}


def parse_spec(text: str) -> tuple[str, str, int, str]:
    """``criterion:allocation[:seed[:variant]]`` -> the tuple (seed 0 and variant "" when left out); one
    clear error otherwise, naming the known variants."""
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or not all(parts):
        raise argparse.ArgumentTypeError(f"row {text!r}: write criterion:allocation[:seed[:variant]], e.g. l1:cost:0")
    variant = parts[3] if len(parts) == 4 else ""
    if variant and (parts[0], variant) not in VARIANTS:
        known = ", ".join(f"{c}:...:{v}" for c, v in VARIANTS)
        raise argparse.ArgumentTypeError(f"row {text!r}: no variant {variant!r} for {parts[0]} (known: {known})")
    return parts[0], parts[1], int(parts[2]) if len(parts) >= 3 else 0, variant


def parse_row(text: str) -> tuple[str, str, int]:
    """``criterion:allocation:seed`` (seed optional, 0) -> the tuple; one clear error otherwise."""
    crit, alloc, seed, variant = parse_spec(text)
    if variant:
        raise argparse.ArgumentTypeError(f"row {text!r}: variants are run by allocation_comparison.py only")
    return crit, alloc, seed


def csgd_eps(epochs: int, batch_size: int, lr: float, candidates: list[float], train_images: int = 45000) -> dict:
    """The smallest centripetal eps that collapses the clusters within the budget (vectors at 1.0 eps),
    and the official setting's predicted deviation, from :func:`filterprune.methods.predicted_decay`."""
    from filterprune.config import TrainConfig
    from filterprune.methods.csgd import predicted_decay

    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, schedule="cosine")
    steps = math.ceil(train_images / batch_size)

    def deviation(eps: float, ratio: float) -> float:
        return max(predicted_decay(cfg, steps, cfg.weight_decay + eps), predicted_decay(cfg, steps, ratio * eps))

    collapsing = [e for e in sorted(candidates) if deviation(e, 1.0) <= 1e-3]
    chosen = next((e for e in collapsing if deviation(e, 1.0) <= 1e-4), max(candidates))  # 10x margin
    return {"eps": chosen, "vector_ratio": 1.0, "deviation": deviation(chosen, 1.0),
            "smallest_collapsing": {"eps": collapsing[0], "deviation": deviation(collapsing[0], 1.0)}
            if collapsing else None,
            "official": {"eps": OFFICIAL_EPS[0], "vector_ratio": OFFICIAL_EPS[1],
                         "deviation": deviation(*OFFICIAL_EPS)},
            "steps_per_epoch": steps, "epochs": epochs}


def row_of(name: str, crit: str, alloc: str, seed: int, run_dir: Path, command: list[str], variant: str = "") -> dict:
    """The table row of a finished run (its ``summary.json``, ``sensitivity.json`` when measured)."""
    s = json.loads((run_dir / "summary.json").read_text())
    sens = run_dir / "sensitivity.json"
    timings = s.get("timings_s") or {}
    epoch_s = [r.get("epoch_time_s") for r in _metrics(run_dir) if r.get("epoch_time_s")]
    between = _between_step_epochs(run_dir, s) if variant else None
    return {
        "row": name, "criterion": crit, "allocation": alloc, "seed": seed,
        **({"variant": variant, "between_step_epochs": between,
            "schedule": f"{VARIANTS[crit, variant]['label']}; {len(s['report']['steps'])} steps, "
                        f"{between} + {s['finetune_epochs']} epochs"} if variant else {}),
        "base_val": s["base"]["val_acc"], "base_test": s["base"]["test_acc"],
        "pruned_val": s["pruned"]["val_acc"], "pruned_test": s["pruned"]["test_acc"],
        "finetuned_val": s["finetuned"]["val_acc"], "finetuned_test": s["finetuned"]["test_acc"],
        "macs_base": s["macs"]["base"], "macs": s["macs"]["pruned"],
        "params_base": s["params"]["base"], "params": s["params"]["pruned"],
        "widths": s["report"]["widths_after"], "finetune_epochs": s["finetune_epochs"],
        "max_equivalence_error": s["report"]["max_error"],
        "timings_s": timings, "finetune_epoch_s": epoch_s,
        "sensitivity_cost": json.loads(sens.read_text()).get("cost") if sens.exists() else None,
        "checkpoint": str(run_dir / "model.safetensors"),
        "command": " ".join(["filterprune", *command[3:]]),
    }


def _between_step_epochs(run_dir: Path, summary: dict) -> int:
    """Epochs the run spent fine-tuning between pruning steps: its finished ``*.finetune`` stages (one per
    step for CAR's ``k=``, one per iteration but the last for ``--step-ratio``) x ``step_finetune_epochs``."""
    stages = json.loads((run_dir / "run_state.json").read_text())["stages"]
    done = [st for st in stages if st["name"].endswith(".finetune") and st.get("done")]
    return len(done) * summary["config"]["prune"]["step_finetune_epochs"]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown(rows: list[dict]) -> str:
    """The table: one line per row, accuracies in percent, MACs and params with their share of the base."""
    head = ("| criterion | allocation | seed | pruned val/test | fine-tuned val/test | MACs | params |\n"
            "|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['criterion']}{' (' + r['schedule'] + ')' if r.get('schedule') else ''} | {r['allocation']} | {r['seed']} | {r['pruned_val']:.2f} / {r['pruned_test']:.2f} "
        f"| {r['finetuned_val']:.2f} / {r['finetuned_test']:.2f} "
        f"| {r['macs'] / 1e6:.2f}M ({r['macs'] / r['macs_base']:.3f}) "
        f"| {r['params'] / 1e3:.1f}k ({r['params'] / r['params_base']:.3f}) |\n" for r in rows)
    return head + body


def plot_widths(rows: list[dict], path: Path, title: str = "ResNet-20 at -50% MACs: filters kept per layer") -> None:
    """Per-layer kept filters of every row, one line per row (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for r in rows:
        names = list(r["widths"])
        ax.plot(range(len(names)), [r["widths"][n] for n in names], marker="o", ms=3, label=r["row"])
    if rows:
        names = list(rows[0]["widths"])
        ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
    ax.set_ylabel("filters kept")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=parse_spec, required=True, help="criterion:allocation[:seed[:variant]] ...")
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--weights", default=BASE)
    ap.add_argument("--epochs", type=int, default=10, help="fine-tune epochs (the protocol says 10)")
    ap.add_argument("--runs", default="runs/allocation")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for filterprune prune")
    args = ap.parse_args(argv)
    out = Path(args.out)
    table = out.with_suffix(".json")
    eps = csgd_eps(args.epochs, 128, 0.01, list(CSGD_EPS))  # the fine-tune recipe's batch size and lr
    options = {**OPTIONS, "csgd": f"centripetal={eps['eps']},vector_ratio={eps['vector_ratio']}"}
    for crit, alloc, seed, variant in args.rows:
        name = f"{crit}-{alloc}-s{seed}" + (f"-{variant}" if variant else "")
        run_dir = Path(args.runs) / name
        v = VARIANTS.get((crit, variant), {"options": options.get(crit), "flags": [], "spent": 0})
        if v["spent"] >= args.epochs:
            raise SystemExit(f"row {name}: its schedule spends {v['spent']} epochs between steps; give --epochs > that")
        cmd = [sys.executable, "-m", "filterprune", "-q", "prune", "--weights", args.weights, "--data", args.data,
               "--criterion", crit, "--target-macs", "0.5", "--allocation", alloc,
               "--finetune-epochs", str(args.epochs - v["spent"]), "--finetune-seed", str(seed), "--finetune-cpu-amp",
               "--out", str(run_dir), *(["--criterion-options", v["options"]] if v["options"] else []),
               *v["flags"], *args.extra]
        if not (run_dir / "summary.json").exists():
            t0 = time.perf_counter()
            subprocess.run(cmd + (["--resume"] if run_dir.exists() else []), check=True)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        rows = json.loads(table.read_text())["rows"] if table.exists() else []  # re-read: two sweeps may share it
        rows = [r for r in rows if r["row"] != name] + [row_of(name, crit, alloc, seed, run_dir, cmd, variant)]
        doc = {"protocol": __doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1].replace("\n", " "), "csgd_eps": eps,
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
        tmp = table.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(table)
        out.with_suffix(".md").write_text(markdown(rows))
        plot_widths(rows, out.parent / (out.name + "_widths.png"))
    print(markdown(json.loads(table.read_text())["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
