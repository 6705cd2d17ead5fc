"""Accuracy of the published CIFAR ResNet weights on the 10,000 JPEG test images.

Command (from the repository root):
    python benchmarks/pretrained_accuracy.py --data ../shared/data/cifar10 --models resnet20 resnet56

Writes benchmarks/results/pretrained_accuracy.json and compares with ../shared/data/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from filterprune.models import PRETRAINED
from filterprune.utils.env import environment
from filterprune.workflows.info import evaluate_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet32", "resnet44", "resnet56"])
    ap.add_argument("--out", default="benchmarks/results/pretrained_accuracy.json")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        r = evaluate_model(name, "auto", args.data, split="test")
        expected = PRETRAINED[name].top1_jpeg
        rows.append({"model": name, "test_acc": round(r["acc"], 2), "n": r["n"], "expected_jpeg_acc": expected,
                     "diff": round(r["acc"] - expected, 2), "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{name}: {r['acc']:.2f}% on {r['n']} JPEG test images (data README: {expected:.2f})")
    Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "results": rows,
                                          "env": environment()}, indent=2))
    return 0 if all(abs(r["diff"]) <= 0.5 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
