"""Accuracy against MACs on ResNet-20 / CIFAR-10 (JPEG copy): PLS+VIP after every iteration, with the
single-shot criteria of the standard comparison (L1, random, ...) at their one operating point.

Reads benchmarks/results/pls_vip_standard_resnet20.json (from benchmarks/pls_vip_standard.py) and, if
it exists, benchmarks/results/standard_comparison_resnet20.json (from benchmarks/standard_comparison.py);
draws validation and test accuracy (two panels) and writes benchmarks/results/accuracy_vs_macs_resnet20.png.
PLS+VIP points: after each iteration's removal (hollow) and after the fine-tune that follows it (filled;
1 epoch between iterations, the rest of the 10-epoch budget after the last). Needs matplotlib
(``pip install matplotlib``); nothing else in the project does.

Command (repository root):
    python benchmarks/plot_accuracy_vs_macs.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path("benchmarks/results")


def pls_points(pls: dict, split: str) -> tuple[list, list, list, list]:
    """(MACs after removal, accuracy after removal, MACs after fine-tune, accuracy after fine-tune)."""
    its = pls.get("iterations")
    if its:  # finished run
        pruned = [(r["macs"], r["pruned"][f"{split}_acc"]) for r in its if r["pruned"]]
        tuned = [(r["macs"], r["finetuned"][f"{split}_acc"]) for r in its if r["finetuned"]]
    else:  # a run in progress: alternate removal / fine-tune entries, epochs_used tells them apart
        pruned, tuned, epochs = [], [], 0
        for p in pls["progress"]:
            (tuned if p["epochs_used"] > epochs else pruned).append((p["macs"], p[f"{split}_acc"]))
            epochs = p["epochs_used"]
    return [m for m, _ in pruned], [a for _, a in pruned], [m for m, _ in tuned], [a for _, a in tuned]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pls", default=str(RESULTS / "pls_vip_standard_resnet20.json"))
    ap.add_argument("--standard", default=str(RESULTS / "standard_comparison_resnet20.json"))
    ap.add_argument("--out", default=str(RESULTS / "accuracy_vs_macs_resnet20.png"))
    args = ap.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("this plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    pls = json.loads(Path(args.pls).read_text())
    std_path = Path(args.standard)
    rows = json.loads(std_path.read_text())["rows"] if std_path.exists() else []
    if not rows:
        print(f"note: {std_path} not found or empty; plotting PLS+VIP alone", file=sys.stderr)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True)
    for ax, split in zip(axes, ("val", "test"), strict=True):
        base = pls["base"]
        ax.scatter([base["macs"] / 1e6], [base[f"{split}_acc"]], marker="*", s=160, color="black", label="base", zorder=3)
        pm, pa, tm, ta = pls_points(pls, split)
        ax.plot([base["macs"] / 1e6, *(m / 1e6 for m in tm)], [base[f"{split}_acc"], *ta], "-o", color="tab:blue",
                label="PLS+VIP, after fine-tune", zorder=2)
        ax.scatter([m / 1e6 for m in pm], pa, facecolors="none", edgecolors="tab:blue", label="PLS+VIP, after removal")
        for i, (m, a) in enumerate(zip(tm, ta, strict=True), 1):
            ax.annotate(str(i), (m / 1e6, a), textcoords="offset points", xytext=(4, 4), fontsize=8, color="tab:blue")
        for r, color in zip(rows, ("tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"), strict=False):
            ax.scatter([r["macs"] / 1e6], [r[f"finetuned_{split}"]], marker="s", color=color,
                       label=f"{r['criterion']}, after fine-tune", zorder=3)
            ax.scatter([r["macs"] / 1e6], [r[f"pruned_{split}"]], marker="s", facecolors="none", edgecolors=color)
        ax.set_title(f"ResNet-20, CIFAR-10 (JPEG) {split}")
        ax.set_xlabel("MACs (M)")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))  # room for the legend under the panels: it hides no point
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
