"""``run_demo``: train -> prune -> fine-tune on scikit-learn's digits, through the same code as the CLI."""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import PruneConfig, PruneRunConfig, RunConfig, TrainConfig
from ..utils.io import open_run_folder
from .prune_run import run_prune
from .train_run import run_training

DEMO_TRAIN = TrainConfig(epochs=12, batch_size=64, lr=0.05, warmup_epochs=1, device="cpu")
DEMO_FINETUNE = TrainConfig(epochs=4, batch_size=64, lr=0.01, device="cpu")


DEMO_FILES = ("base", "pruned")


def run_demo(
    *, criterion: str = "l1", target_macs: float = 0.5, out: str | None = None, overwrite: bool = False,
    train: TrainConfig = DEMO_TRAIN, finetune: TrainConfig = DEMO_FINETUNE,
) -> dict[str, Any]:
    """Returns both run summaries and a printable ``text``; writes run folders under ``out`` if given.

    ``out`` is claimed as a demo run folder first (:func:`filterprune.utils.io.open_run_folder`): an
    existing ``out`` is refused unless ``overwrite`` and it holds an earlier demo (whose ``base/`` and
    ``pruned/`` are then replaced; nothing else there is touched).
    """
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if out:
            stack.enter_context(open_run_folder(out, "demo", overwrite=overwrite, owned=DEMO_FILES, can_resume=False))
        root = Path(out) if out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="filterprune-demo-")))
        base = run_training(RunConfig(model="convnet_small", data="digits", out=str(root / "base"), train=train))
        pruned = run_prune(PruneRunConfig(
            weights=str(root / "base" / "model.safetensors"), data="digits", out=str(root / "pruned"),
            prune=PruneConfig(criterion=criterion, target_macs=target_macs), finetune=finetune,
        ))
    seconds = time.perf_counter() - t0
    m, p = pruned["macs"], pruned["params"]
    lat_b, lat_p = pruned["latency"]["base"], pruned["latency"]["pruned"]
    rows = [
        ("", "base", "pruned", "fine-tuned"),
        ("val acc (%)", f"{pruned['base']['val_acc']:.2f}", f"{pruned['pruned']['val_acc']:.2f}",
         f"{pruned['finetuned']['val_acc']:.2f}"),
        ("test acc (%)", f"{pruned['base']['test_acc']:.2f}", f"{pruned['pruned']['test_acc']:.2f}",
         f"{pruned['finetuned']['test_acc']:.2f}"),
        ("MACs", f"{m['base']:,}", f"{m['pruned']:,}", f"{m['pruned']:,}"),
        ("params", f"{p['base']:,}", f"{p['pruned']:,}", f"{p['pruned']:,}"),
        ("latency b=1 (ms)", f"{lat_b['1']['median_ms']:.3f}", f"{lat_p['1']['median_ms']:.3f}",
         f"{lat_p['1']['median_ms']:.3f}"),
    ]
    table = "\n".join(f"{a:18s} {b:>12s} {c:>12s} {d:>12s}" for a, b, c, d in rows)
    text = (
        f"filterprune demo: convnet_small on scikit-learn digits ({base['data']})\n"
        f"trained {base['epochs']} epochs; pruned {criterion} to -{target_macs:.0%} MACs "
        f"({pruned.get('allocation', 'global')} allocation); fine-tuned "
        f"{pruned['finetune_epochs']} epochs\n\n{pruned['table']}\n\n{table}\n\n"
        f"MACs -{m['removed_fraction']:.1%}, params -{p['removed_fraction']:.1%}; max |pruned - masked| = "
        f"{pruned['report']['max_error']:.2e}; {seconds:.1f} s in all"
    )
    return {"base": base, "pruned": pruned, "seconds": seconds, "text": text}
