"""``filterprune compress``: Deep Compression after filter pruning (Han et al., arXiv 1510.00149).

Per conv/linear layer: magnitude pruning to --sparsity (retrained --prune-epochs with the masks
held), k-means weight sharing with 2**bits - 1 centroids (linear init; the centroids fine-tuned
--share-epochs by the summed gradients of their members), Huffman coding of the codebook indices and
of the relative positions (gap_bits wide, filler zeros on overflow). Defaults are the paper's: 8-bit
codebooks and relative indices for convs, 5 for fully-connected layers. Optionally one layer's
filters are pruned first (--filter-layer, by greedy CAR or L1). The container decodes exactly:
filterprune.compression.decompress(path) returns the model that was evaluated, bit for bit.

Example (the CAR paper's setting on one ResNet-20 layer; other layers 50% sparse, 5-bit):
    filterprune compress --weights base.safetensors --data ../shared/data/cifar10 --out runs/compress \\
        --filter-layer layer3.1.conv1 --filter-ratio 0.5 --car-images 500 --car-k 4 \\
        --sparsity 0.5 --conv-bits 5 --conv-gap-bits 4 --layer layer3.1.conv1:sparsity=0.9,bits=5 \\
        --train-images 12000
"""

from __future__ import annotations

import argparse
import json

from ._args import add_artifact_args, add_config_args


def add_parser(sub) -> None:
    """Register ``filterprune compress``; the recipe flags come from :class:`CompressOptions`."""
    from ..compression.pipeline import CompressOptions

    p = sub.add_parser("compress", help="weight pruning + k-means weight sharing + Huffman coding",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_artifact_args(p, "compress", "dataset name or path (e.g. digits, ../shared/data/cifar10)")
    p.add_argument("--layer", action="append", default=[], metavar="NAME:sparsity=S,bits=B,gap_bits=G",
                   help="per-layer settings (repeatable)")
    add_config_args(p, CompressOptions, skip=("layers",))
    p.add_argument("--lr", type=float, default=0.01, help="retraining learning rate (cosine)")
    p.add_argument("--batch-size", type=int, default=128, help="retraining batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the options, call :func:`~filterprune.compression.workflow.run_compress`, print the table."""
    import dataclasses

    from ..compression.pipeline import CompressOptions
    from ..compression.workflow import parse_layer_option, run_compress
    from ..config import TrainConfig

    fields = {f.name for f in dataclasses.fields(CompressOptions)} - {"layers"}
    layers = dict(parse_layer_option(text) for text in args.layer)
    options = CompressOptions(**{k: v for k, v in vars(args).items() if k in fields}, layers=layers)
    cfg = TrainConfig(epochs=1, lr=args.lr, batch_size=args.batch_size, device=args.device)
    summary = run_compress(args.weights, args.data, args.out, options, train_cfg=cfg, overwrite=args.overwrite)
    print(summary["table"])
    print(json.dumps({"network": summary["size_report"]["network"]}, indent=2))
    print(f"wrote {args.out}/model.compressed.safetensors, summary.json and report.txt")
    return 0
