"""The CAR paper's layer experiment: remove half the filters of one layer by greedy CAR, L1 and at random.

Abbasi-Asl & Yu (arXiv 1705.07356) prune half the filters of AlexNet's conv1 or conv2 greedily by CAR
(one filter per step) and compare with other criteria: after retraining, CAR is 26 (conv1) and 20
(conv2) accuracy points above the best baseline. Here, for each layer of a preset:

* ``--preset resnet20`` (the CIFAR-10 ResNet-20 base): ``conv1``, the stem, tied by residual adds to
  every block output of stage 1 (removing stem channel c removes channel c of the whole first-stage
  stream), and ``layer1.0.conv1`` (16 filters, consumed by ``layer1.0.conv2``);
* ``--preset vgg16`` (VGG-16-BN trained on the CIFAR-10 JPEG copy): its first two convs,
  ``features.0`` and ``features.3``, 64 filters each (AlexNet's conv1 has 96, conv2 256).

Half of the layer's filters are removed by greedy CAR (``--k`` filters per step, 1 = the paper; the
evaluation set is ``--eval-images`` training images, seeded, no augmentation, fixed for every step; the
input of the layer's consumers is computed once and every candidate replays only the rest of the
network: ``criteria/car_greedy.py``), by L1 norm (lowest removed) and at random (``--random-seeds``
draws). Each pruned net is evaluated on the validation split (``--val-images``, 0 = all) and the test
split right after removal and after a short fine-tune (the prune workflow's recipe: SGD Nesterov, lr
0.01 cosine, batch 128, wd 5e-4) of ``--finetune-epochs`` passes over ``--finetune-images`` training
images (0 = all 45k). Nothing is chosen on the test split.

``--bf16``: CAR's evaluations run under bfloat16 autocast (forwards on a CPU with AMX about 2x faster
for VGG-16), and on a GPU the fine-tune too (the loop's own amp); the reported accuracies are always
evaluated in float32. ``--device cuda`` runs everything on a GPU.

Writes the JSON (``--out``) and a markdown table next to it (same name, ``.md``): accuracies per method
and the CAR minus best-baseline gaps next to the paper's 26 / 20 points.

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/car_paper_layer.py --preset resnet20
    PYTHONPATH=src python benchmarks/car_paper_layer.py --preset vgg16 --weights W --bf16

Cost (VGG-16-BN; measured on this machine's Xeon with AMX, one thread): a VGG-16 forward is 0.31 GMACs
per 32x32 image, ~57 images/s in float32 and ~110 in bf16; a training step of 128 images ~5.8 s.
Greedy CAR evaluates 64 + 63 + ... + 33 = 1,552 candidate networks (plus one base per step) per layer,
each on ``--eval-images`` images: 2 layers x 1,584 x 256 images = 811k image forwards (~2 h in bf16 on
one thread, about 70 min on two); ten fine-tunes of 10,000 images ~45 min on two threads; the accuracies
(21 evaluations of 2,000 + 2,000 images) ~15 min. ``--eval-images 128 --finetune-images 5000`` halves
the first two. On a GPU (``--device cuda``) the whole table takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from _command import command_line

from filterprune.api import load
from filterprune.config import PruneRunConfig
from filterprune.criteria import ScoringContext, create_criterion
from filterprune.criteria.car_greedy import car_prune_layer, find_group
from filterprune.data import BatchLoader, load_data
from filterprune.graph import PrunePlan
from filterprune.graph.check import apply_plan_checked
from filterprune.graph.trace import trace_groups
from filterprune.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
PAPER = ("AlexNet conv1: CAR 26 points above the best baseline", "AlexNet conv2: CAR 20 points above the best baseline")
PAPER_GAP = (26.0, 20.0)
PRESETS = {
    "resnet20": {"weights": ROOT / "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors",
                 "layers": ["conv1", "layer1.0.conv1"], "eval_images": 1000, "random_seeds": 2,
                 "finetune_images": 0, "val_images": 0, "test_images": 0,
                 "out": RESULTS / "car_paper_layer_resnet20.json"},
    "vgg16": {"weights": ROOT / "benchmarks/weights/vgg16_bn_cifar10jpeg.safetensors",
              "layers": ["features.0", "features.3"], "eval_images": 256, "random_seeds": 3,
              "finetune_images": 10000, "val_images": 2000, "test_images": 2000,
              "out": RESULTS / "car_paper_layer_vgg16.json"},
}


def subset_loader(ds, n: int, batch: int, seed: int, train: bool) -> BatchLoader:
    return BatchLoader(ds.sample(n, seed), batch, train=train, seed=seed)


def autocast(device: torch.device, on: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``on`` (CAR's evaluations only)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def plan_by(method: str, model, x, layer: str, n_remove: int, eval_batches, args, seed: int = 0):
    """The channels to remove, and a record of how they were chosen."""
    groups = trace_groups(model, x)
    group = find_group(groups, layer)
    if method == "car":
        t = time.perf_counter()
        with autocast(x.device, args.bf16):
            res = car_prune_layer(model, x, eval_batches, layer, n_remove, k=args.k, apply=False,
                                  max_rows=args.max_rows)
        return res.plan, {"order": res.removed, "history": res.history, "car_seconds": time.perf_counter() - t}
    if method == "l1":
        s = create_criterion("l1").score(ScoringContext(model, x, groups))[group.id]
        chans = s.argsort()[:n_remove].tolist()
    else:
        chans = torch.randperm(group.size, generator=torch.Generator().manual_seed(seed))[:n_remove].tolist()
    return PrunePlan({group.id: sorted(chans)}), {"order": chans}


def layer_summary(runs: list[dict], layer: str, paper: str, paper_gap: float) -> dict:
    """Per layer: each method's accuracies (random: mean of its draws) and CAR minus the best baseline
    (the better of L1 and the random mean), next to the paper's gap."""
    out: dict = {"layer": layer, "paper": paper, "paper_gap_points": paper_gap}
    for key in ("val_acc_pruned", "val_acc_finetuned", "test_acc_pruned", "test_acc_finetuned"):
        mine = [r for r in runs if r["layer"] == layer]
        car = next(r[key] for r in mine if r["method"] == "car")
        l1 = next(r[key] for r in mine if r["method"] == "l1")
        rnd = [r[key] for r in mine if r["method"] == "random"]
        rnd_mean = statistics.fmean(rnd) if rnd else float("nan")
        out[key] = {"car": car, "l1": l1, "random_mean": rnd_mean, "random": rnd,
                    "car_minus_best_baseline": car - max(l1, rnd_mean) if rnd else car - l1}
    return out


