"""The CAR paper's interpretability statistic on a model's first two convs (VGG-16-BN by default).

Abbasi-Asl & Yu (arXiv 1705.07356 / 1711.02329): of the 20 filters CAR prunes first, 17 in AlexNet's
conv1 and 14 in its conv2 are colour-selective rather than shape-selective. Here, for each layer
(``features.0`` and ``features.3`` of VGG-16-BN, 64 filters each), :func:`filterprune.interpret.study_layer`
measures every filter's CAR and class-wise CAR on ``--images`` training images (seeded sample, no
augmentation), its colour-selectivity index and its L1 norm, and counts the colour-selective filters
among the k lowest by CAR, by L1 and in ``--draws`` random k-subsets (mean, one-sided p-value; exact
hypergeometric tail next to it). Colour rules (``filterprune/interpret/colour.py``):

* first conv (it reads the image): ``||W_p - mean_c W_p||^2 / ||W_p||^2`` with ``W_p[c] = W[c] / std[c]``
  (issue 16's definition), colour-selective when >= 0.5;
* second conv: ``1 - R_grey / R_colour``, R = mean rectified activation (the BatchNorm's output after the
  conv) on the greyscale vs the colour versions of the same images (Rafegas & Vanrell 2018),
  colour-selective when >= 0.5.

"The 20 filters CAR prunes first" can be read two ways; both are reported: the k lowest single-filter
CAR (``statistic``), and, when ``--layer-table`` names the layer-table results of the same weights
(``benchmarks/car_paper_layer.py --preset vgg16``), the first k filters greedy CAR removed one per step
(``greedy_car``).

Writes ``--out`` (JSON: the first layer's record at the top level, keys ``weights``, ``layer``,
``input_std``, ``filters`` (``index``, ``car``, ``colour_index``... per filter), ``statistic``; the second
layer's record under ``second_conv``; the comparison with the paper under ``table``), a markdown report
next to it (``.md``) and one PNG grid per layer (``<out stem>_<layer>.png``: first-layer kernels in pixel
space, second-layer strongest-response patches; lowest CAR first, colour-selective titles in red).

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/interpretability.py --weights W

Cost: CAR evaluates one network per filter on ``--images`` images (64 x 500 per layer: ~32,000 image
forwards of VGG-16 at ~57 images/s per CPU thread in float32, ~110 with ``--bf16``: about 10 minutes
for both layers on one thread with ``--bf16``, 6 on two); the responses, patches and draws take seconds.
``--greedy-only`` re-reads ``--out`` and adds the greedy count from ``--layer-table`` without running
the model (run it after ``car_paper_layer.py --preset vgg16``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import torch
from _command import command_line

from filterprune.api import load
from filterprune.data import BatchLoader, load_data
from filterprune.interpret import study_layer, subset_statistic
from filterprune.interpret.workflow import draw_filters

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
PAPER = ({"paper_layer": "AlexNet conv1", "paper_count": 17, "paper_k": 20},
         {"paper_layer": "AlexNet conv2", "paper_count": 14, "paper_k": 20})


def relative(path: str | Path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def greedy_order(table_path: str | None, weights: str, layer: str) -> list[int] | None:
    """The removal order of greedy CAR for ``layer`` in a ``car_paper_layer.py`` result of the same weights."""
    if not table_path or not Path(table_path).is_file():
        return None
    table = json.loads(Path(table_path).read_text())
    if (ROOT / table.get("weights", "")).resolve() != Path(weights).resolve():
        print(f"note: {table_path} is for {table.get('weights')}, not {weights}: greedy order not used")
        return None
    run = next((r for r in table["runs"] if r["layer"] == layer and r["method"] == "car"), None)
    return None if run is None or table.get("k", 1) != 1 else run["removal_order"]


def table_row(rec: dict, paper: dict) -> dict:
    """One line of the comparison with the paper."""
    s = rec["statistic"]
    row = {"layer": rec["layer"], "filters": s["filters"], "colour_selective": s["colour_selective"], "k": s["k"],
           "car_count": s["car_count"], "l1_count": s["l1_count"], "random_mean": s["random_mean"],
           "random_std": s["random_std"], "p_value": s["p_value"], "p_value_exact": s["p_value_exact"], **paper}
    if "greedy_car" in rec:
        row["greedy_car_count"] = rec["greedy_car"]["count"]
        row["greedy_p_value_exact"] = rec["greedy_car"]["p_value_exact"]
    return row


def markdown(result: dict) -> str:
    """The report: the statistic next to the paper's, and the grids."""
    lines = [f"# Colour-selective filters among the first pruned (`{result['weights']}`)", "",
             f"CAR on {result['eval_images']} training images; random: {result['draws']} k-subsets; "
             "p: one-sided, Monte Carlo (exact hypergeometric). Paper: Abbasi-Asl & Yu, arXiv 1705.07356.", "",
             "| layer | colour-selective / filters | k | lowest CAR | greedy CAR (first k removed) | lowest L1 | "
             "random mean +- std | p (CAR) | paper |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["table"]:
        greedy = f"{r['greedy_car_count']}" if "greedy_car_count" in r else "-"
        lines.append(f"| {r['layer']} | {r['colour_selective']} / {r['filters']} | {r['k']} | **{r['car_count']}** | "
                     f"{greedy} | {r['l1_count']} | {r['random_mean']:.2f} +- {r['random_std']:.2f} | "
                     f"{r['p_value']:.3g} ({r['p_value_exact']:.3g}) | {r['paper_count']}/{r['paper_k']} "
                     f"({r['paper_layer']}) |")
    for rec in [result] + ([result["second_conv"]] if "second_conv" in result else []):
        lines += ["", f"## `{rec['layer']}` (colour rule: {rec['rule']})", "", f"![{rec['layer']}]({Path(rec['figure']).name})"]
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "benchmarks/weights/vgg16_bn_cifar10jpeg.safetensors"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--layers", nargs="+", default=["features.0", "features.3"], help="one or two conv layers")
    p.add_argument("--images", type=int, default=500, help="training images for CAR and the responses")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for CAR's evaluations and the responses")
    p.add_argument("--layer-table", default=str(RESULTS / "car_paper_layer_vgg16.json"),
                   help="car_paper_layer.py results of the same weights: adds the greedy order's count")
    p.add_argument("--out", default=str(RESULTS / "interpretability_vgg16.json"))
    p.add_argument("--greedy-only", action="store_true",
                   help="only add the greedy order's count (--layer-table) to an existing --out; no model run")
    args = p.parse_args(argv)
    if not 1 <= len(args.layers) <= 2:
        p.error("--layers takes one or two layers (the first and second conv)")
    return args


def add_greedy(rec: dict, table_path: str | None, draws: int, seed: int, k: int) -> dict:
    """Add ``greedy_car`` to a layer record when ``table_path`` holds greedy CAR's order for its weights."""
    order = greedy_order(table_path, str(ROOT / rec["weights"]), rec["layer"])
    if order is not None:
        selective = torch.tensor([f["colour_selective"] for f in rec["filters"]])
        rec["greedy_car"] = {"filters": order[:k], "source": relative(table_path),
                             **subset_statistic(order[:k], selective, draws, seed)}
    return rec


def update_greedy(args: argparse.Namespace) -> dict:
    """``--greedy-only``: recount an existing result with the layer table's greedy order; no model is run."""
    out = Path(args.out)
    result = json.loads(out.read_text())
    records = [result] + ([result["second_conv"]] if "second_conv" in result else [])
    for rec in records:
        add_greedy(rec, args.layer_table, result["draws"], args.seed, rec["statistic"]["k"])
    result["table"] = [table_row(r, PAPER[min(i, 1)]) for i, r in enumerate(records)]
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.greedy_only:
        return update_greedy(args)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    model = load(args.weights).eval().to(device)
    ds = load_data(args.data).train
    if ds.in_chans != 3:
        raise SystemExit(f"{args.data} has {ds.in_chans} channel(s); the colour study needs RGB images")
    batches = [(x.to(device), y.to(device)) for x, y in BatchLoader(ds.sample(args.images, args.seed), 250, train=False)]
    out = Path(args.out)
    records = []
    for layer in args.layers:
        t = time.perf_counter()
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with amp:
            study = study_layer(model, layer, batches, mean=ds.mean, std=ds.std, class_names=ds.classes, k=args.k,
                                draws=args.draws, seed=args.seed)
        figure = out.with_name(f"{out.stem}_{layer}.png")
        draw_filters(model, study, batches, ds.mean, ds.std, figure)
        rec = {"weights": relative(args.weights), **dataclasses.asdict(study), "figure": relative(figure),
               "seconds": time.perf_counter() - t}
        records.append(add_greedy(rec, args.layer_table, args.draws, args.seed, study.statistic["k"]))
        s = study.statistic
        print(f"{layer}: {s['colour_selective']}/{s['filters']} colour-selective; of the {s['k']} lowest CAR "
              f"{s['car_count']}, lowest L1 {s['l1_count']}, random {s['random_mean']:.2f} (p {s['p_value']:.3g}); "
              f"{rec['seconds']:.0f} s", flush=True)
    flags = {**vars(args), "weights": relative(args.weights)}
    result = {**records[0],
              **({"second_conv": records[1]} if len(records) > 1 else {}),
              "layers": args.layers, "data": "CIFAR-10 JPEG copy (training split)" if "cifar10" in args.data else args.data,
              "draws": args.draws, "device": str(device), "bf16": args.bf16,
              "table": [table_row(r, PAPER[min(i, 1)]) for i, r in enumerate(records)],
              "command": command_line("PYTHONPATH=src python benchmarks/interpretability.py", flags,
                                      skip=("data", "out", "layer_table")),
              "wall_seconds": time.perf_counter() - t0}
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}, {out.with_suffix('.md')} and the grids")
    return result


if __name__ == "__main__":
    main()
