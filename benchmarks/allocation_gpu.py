"""The standard comparison with per-layer allocation on a GPU (issue #15): ResNet-56, three fine-tune seeds,
a longer budget, many ``filterprune prune`` runs on the one GPU at once.

One command does it all, in three parts:

1. the base: the published CIFAR ResNet-56 fine-tuned on the JPEG copy (``filterprune train``, the
   ResNet-20 base's recipe: 5 epochs, lr 0.02 cosine with 0.5 warm-up epochs, bf16 autocast);
2. the rows ``criterion:allocation:seed``: ``filterprune prune --target-macs 0.5 --allocation A`` with
   ``--finetune-epochs E --finetune-seed S`` of one recipe (batch 256, lr 0.02 cosine: the CPU recipe's
   lr per image; C-SGD spends the epochs in centripetal training), up to ``--parallel`` runs at a time.
   A ResNet-56 step at batch 256 is bound by kernel launches, not by the GPU, so runs side by side
   share the GPU well. Rows start in the order given (seed 0 of every row first); a run not finished
   by ``--deadline-s`` is stopped (SIGTERM: its folder records the stage and resumes with ``--resume``);
3. the latency of the base and of every finished seed-0 row, measured side by side on the GPU with
   nothing else running (:func:`filterprune.metrics.measure_side_by_side`: interleaved rounds, the
   median of per-round ratios), at batch 1 and ``--latency-batch``.

C-SGD's centripetal strength is chosen for the budget: the smallest of ``--csgd-eps`` whose predicted
deviation (:func:`filterprune.methods.predicted_decay`) after the budget is at most 1e-4 (a 10x margin
under the trim's 1e-3) with ``vector_ratio=1.0``; the smallest that reaches 1e-3 is recorded too, and the official CIFAR setting (3e-3, vectors at 0.1 eps) and its predicted deviation
is recorded beside them.

Command (from the repository root, on the GPU machine; paths to a copy of ``../shared/data``)::

    python benchmarks/allocation_gpu.py --data DATA/cifar10 --pretrained DATA/pretrained/resnet56-4bfd9763.th \\
        --runs runs/gpu56 --out benchmarks/results/allocation_comparison_resnet56 --epochs 15 --parallel 12 --deadline-s 470

Writes ``<out>.json`` (the rows as ``allocation_comparison.py`` writes them, plus ``failed``, ``stopped``,
``latency`` and ``csgd_eps``), ``<out>.md`` and ``<out>_widths.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from allocation_comparison import csgd_eps, markdown, parse_row, plot_widths, row_of

CRITERIA = ("l1", "random", "car", "pls-vip", "csgd")
ALLOCATIONS = ("global", "sensitivity")


def default_rows(seeds: int) -> list[tuple[str, str, int]]:
    """Seed 0 of every criterion x allocation first; then, per further seed, L1-global (the noise floor)
    and every criterion with sensitivity allocation (the best allocation per criterion on ResNet-20,
    ``allocation_comparison_resnet20.json``)."""
    rows = [(c, a, 0) for c in CRITERIA for a in ALLOCATIONS]
    return rows + [r for s in range(1, seeds) for r in [("l1", "global", s), *((c, "sensitivity", s) for c in CRITERIA)]]


def prune_command(args, weights: Path, crit: str, alloc: str, seed: int, run_dir: Path, eps: dict) -> list[str]:
    options = {"car": args.car_options,
               "csgd": f"centripetal={eps['eps']},vector_ratio={eps['vector_ratio']}"}.get(crit)
    return [sys.executable, "-m", "filterprune", "-q", "prune", "--weights", str(weights), "--data", args.data,
            "--criterion", crit, "--target-macs", "0.5", "--allocation", alloc,
            "--finetune-epochs", str(args.epochs), "--finetune-seed", str(seed),
            "--finetune-batch-size", str(args.batch_size), "--finetune-lr", str(args.lr),
            "--finetune-device", args.device, "--out", str(run_dir),
            *(["--criterion-options", options] if options else []), *args.extra]


def base_command(args, out: Path) -> list[str]:
    return [sys.executable, "-m", "filterprune", "-q", "train", "--model", args.model, "--pretrained", args.pretrained,
            "--data", args.data, "--epochs", str(args.base_epochs), "--lr", "0.02", "--warmup-epochs", "0.5",
            "--schedule", "cosine", "--amp", "bf16", "--device", args.device, "--out", str(out)]


def latency(args, base: Path, rows: list[dict]) -> dict:
    """Base and seed-0 rows timed side by side on ``args.device`` (fp32, eval mode), batch 1 and
    ``--latency-batch``; ``reduction`` is 1 - the median per-round time ratio to the base."""
    import torch

    from filterprune.api import load
    from filterprune.metrics import measure_side_by_side
    from filterprune.utils.seed import pick_device

    dev = pick_device(args.device)
    models = {"base": load(base).to(dev).eval()}
    models.update({r["row"]: load(r["checkpoint"]).to(dev).eval() for r in rows if r["seed"] == 0})
    out = {}
    for bs in (1, args.latency_batch):
        x = torch.randn(bs, *args.input_shape, device=dev)
        r = measure_side_by_side(models, x, rounds=args.latency_rounds, repeats=20, warmup=5)
        out[str(bs)] = r
        print(f"latency b={bs}: " + ", ".join(f"{n} {m['median_ms']:.3f} ms ({m['reduction']:+.3f})"
                                             for n, m in r["models"].items()), flush=True)
    return out


class Table:
    """The results file, rewritten (atomically) after every finished, failed or stopped row."""

    def __init__(self, out: Path, doc: dict):
        self.out, self.doc = out, doc
        self.doc.setdefault("rows", [])
        self.doc.setdefault("failed", {})
        self.doc.setdefault("stopped", [])

    def add(self, row: dict) -> None:
        self.doc["rows"] = [r for r in self.doc["rows"] if r["row"] != row["row"]] + [row]
        self.write()

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2))
        tmp.replace(self.out.with_suffix(".json"))
        self.out.with_suffix(".md").write_text(markdown(self.doc["rows"]))
        if self.doc["rows"]:
            plot_widths(self.doc["rows"], self.out.parent / (self.out.name + "_widths.png"),
                        title=f"{self.doc.get('model', 'ResNet-56')} at -50% MACs: filters kept per layer")


def _tail(path: Path, n: int = 6) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrained", required=True, help="the published ResNet-56 checkpoint (a .th file)")
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--rows", nargs="+", type=parse_row, help="criterion:allocation:seed ... (default: all, 3 seeds)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", default="runs/gpu56")
    ap.add_argument("--out", default="benchmarks/results/allocation_comparison_resnet56")
    ap.add_argument("--base-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15, help="fine-tune epochs of every row")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parallel", type=int, default=12, help="runs at a time")
    ap.add_argument("--deadline-s", type=float, default=float("inf"), help="stop unfinished rows after this long")
    ap.add_argument("--latency-batch", type=int, default=256)
    ap.add_argument("--latency-rounds", type=int, default=9)
    ap.add_argument("--input-shape", type=int, nargs=3, default=[3, 32, 32], help="C H W of the latency input")
    ap.add_argument("--car-options", default="k=64,eval_images=1000")
    ap.add_argument("--csgd-eps", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.1])
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for every filterprune prune")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    eps = csgd_eps(args.epochs, args.batch_size, args.lr, args.csgd_eps)
    table = Table(out, {"model": args.model, "protocol": " ".join(__doc__.split("\n\n")[0:3]).replace("\n", " "),
                        "command": " ".join(["python benchmarks/allocation_gpu.py", *(argv or sys.argv[1:])]),
                        "csgd_eps": eps})

    base_dir = runs / "base"
    if not (base_dir / "summary.json").exists():
        cmd = base_command(args, base_dir) + (["--resume"] if base_dir.exists() else [])
        with open(runs / "base.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc:
            print(f"base training failed (exit {rc}):\n{_tail(runs / 'base.log', 20)}", file=sys.stderr)
            return 1
    base_summary = json.loads((base_dir / "summary.json").read_text())
    table.doc["base"] = {"command": " ".join(["filterprune", *base_command(args, base_dir)[3:]]),
                         **{k: base_summary.get(k) for k in ("val_acc", "test_acc", "val_acc_start", "epochs",
                                                             "epoch_time_s_median")}}
    table.write()
    print(f"base: val {base_summary.get('val_acc')} test {base_summary.get('test_acc')} "
          f"({time.monotonic() - t0:.0f} s)", flush=True)

    weights = base_dir / "model.safetensors"
    queue = list(args.rows or default_rows(args.seeds))
    running: dict[str, tuple[subprocess.Popen, tuple, list[str], float]] = {}
    while queue or running:
        while queue and len(running) < args.parallel and time.monotonic() - t0 < args.deadline_s:
            crit, alloc, seed = queue.pop(0)
            name = f"{crit}-{alloc}-s{seed}"
            run_dir = runs / name
            cmd = prune_command(args, weights, crit, alloc, seed, run_dir, eps)
            if (run_dir / "summary.json").exists():
                table.add(row_of(name, crit, alloc, seed, run_dir, cmd))
                continue
            log = open(runs / f"{name}.log", "a")  # noqa: SIM115 (closed with the process, below)
            proc = subprocess.Popen(cmd + (["--resume"] if run_dir.exists() else []), stdout=log,
                                    stderr=subprocess.STDOUT)
            log.close()
            running[name] = (proc, (crit, alloc, seed), cmd, time.monotonic())
        for name, (proc, (crit, alloc, seed), cmd, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            took = time.monotonic() - started
            if proc.returncode == 0:
                row = row_of(name, crit, alloc, seed, runs / name, cmd)
                row["wall_s"] = round(took, 1)
                table.add(row)
                print(f"{name}: test {row['finetuned_test']:.2f} ({took:.0f} s)", flush=True)
            else:
                table.doc["failed"][name] = {"exit": proc.returncode, "log_tail": _tail(runs / f"{name}.log")}
                table.write()
                print(f"{name}: FAILED (exit {proc.returncode})\n{_tail(runs / f'{name}.log')}", flush=True)
        if time.monotonic() - t0 >= args.deadline_s and running:
            procs = [proc for proc, *_ in running.values()]
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            grace = time.monotonic() + 30  # one grace period for all of them, then SIGKILL
            while any(p.poll() is None for p in procs) and time.monotonic() < grace:
                time.sleep(0.5)
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            table.doc["stopped"] = sorted(running) + [f"{c}-{a}-s{s}" for c, a, s in queue]
            running.clear()
            queue.clear()
            table.write()
            print(f"deadline: stopped {table.doc['stopped']}", flush=True)
        time.sleep(0.5)

    done = table.doc["rows"]
    if any(r["seed"] == 0 for r in done):
        table.doc["latency"] = latency(args, weights, done)
        table.write()
    print(markdown(done))
    print(f"total {time.monotonic() - t0:.0f} s; omp threads {os.environ.get('OMP_NUM_THREADS')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