def markdown(result: dict) -> str:
    """The layer table: accuracies after removal / after the fine-tune, and CAR's gap next to the paper's."""
    lines = [f"# {result['experiment']}", "",
             f"Base: val {result['base_val_acc']:.2f}, test {result['base_test_acc']:.2f} "
             f"(`{result['weights']}`). CAR: greedy, {result['k']} filter(s) per step, "
             f"{result['eval_images']} training images. Fine-tune: {result['finetune']['epochs']} epoch(s) on "
             f"{result['finetune']['images']} training images. Random: mean of {result['random_seeds']} draws. "
             f"Accuracies on {result['val_images']} validation and {result['test_images']} test images "
             "(seeded samples); best baseline: the better of L1 and the random mean.", "",
             "| layer | split | CAR | L1 | random (mean) | CAR - best baseline | paper (AlexNet) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for s in result["summary"]:
        for key, label in (("val_acc_pruned", "val, after removal"), ("val_acc_finetuned", "val, fine-tuned"),
                           ("test_acc_pruned", "test, after removal"), ("test_acc_finetuned", "test, fine-tuned")):
            v = s[key]
            paper = f"+{s['paper_gap_points']:.0f} after retraining" if key.endswith("finetuned") else ""
            lines.append(f"| {s['layer']} | {label} | {v['car']:.2f} | {v['l1']:.2f} | {v['random_mean']:.2f} | "
                         f"{v['car_minus_best_baseline']:+.2f} | {paper} |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="resnet20",
                   help="model and layers; sets the defaults of the flags below")
    p.add_argument("--weights")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--layers", nargs="+")
    p.add_argument("--eval-images", type=int, help="training images CAR is measured on (fixed for every step)")
    p.add_argument("--k", type=int, default=1, help="filters removed per greedy step (1: the paper)")
    p.add_argument("--remove", type=int, help="filters removed per layer (default: half; fewer for a quick try)")
    p.add_argument("--random-seeds", type=int)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-images", type=int, help="0: the whole training split")
    p.add_argument("--val-images", type=int, help="seeded sample of the validation split; 0: all of it")
    p.add_argument("--test-images", type=int, help="seeded sample of the test split; 0: all of it")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for CAR's evaluations (and a GPU fine-tune)")
    p.add_argument("--max-rows", type=int, default=1024, help="images per batched CAR forward (memory)")
    p.add_argument("--out")
    p.add_argument("--reuse", help="an earlier result of the same weights and evaluation: its runs are copied "
                                    "instead of run, except for the methods of --rerun")
    p.add_argument("--rerun", nargs="+", default=["car"], help="methods run again despite --reuse (default: car)")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, str(value) if isinstance(value, Path) else value)
    return args


