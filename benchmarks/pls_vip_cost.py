"""Memory and wall time of PLS+VIP scoring on ResNet-56 / CIFAR-10: feature collection, then the PLS fit.

What is measured, for each N in --samples, in a fresh subprocess (so one run's memory cannot hide
another's): the pretrained ResNet-56 (``create_model("resnet56", pretrained=True)``), its traced
prunable groups and the ``pls-vip`` columns (pre-BN conv outputs, global max pooling); images are the
45k train + 5k val images of the CIFAR-10 JPEG copy, read in that order without augmentation by
batch-250 loaders, class-stratified to N (N = 50,000 is every image). Then, for ``--path``

* ``matrix`` (the path before the streamed statistics; rows without a "path" key):
  collection is ``collect_pooled`` (the forward passes and the hooks filling the one float32 N x F
  matrix); fit is ``pls2(n_components=2, overwrite_x=True)`` + ``vip`` on that matrix;
* ``stream`` (the criterion's path since): collection is ``iter_pooled`` batch by batch, each batch
  folded into ``CrossProducts`` (float64 means, XᵀX, XᵀY); fit is ``pls2_kernel`` + ``vip``;
* ``compare``: the matrix is collected once and both fits are run on it (the streamed statistics are
  folded from its rows in batches of 250): the largest VIP difference between the streamed kernel
  fit, the data-matrix fit on the same float32 features (the old criterion) and on them in float64;

each with wall time and peak RSS above the RSS just before the step.

Peak RSS is sampled every 5 ms from /proc/self/statm by a thread, because torch's CPU allocations do
not go through tracemalloc. The machine is a shared 2-core box on which other jobs ran at the same
time (with higher priority), so wall times are upper bounds; the CPU seconds of the process
(user + system, all threads: ``time.process_time``) are recorded next to them, and the 1-minute load
average before and after.

Commands (repository root), each adding its rows to benchmarks/results/pls_vip_cost_resnet56.json:
    python benchmarks/pls_vip_cost.py --path stream --samples 10000 50000
    python benchmarks/pls_vip_cost.py --path compare --samples 10000
    python benchmarks/pls_vip_cost.py --path matrix --samples 10000 50000   (the earlier rows)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path("benchmarks/results/pls_vip_cost_resnet56.json")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Highest RSS seen while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def child(samples: int, data_root: str, batch: int, path: str = "matrix") -> dict:
    import itertools

    import torch

    from filterprune.criteria._features import collect_pooled
    from filterprune.criteria._pls import pls2, vip
    from filterprune.criteria._pls_kernel import CrossProducts, pls2_kernel
    from filterprune.criteria.pls_vip import PLSVIP
    from filterprune.data import BatchLoader, load_data
    from filterprune.graph.trace import trace_groups
    from filterprune.models import create_model

    splits = load_data(data_root)
    model = create_model("resnet56", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    groups = [g for g in trace_groups(model, x) if g.prunable]
    crit = PLSVIP(samples=samples)
    blocks, _ = crit.columns(model, groups)
    loaders = [BatchLoader(ds, batch, train=False) for ds in (splits.train, splits.val)]
    load_before = os.getloadavg()[0]
    if path == "stream":
        return stream_child(model, loaders, blocks, samples, batch, load_before, len(groups))
    with PeakRSS() as mem_collect:
        t0, c0 = time.perf_counter(), time.process_time()
        feats, labels = collect_pooled(model, itertools.chain(*loaders), blocks, samples=samples, num_classes=10)
        t_collect, c_collect = time.perf_counter() - t0, time.process_time() - c0
    targets = torch.nn.functional.one_hot(labels, 10).double()
    extra = {}
    if path == "compare":
        stats = CrossProducts(feats.shape[1], 10)
        for i in range(0, len(feats), batch):
            stats.update(feats[i:i + batch], targets[i:i + batch])
        kernel = vip(pls2_kernel(stats, 2))
        exact = vip(pls2(feats.double(), targets, 2))
        extra = {"path": "compare",
                 "max_abs_vip_diff_stream_vs_matrix_float64": float((kernel - exact).abs().max()),
                 "max_abs_vip_diff_matrix_float32_vs_float64": float((vip(pls2(feats, targets, 2)) - exact).abs().max()),
                 "max_abs_vip_diff_stream_vs_matrix_float32": float((kernel - vip(pls2(feats, targets, 2))).abs().max()),
                 "vip_range": [float(exact.min()), float(exact.max())]}
    with PeakRSS() as mem_fit:
        t0, c0 = time.perf_counter(), time.process_time()
        scores = vip(pls2(feats, targets, 2, overwrite_x=True))
        t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    import resource

    return {
        **extra,
        "samples": int(feats.shape[0]),
        "features": int(feats.shape[1]),
        "prunable_groups": len(groups),
        "per_class": torch.bincount(labels, minlength=10).tolist(),
        "matrix_mb": feats.numel() * 4 / 2**20,
        "collect_seconds": t_collect,
        "collect_cpu_seconds": c_collect,
        "collect_images_per_second": feats.shape[0] / t_collect,
        "collect_peak_rss_delta_mb": mem_collect.delta_mb,
        "fit_seconds": t_fit,
        "fit_cpu_seconds": c_fit,
        "fit_peak_rss_delta_mb": mem_fit.delta_mb,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sum_vip_sq": float(scores.square().sum()),
        "batch_size": batch,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
    }


def stream_child(model, loaders, blocks, samples, batch, load_before, n_groups) -> dict:
    import itertools
    import resource

    import torch
    import torch.nn.functional as F

    from filterprune.criteria._features import iter_pooled
    from filterprune.criteria._pls import vip
    from filterprune.criteria._pls_kernel import CrossProducts, pls2_kernel

    width = sum(len(b.channels) for b in blocks)
    counts = torch.zeros(10, dtype=torch.long)
    with PeakRSS() as mem_collect:
        t0, c0 = time.perf_counter(), time.process_time()
        stats = CrossProducts(width, 10)
        for feats, labels in iter_pooled(model, itertools.chain(*loaders), blocks, samples=samples, num_classes=10):
            stats.update(feats, F.one_hot(labels, 10))
            counts += torch.bincount(labels, minlength=10)
        t_collect, c_collect = time.perf_counter() - t0, time.process_time() - c0
    with PeakRSS() as mem_fit:
        t0, c0 = time.perf_counter(), time.process_time()
        scores = vip(pls2_kernel(stats, 2))
        t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    return {
        "path": "stream",
        "samples": stats.n,
        "features": width,
        "prunable_groups": n_groups,
        "per_class": counts.tolist(),
        "statistics_mb": stats.nbytes / 2**20,
        "collect_seconds": t_collect,
        "collect_cpu_seconds": c_collect,
        "collect_images_per_second": stats.n / t_collect,
        "collect_peak_rss_delta_mb": mem_collect.delta_mb,
        "fit_seconds": t_fit,
        "fit_cpu_seconds": c_fit,
        "fit_peak_rss_delta_mb": mem_fit.delta_mb,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sum_vip_sq": float(scores.square().sum()),
        "batch_size": batch,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--path", choices=("stream", "matrix", "compare"), default="stream")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.data, args.batch, args.path)))
        return 0
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for n in args.samples:
        cmd = [sys.executable, __file__, "--child", str(n), "--data", args.data, "--batch", str(args.batch),
               "--path", args.path]
        env = {**os.environ, "PYTHONPATH": "src"}
        res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        def key(r):
            return r.get("path", "matrix"), r["samples"], r["batch_size"]
        rows = [r for r in rows if key(r) != key(row)] + [row]
        out.write_text(json.dumps({"protocol": __doc__.split("\n\n")[1], "commands": [
            "python benchmarks/pls_vip_cost.py --path matrix --samples 10000 50000",
            "python benchmarks/pls_vip_cost.py --path stream --samples 10000 50000",
            "python benchmarks/pls_vip_cost.py --path stream --samples 50000 --batch 100",
            "python benchmarks/pls_vip_cost.py --path compare --samples 10000"], "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
