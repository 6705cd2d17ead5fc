"""C-SGD "train wider, then squeeze" on CPU: ResNet-20 x1.5 trained from scratch with centripetal SGD
towards the ResNet-20 widths and trimmed to exactly ResNet-20, against a plain ResNet-20 trained from
scratch with the same (short) schedule, on the CIFAR-10 JPEG copy.

Command (from the repository root):
    PYTHONPATH=src python benchmarks/csgd_squeeze.py --epochs 5 --centripetal 0.05

Runs `filterprune train` twice (runs/csgd_squeeze/{plain,squeeze}); the table goes to
benchmarks/results/csgd_squeeze_resnet20.json (and .md). The squeezed model costs 2.25x the MACs of the
plain one during training; both end with the same architecture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from filterprune.config import TrainConfig
from filterprune.methods import predicted_decay


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--width-mult", type=float, default=1.5)
    ap.add_argument("--centripetal", type=float, default=0.05)
    ap.add_argument("--vector-ratio", type=float, default=1.0)
    ap.add_argument("--runs", default="runs/csgd_squeeze")
    ap.add_argument("--out", default="benchmarks/results/csgd_squeeze_resnet20")
    args = ap.parse_args(argv)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr)
    steps = 45000 // cfg.batch_size + (45000 % cfg.batch_size > 0)
    predicted = {"kernels": predicted_decay(cfg, steps, cfg.weight_decay + args.centripetal),
                 "vectors": predicted_decay(cfg, steps, args.vector_ratio * args.centripetal)}
    common = ["--model", "resnet20", "--data", args.data, "--epochs", str(args.epochs), "--lr", str(args.lr)]
    runs = {
        "plain": [*common, "--out", f"{args.runs}/plain"],
        "squeeze": [*common, "--width-mult", str(args.width_mult), "--csgd-squeeze-to", "1.0", "--csgd-options",
                    f"centripetal={args.centripetal},vector_ratio={args.vector_ratio}", "--out", f"{args.runs}/squeeze"],
    }
    rows = []
    for name, flags in runs.items():
        run_dir = Path(flags[-1])
        cmd = [sys.executable, "-m", "filterprune", "-q", "train", *flags]
        if not (run_dir / "summary.json").exists():
            subprocess.run(cmd, check=True)
        s = json.loads((run_dir / "summary.json").read_text())
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows.append({
            "run": name, "command": " ".join(["filterprune", *cmd[3:]]),
            "val_acc": s["val_acc"], "test_acc": s.get("test_acc"),
            "train_time_s": sum(r["epoch_time_s"] for r in metrics),
            "csgd": s.get("csgd"),
        })
    result = {"protocol": __doc__.split("\n\n")[0], "schedule": {"epochs": args.epochs, "lr": args.lr,
              "recipe": "SGD nesterov 0.9, cosine, batch 128, wd 5e-4"},
              "predicted_deviation_factor": predicted, "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = ["| run | val | test | train time | trim logit diff |", "|---|---|---|---|---|"]
    for r in rows:
        diff = r["csgd"]["trim_logit_diff"] if r["csgd"] else None
        lines.append(f"| {r['run']} | {r['val_acc']:.2f} | {r['test_acc']:.2f} | {r['train_time_s'] / 60:.0f} min "
                     f"| {'-' if diff is None else f'{diff:.2g}'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
