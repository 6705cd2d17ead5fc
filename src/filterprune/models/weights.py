"""Known pretrained checkpoints and loading of foreign ``.th``/``.pt`` files without unpickling.

The CIFAR ResNets come from akamaster/pytorch_resnet_cifar10 (BSD 2-Clause, Copyright (c) 2018, Yerlan
Idelbayev); the ImageNet ResNet-18/50 files are torchvision's ``IMAGENET1K_V1`` state dicts (BSD
3-Clause), read with ``weights_only=True`` (or from a safetensors copy of the same keys); a file named
like a published one must have its sha256. Known files are looked up by name in :func:`weights_dirs`
(``$FILTERPRUNE_WEIGHTS``, then the cache's ``weights`` folder; never the working directory), or given by
an explicit path; ``download=True`` fetches the official file into the first of those folders and checks
its sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..types import PathLike
from ..utils.paths import cache_dir

logger = logging.getLogger(__name__)

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_TORCHVISION = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class WeightsCfg:
    """A published checkpoint: file name, full sha256, where to get it, and its accuracy.

    ``top1`` is the published test accuracy (CIFAR-10 original pixels, or ImageNet-1k validation for
    the ImageNet ResNets); ``top1_jpeg`` the one measured on the project's JPEG copy of the CIFAR-10
    test set (``../shared/data/README.md``), ``None`` for ImageNet models.
    """

    file: str
    sha256: str
    url: str
    top1: float
    top1_jpeg: float | None = None


PRETRAINED: dict[str, WeightsCfg] = {
    "resnet20": WeightsCfg("resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
                           _AKAMASTER + "resnet20-12fca82f.th", 91.73, 81.03),
    "resnet32": WeightsCfg("resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
                           _AKAMASTER + "resnet32-d509ac18.th", 92.63, 82.56),
    "resnet44": WeightsCfg("resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
                           _AKAMASTER + "resnet44-014dd654.th", 93.10, 82.67),
    "resnet56": WeightsCfg("resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
                           _AKAMASTER + "resnet56-4bfd9763.th", 93.39, 83.20),
    # torchvision's ImageNet-1k V1 files (BSD 3-Clause); the name's 8 hex digits start the sha256
    "resnet18": WeightsCfg("resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
                           _TORCHVISION + "resnet18-f37072fd.pth", 69.758),
    "resnet50": WeightsCfg("resnet50-0676ba61.pth", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
                           _TORCHVISION + "resnet50-0676ba61.pth", 76.130),
}


def weights_dirs() -> list[Path]:
    """Folders searched for known checkpoints, in order: ``$FILTERPRUNE_WEIGHTS`` (if set), then the
    cache's ``weights`` folder (``$FILTERPRUNE_CACHE/weights``, else ``~/.cache/filterprune/weights``).

    The working directory is never searched; pass a file path to use weights kept elsewhere.
    """
    env = os.environ.get("FILTERPRUNE_WEIGHTS")
    return ([Path(env).expanduser()] if env else []) + [cache_dir("weights")]


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_weights(cfg: WeightsCfg, dest_dir: PathLike, url: str | None = None) -> Path:
    """Download ``cfg.url`` into ``dest_dir``; the file appears only once its sha256 checks out."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / cfg.file
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url or cfg.url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        got = sha256_of(tmp)
        if got != cfg.sha256:
            raise CheckpointError(f"downloaded {cfg.file} has sha256 {got[:12]}..., expected {cfg.sha256[:12]}...")
        os.replace(tmp, dest)
    except OSError as e:
        raise CheckpointError(f"could not download {url or cfg.url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def find_weights(name: str, *, download: bool = False) -> Path:
    """Locate the known checkpoint for model ``name`` in :func:`weights_dirs`, checking its sha256.

    Args:
        name: a key of :data:`PRETRAINED` (``"resnet20"``...).
        download: fetch the official file into the first of :func:`weights_dirs` when it is not found.

    Raises:
        CheckpointError: unknown name, a found file whose sha256 differs, or not found (listing the
            folders searched and what to do).
    """
    if name not in PRETRAINED:
        raise CheckpointError(f"no known pretrained weights for {name!r}; known: {', '.join(PRETRAINED)}")
    cfg = PRETRAINED[name]
    for d in weights_dirs():
        path = d / cfg.file
        if path.is_file():
            if sha256_of(path) != cfg.sha256:
                raise CheckpointError(f"{path}: sha256 does not match the published {cfg.file}")
            return path
    if download:
        return download_weights(cfg, weights_dirs()[0])
    raise CheckpointError(
        f"{cfg.file} not found in {', '.join(str(d) for d in weights_dirs())}; pass a file path, "
        "set FILTERPRUNE_WEIGHTS to its folder, or allow the download"
    )


def read_foreign_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.th``/``.pt``/``.pth`` file, loaded with ``weights_only=True``.

    Accepts a bare state dict or one under ``state_dict``/``model``; strips ``module.`` prefixes.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error becomes one line
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({type(e).__name__})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_accounted(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` so that every key is accounted for.

    Every key in ``state`` must be used. The only model keys allowed to be missing are the ones that
    old checkpoints never stored: BatchNorm's ``num_batches_tracked`` and the derived shortcut
    ``out_index`` buffers, which keep their freshly built values.
    """
    result = model.load_state_dict(state, strict=False)
    derived = ("num_batches_tracked", "out_index")
    missing = [k for k in result.missing_keys if not k.endswith(derived)]
    if result.unexpected_keys or missing:
        raise CheckpointError(
            f"{source}: does not match the model (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def load_pretrained(model: nn.Module, name_or_path: str, *, arch: str | None = None) -> nn.Module:
    """Load known weights by model name, or a file by path (foreign ``.th``/``.pt`` or ours)."""
    path = Path(name_or_path)
    if not path.exists() and name_or_path in PRETRAINED:
        path = find_weights(name_or_path)
    published = {cfg.file: cfg for cfg in PRETRAINED.values()}.get(path.name)
    if published is not None and path.is_file() and sha256_of(path) != published.sha256:
        raise CheckpointError(f"{path}: sha256 does not match the published {published.file}; "
                              "re-download it or rename a file that is not the published one")
    if path.suffix == ".safetensors":
        from ..checkpoint import read_checkpoint

        state, _ = read_checkpoint(path)
        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("optim.")}
    else:
        state = read_foreign_state_dict(path)
    try:
        load_state_dict_accounted(model, state, str(path))
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{path}: shapes do not match {arch or 'the model'} ({str(e).splitlines()[1].strip()})") from None
    logger.info("loaded weights from %s", path)
    return model
