"""The standard comparison's C-SGD row: ResNet-20 base -> -50% MACs, the 10 fine-tune epochs of the fixed
recipe (SGD nesterov, lr 0.01 cosine, batch 128, wd 5e-4) spent as centripetal training, then trim, no
fine-tuning. Same `filterprune prune` run as `standard_comparison.py --criteria csgd --extra ...` would
start, in-process; then collect the row into the shared table with
    PYTHONPATH=src python benchmarks/standard_comparison.py --criteria csgd --runs runs/csgd_standard \\
        --extra --criterion-options centripetal=0.1,vector_ratio=1.0

eps: with that recipe (352 steps/epoch), `filterprune.methods.predicted_decay` gives a deviation factor of
6e-9 over the 10 epochs for eps = 0.1 on kernels and vectors (vector_ratio=1.0), ~7e-4 by epoch 2, so the
clusters collapse early and the cosine tail (lr -> 0, no further collapse) does not matter.

Command (from the repository root):
    PYTHONPATH=src python benchmarks/csgd_standard.py
"""

from __future__ import annotations

import sys

from filterprune.cli.main import main

OPTIONS = "centripetal=0.1,vector_ratio=1.0"

if __name__ == "__main__":
    sys.exit(main([
        "prune", "--weights", "benchmarks/weights/resnet20_cifar10jpeg_base.safetensors",
        "--data", "../shared/data/cifar10", "--criterion", "csgd", "--target-macs", "0.5", "--allocation", "global",
        "--finetune-epochs", "10", "--out", "runs/csgd_standard/csgd", "--criterion-options", OPTIONS,
        *sys.argv[1:],
    ]))
