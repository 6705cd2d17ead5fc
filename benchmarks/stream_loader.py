"""Throughput of the streaming image-folder loader (``data/stream.py``) against the in-memory loader, on CPU.

Two datasets:

* ``cifar10``: the CIFAR-10 JPEG copy (32 x 32), unpacked once into ``--work/cifar10/{train,test}``;
* ``synthetic``: an ImageNet-layout folder made here, ``--classes`` classes x ``--per-class`` JPEGs of
  256 x 256 (quality 90, smooth random colour fields plus noise: ~20 kB each, like photos), under
  ``--work/imagenet_like``.

For each: the in-memory path (``load_data(stream=False)``: decode every image once into one uint8
tensor (timed: ``decode_all_seconds``, cached afterwards), then ``BatchLoader`` with its pad-crop-flip
augmentation on the whole tensor), and the streaming path (``load_data(stream=True)`` +
``StreamLoader``: Pillow decoding, random-resized crop + flip for training / resize + centre crop for
evaluation, in 0, 1 or 2 DataLoader worker processes). Crop size: 32 for CIFAR (evaluation resize 32,
i.e. no resize), 224 for the synthetic folder (evaluation resize 256). Throughput = images per
second over ``--batches`` batches after one warm-up batch (worker start-up excluded), batch size
``--batch``. One torch thread in the main process. The machine is a shared 2-core box with other
jobs running; the 1-minute load average is recorded with every row.

Command (repository root):
    python benchmarks/stream_loader.py --data /work/shared/data/cifar10 --work /tmp/p12-stream
writes benchmarks/results/stream_loader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from filterprune.data import BatchLoader, load_data
from filterprune.data.stream import StreamLoader

OUT = Path("benchmarks/results/stream_loader.json")


def unpack_cifar(src: Path, dest: Path) -> Path:
    if not (dest / "train").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for tar in sorted(src.glob("*.tar.gz")):
            with tarfile.open(tar) as tf:
                tf.extractall(dest, filter="data")
    return dest


def make_synthetic(dest: Path, classes: int, per_class: int, side: int = 256) -> Path:
    if (dest / "train").is_dir():
        return dest
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = dest / "train" / f"class{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.int16)
            px = np.clip(field + rng.integers(-12, 13, field.shape), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(d / f"{i:05d}.jpg", quality=90)
    return dest


def rate(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # warm-up: worker start-up and first fill
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            break
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def measure(name: str, root: Path, size: int, resize: int, batch: int, batches: int, workers: list[int]) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    memory = load_data(str(root), stream=False, cache_dir="/tmp/p12-stream-cache")
    decode = time.perf_counter() - t0
    for train in (True, False):
        ds = memory.train if train else memory.val
        r = rate(BatchLoader(ds, batch, train=train), batches)
        rows.append({"dataset": name, "loader": "in-memory", "mode": "train" if train else "eval", "workers": 0,
                     "images_per_second": r, "decode_all_seconds": decode, "images": len(memory.train) + len(memory.val),
                     "crop": memory.train.image_size, "loadavg_1min": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    streamed = load_data(str(root), stream=True)
    for w in workers:
        for train in (True, False):
            src = streamed.train if train else streamed.val
            ds = type(src)(src.files, src.labels, src.classes, memory.train.mean, memory.train.std, size, resize)
            r = rate(StreamLoader(ds, batch, train=train, num_workers=w), batches)
            rows.append({"dataset": name, "loader": "stream", "mode": "train" if train else "eval", "workers": w,
                         "images_per_second": r, "crop": size, "loadavg_1min": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--work", default="/tmp/p12-stream")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    cifar = unpack_cifar(Path(args.data), work / "cifar10")
    t0 = time.perf_counter()
    synth = make_synthetic(work / "imagenet_like", args.classes, args.per_class)
    made = time.perf_counter() - t0
    jpeg_kb = np.mean([p.stat().st_size for p in list((synth / "train").rglob("*.jpg"))[:200]]) / 1024
    rows = measure("cifar10-jpeg", cifar, 32, 32, 256, args.batches, args.workers)
    rows += measure("synthetic-imagenet-256px", synth, 224, 256, 64, args.batches, args.workers)
    Path(args.out).write_text(json.dumps({
        "protocol": __doc__.split("\n\n")[1:4], "command": "python " + " ".join(sys.argv),
        "synthetic": {"classes": args.classes, "per_class": args.per_class, "mean_jpeg_kb": jpeg_kb,
                      "made_seconds": made},
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