def reused_runs(args, base_val: float, base_test: float) -> dict[tuple, dict]:
    """``--reuse``: the earlier result's runs by ``(layer, method, seed)``, minus the ``--rerun`` methods;
    refused (SystemExit) when that result used other weights, base accuracies or evaluation images."""
    if not args.reuse:
        return {}
    old = json.loads(Path(args.reuse).read_text())
    same = {"base_val_acc": base_val, "base_test_acc": base_test, "eval_images": args.eval_images,
            "random_seeds": args.random_seeds}
    bad = [k for k, v in same.items() if old.get(k) != v]
    if Path(old["weights"]).name != Path(args.weights).name or bad:
        raise SystemExit(f"--reuse {args.reuse}: another setting ({', '.join(bad) or 'weights'}); run without --reuse")
    return {(r["layer"], r["method"], r["seed"]): r for r in old["runs"] if r["method"] not in args.rerun}


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    device = torch.device(args.device)
    base = load(args.weights).eval().to(device)
    splits = load_data(args.data)
    x = torch.zeros(2, *splits.train.images.shape[1:], device=device)
    eval_batches = [(a.to(device), b.to(device))
                    for a, b in subset_loader(splits.train, args.eval_images, 500, 0, train=False)]
    val = subset_loader(splits.val, args.val_images or len(splits.val), 500, 0, train=False)
    test = subset_loader(splits.test, args.test_images or len(splits.test), 500, 0, train=False)
    ft_cfg = replace(PruneRunConfig().finetune, epochs=args.finetune_epochs, device=str(device),
                     amp="bf16" if args.bf16 else "off")
    n_ft = args.finetune_images or len(splits.train)
    ft_loader = subset_loader(splits.train, n_ft, ft_cfg.batch_size, 1, train=True)
    base_acc, base_test = evaluate(base, val, device)["acc"], evaluate(base, test, device)["acc"]
    print(f"base val acc {base_acc:.2f}, test acc {base_test:.2f}", flush=True)
    reusable = reused_runs(args, base_acc, base_test)
    runs = []
    for layer in args.layers:
        size = find_group(trace_groups(base, x), layer).size
        methods = [("car", 0), ("l1", 0)] + [("random", s) for s in range(args.random_seeds)]
        for method, seed in methods:
            if (layer, method, seed) in reusable:
                runs.append({**reusable[(layer, method, seed)], "reused_from": args.reuse})
                continue
            model = copy.deepcopy(base)
            plan, how = plan_by(method, model, x, layer, args.remove or size // 2, eval_batches, args, seed)
            apply_plan_checked(model, trace_groups(model, x), plan, x)
            pruned, pruned_test = evaluate(model, val, device), evaluate(model, test, device)
            t = time.perf_counter()
            fit(model, ft_loader, None, ft_cfg)  # float32 on a CPU (bf16 training is no faster there)
            tuned, tuned_test = evaluate(model, val, device), evaluate(model, test, device)
            rec = {"layer": layer, "method": method, "seed": seed, "removed": next(iter(plan.prune_idxs.values())),
                   "val_acc_pruned": pruned["acc"], "val_acc_finetuned": tuned["acc"],
                   "test_acc_pruned": pruned_test["acc"], "test_acc_finetuned": tuned_test["acc"],
                   "finetune_seconds": time.perf_counter() - t, **{k: v for k, v in how.items() if k != "order"},
                   "removal_order": how["order"]}
            runs.append(rec)
            print(json.dumps({k: rec.get(k) for k in ("layer", "method", "seed", "val_acc_pruned", "val_acc_finetuned",
                                                       "test_acc_pruned", "test_acc_finetuned", "car_seconds",
                                                       "finetune_seconds")}), flush=True)
    out = {
        "experiment": f"half the filters of one {args.preset} layer removed by CAR (greedy), L1 and random",
        "command": command_line(f"PYTHONPATH=src python benchmarks/car_paper_layer.py --preset {args.preset}",
                                vars(args), skip=("data", "out", "preset")),
        "weights": str(Path(args.weights).resolve().relative_to(ROOT)) if Path(args.weights).resolve().is_relative_to(ROOT)
        else str(args.weights),
        "device": str(device), "bf16": args.bf16, "threads": torch.get_num_threads(),
        "base_val_acc": base_acc, "base_test_acc": base_test, "val_images": args.val_images or len(splits.val),
        "test_images": args.test_images or len(splits.test),
        "eval_images": args.eval_images, "k": args.k, "random_seeds": args.random_seeds,
        "finetune": {"epochs": args.finetune_epochs, "images": n_ft, "lr": ft_cfg.lr, "batch_size": ft_cfg.batch_size,
                     "schedule": ft_cfg.schedule, "weight_decay": ft_cfg.weight_decay},
        "summary": [layer_summary(runs, layer, PAPER[min(i, 1)], PAPER_GAP[min(i, 1)])
                    for i, layer in enumerate(args.layers)],
        "runs": runs,
        "wall_seconds": time.perf_counter() - t_start,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return out


if __name__ == "__main__":
    main()
