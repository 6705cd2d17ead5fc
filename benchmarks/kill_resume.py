"""Kill a real ``filterprune train`` process mid-epoch (SIGKILL), ``--resume`` it, and compare the final
metrics and weights with an uninterrupted run of the same config.

Command (from the repository root):
    python benchmarks/kill_resume.py

Writes benchmarks/results/kill_resume.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from filterprune.checkpoint import read_checkpoint

ARGS = ["--model", "convnet_small", "--data", "digits", "--epochs", "12", "--batch-size", "8", "--lr", "0.02",
        "--device", "cpu"]


def train(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "filterprune", "-q", "train", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)


def strip(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "train_images_per_s")} for r in rows]


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    full, killed = root / "full", root / "killed"
    assert train(full).wait() == 0

    proc = train(killed)
    ckpts = killed / "checkpoints"
    while not (ckpts / "epoch_004.safetensors").exists():
        time.sleep(0.01)
    time.sleep(0.1)  # part-way into the sixth epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in ckpts.glob("epoch_*.safetensors"))
    lines_at_kill = len((killed / "metrics.jsonl").read_text().splitlines())
    assert train(killed, "--resume").wait() == 0

    same_metrics = strip(full / "metrics.jsonl") == strip(killed / "metrics.jsonl")
    a, _ = read_checkpoint(full / "model.safetensors")
    b, _ = read_checkpoint(killed / "model.safetensors")
    same_weights = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    fs, ks = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    result = {
        "command": "python benchmarks/kill_resume.py",
        "train_args": ARGS,
        "killed_after_checkpoints": done,
        "metrics_lines_at_kill": lines_at_kill,
        "uninterrupted": {"val_acc": fs["val_acc"], "test_acc": fs["test_acc"]},
        "killed_and_resumed": {"val_acc": ks["val_acc"], "test_acc": ks["test_acc"]},
        "identical_metrics_jsonl": same_metrics,
        "identical_final_weights": same_weights,
    }
    Path("benchmarks/results/kill_resume.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if same_metrics and same_weights else 1


if __name__ == "__main__":
    sys.exit(main())
