"""Kill real ``filterprune`` processes (SIGKILL from outside), ``--resume`` them, and compare the final
weights and metrics with uninterrupted runs of the same flags.

* ``train``: killed mid-epoch (after its fifth checkpoint); writes benchmarks/results/kill_resume.json.
* ``prune`` (``--prune``): a base convnet_small trained on digits, then three methods, each killed once
  while its run state says a given stage is running: CAR during scoring (``step1.score``), PLS+VIP during
  its second iteration (``iter2.score``) and C-SGD during centripetal training (after the first epoch's
  checkpoint, in the second epoch). Weights are compared by the sha256 of their tensors (names, dtypes,
  shapes, bytes: ``filterprune.utils.io.tensors_sha256``; not of the file, whose safetensors header lists
  its metadata keys in a per-process order). Writes benchmarks/results/kill_resume_prune.json.

Commands (from the repository root):
    python benchmarks/kill_resume.py            # train
    python benchmarks/kill_resume.py --prune    # prune: CAR, PLS+VIP, C-SGD
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
    if "--prune" in sys.argv[1:]:
        return main_prune()
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


BASE = ["--model", "convnet_small", "--data", "digits", "--epochs", "6", "--batch-size", "64", "--lr", "0.05",
        "--device", "cpu"]
PRUNE = ["--data", "digits", "--finetune-device", "cpu", "--finetune-batch-size", "64", "--allocation", "global"]
METHODS = {
    "car": (["--criterion", "car", "--criterion-options", "eval_images=500", "--target-macs", "0.5",
             "--finetune-epochs", "2"], "step1.score", None),
    "pls-vip": (["--criterion", "pls-vip", "--criterion-options", "n_components=2", "--target-macs", "0.5",
                 "--step-ratio", "0.2", "--step-finetune-epochs", "1", "--finetune-epochs", "2"], "iter2.score", None),
    "csgd": (["--criterion", "csgd", "--criterion-options", "centripetal=49.9995,vector_ratio=1.0", "--target-macs",
              "0.5", "--finetune-epochs", "4", "--finetune-momentum", "0", "--finetune-batch-size", "32"],
             "csgd.centripetal", "centripetal/checkpoints/epoch_000.safetensors"),
}


def cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "filterprune", "-q", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ)


def running(out: Path) -> str:
    try:
        return json.loads((out / "run_state.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return ""


def facts(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    keep = {k: s[k] for k in ("base", "pruned", "finetuned", "macs", "params", "finetune_epochs")}
    keep["report_max_error"] = s["report"]["max_error"]
    keep["iterations"] = [{k: v for k, v in it.items() if k != "score_seconds"} for it in s.get("iterations", [])]
    return keep


def main_prune() -> int:
    from filterprune.utils.io import tensors_sha256

    root = Path(tempfile.mkdtemp(prefix="kill-resume-prune-"))
    assert cli("train", *BASE, "--out", str(root / "base")).wait() == 0
    weights = str(root / "base" / "model.safetensors")
    rows = {}
    for name, (flags, stage, after_file) in METHODS.items():
        argv = ["prune", "--weights", weights, *PRUNE, *flags]
        full, killed = root / f"{name}-full", root / f"{name}-killed"
        t0 = time.perf_counter()
        assert cli(*argv, "--out", str(full)).wait() == 0
        seconds = time.perf_counter() - t0
        proc = cli(*argv, "--out", str(killed))
        while running(killed) != f"running {stage}" or (after_file and not (killed / after_file).exists()):
            assert proc.poll() is None, f"{name}: finished before the kill"
            time.sleep(0.01)
        time.sleep(0.3)  # into the stage (C-SGD: into its second epoch)
        status = running(killed)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        state = json.loads((killed / "run_state.json").read_text())
        done = [s["name"] for s in state["stages"] if s.get("done")]
        ckpts = sorted(p.name for p in (killed / "centripetal" / "checkpoints").glob("*")) if name == "csgd" else None
        resumed = cli(*argv, "--resume", "--out", str(killed))
        assert resumed.wait() == 0, resumed.stderr.read()
        a = tensors_sha256(read_checkpoint(full / "model.safetensors")[0])
        b = tensors_sha256(read_checkpoint(killed / "model.safetensors")[0])
        rows[name] = {
            "command": " ".join(["filterprune", *argv, "--out", "DIR"]).replace(weights, "BASE/model.safetensors"),
            "killed_with": "SIGKILL", "exit_status_at_kill": rc, "run_state_at_kill": status,
            "stages_done_at_kill": done,
            "centripetal_checkpoints_at_kill": ckpts,
            "uninterrupted_seconds": round(seconds, 1),
            "weights_sha256": {"uninterrupted": a, "killed_and_resumed": b},
            "identical_weights": a == b,
            "identical_summary": facts(full) == facts(killed),
            "finetuned": facts(killed)["finetuned"], "macs_removed_fraction": facts(killed)["macs"]["removed_fraction"],
        }
        print(name, json.dumps(rows[name], indent=1), flush=True)
    result = {"command": "python benchmarks/kill_resume.py --prune", "base_train_args": BASE, "prune_args": PRUNE,
              "methods": rows}
    Path("benchmarks/results/kill_resume_prune.json").write_text(json.dumps(result, indent=2) + "\n")
    ok = all(r["identical_weights"] and r["identical_summary"] for r in rows.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
