"""The compressed container: one ``.safetensors`` file of uint8 bitstreams and arrays + JSON metadata.

Nothing is pickled. Per compressed layer ``L`` (a conv or linear weight) the file holds:

* ``L/codebook``: float32 ``(K,)``, the shared values (symbol ``k + 1`` -> ``codebook[k]``; 0 -> 0.0);
* ``L/symbols`` and ``L/runs``: the canonical-Huffman bitstreams of the entries' codebook symbols and of
  their zero runs (:mod:`.sparse`), packed MSB first into uint8;
* ``L/symbol_lengths`` and ``L/run_lengths``: the canonical code tables, one 5-bit code length per
  symbol (``2**bits`` and ``2**gap_bits`` of them), packed into uint8;

and every other state-dict tensor (biases, BatchNorm) as it is, under ``dense/<key>``. The metadata
(``"filterprune"`` header key) has ``format``, ``arch``/``modules`` (how to rebuild the possibly
filter-pruned architecture, as :mod:`filterprune.serialize` does) and per layer ``shape``,
``bits``, ``gap_bits``, ``entries``, ``symbol_nbits``, ``run_nbits``, ``original_weights``.

:func:`size_report` counts bits as stored: a layer's ``compressed_bits`` is 8 x the bytes of its
tensors plus 8 x the bytes of its compact JSON record (shapes and counts); the network's is 8 x the
file size (safetensors' own header included). Ratios use 32 bits per weight of the layer *before*
filter pruning (``original_weights``), as the CAR paper's 42x does (methods.md §3.2b).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import META_KEY, read_checkpoint, save_checkpoint
from ..errors import CheckpointError
from ..types import PathLike
from . import huffman
from .sparse import decode_positions, encode_positions
from .stages import SharedLayer

__all__ = ["FORMAT", "decompress", "read_compressed", "size_report", "write_compressed"]

FORMAT = "filterprune.compressed/1"
LENGTH_BITS = 5  # a code length (<= huffman.MAX_CODE_LENGTH = 20) in 5 bits
MAX_WEIGHTS = 1 << 31
_LAYER_KEYS = {"param": str, "shape": list, "bits": int, "gap_bits": int, "entries": int, "symbol_nbits": int,
               "run_nbits": int, "original_weights": int}
_PARTS = ("codebook", "symbols", "runs", "symbol_lengths", "run_lengths")


def _record_bytes(record: dict[str, Any]) -> int:
    return len(json.dumps(record, separators=(",", ":"), sort_keys=True).encode())


def encode_layer(layer: SharedLayer, gap_bits: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON record of one weight-shared layer (see the module docstring)."""
    runs, syms = encode_positions(layer.symbols.flatten().numpy(), gap_bits)
    tensors, record = {"codebook": layer.codebook.float().contiguous()}, {}
    for part, values, alphabet in (("symbols", syms, 1 << layer.bits), ("runs", runs, 1 << gap_bits)):
        counts = np.bincount(values, minlength=alphabet)
        lengths = huffman.code_lengths(counts) if len(values) else np.zeros(alphabet, dtype=np.int64)
        data, nbits = huffman.encode(values, lengths)
        table, _ = huffman.pack_bits(lengths, np.full(alphabet, LENGTH_BITS))
        tensors[part] = torch.from_numpy(data.copy())
        tensors[part[:-1] + "_lengths"] = torch.from_numpy(table.copy())
        record[f"{part[:-1]}_nbits"] = nbits
    record.update(shape=list(layer.symbols.shape), bits=layer.bits, gap_bits=gap_bits, entries=len(runs))
    return tensors, record


def _unpack_lengths(table: np.ndarray, alphabet: int) -> np.ndarray:
    bits = np.unpackbits(table)[: alphabet * LENGTH_BITS].reshape(alphabet, LENGTH_BITS).astype(np.int64)
    return bits @ (1 << np.arange(LENGTH_BITS - 1, -1, -1))


def decode_layer(tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> torch.Tensor:
    """The float32 weight of one layer back from its tensors and record (inverse of :func:`encode_layer`)."""
    n = math.prod(record["shape"])
    values = {}
    for part, alphabet in (("symbol", 1 << record["bits"]), ("run", 1 << record["gap_bits"])):
        lengths = _unpack_lengths(tensors[f"{part}_lengths"].numpy(), alphabet)
        values[part] = huffman.decode(tensors[f"{part}s"].numpy(), record[f"{part}_nbits"], lengths,
                                      record["entries"])
    symbols = decode_positions(values["run"], values["symbol"], n)
    codebook = tensors["codebook"]
    if symbols.max(initial=0) > len(codebook):
        raise ValueError(f"a symbol points past the {len(codebook)}-entry codebook")
    layer = SharedLayer(torch.from_numpy(symbols).view(record["shape"]), codebook, record["bits"])
    return layer.weight()


def write_compressed(model: nn.Module, shared: dict[str, SharedLayer], path: PathLike, *,
                     gap_bits: dict[str, int], original_weights: dict[str, int],
                     meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with the ``shared`` layers Huffman-coded to ``path`` (atomically).

    Args:
        model: built by ``create_model`` (it carries ``filterprune_cfg``); its shared layers' weights
            must equal their codebooks exactly (as :class:`~.stages.SharingHook` leaves them).
        shared: ``{layer: SharedLayer}``.
        gap_bits: zero-run width per layer name.
        original_weights: weights per layer name before filter pruning.
        meta: extra JSON-able metadata (kept under ``info``).

    Raises:
        ValueError: the model has no ``filterprune_cfg`` or a layer's weight differs from its codebook.
    """
    from ..serialize import module_shapes

    arch = getattr(model, "filterprune_cfg", None)
    if not isinstance(arch, dict) or "name" not in arch:
        raise ValueError("model has no filterprune_cfg; build it with filterprune.models.create_model")
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for name, layer in shared.items():
        param = f"{name}.weight"
        if not torch.equal(state[param].detach().cpu().float(), layer.weight()):
            raise ValueError(f"{name}: weight differs from its codebook; tie the weights before writing")
        parts, record = encode_layer(layer, gap_bits[name])
        record.update(param=param, original_weights=int(original_weights[name]))
        layers[name] = record
        tensors.update({f"{name}/{k}": v for k, v in parts.items()})
    skip = {layers[n]["param"] for n in layers}
    tensors.update({f"dense/{k}": v for k, v in state.items() if k not in skip})
    record = {"format": FORMAT, "arch": dict(arch), "modules": module_shapes(model), "layers": layers,
              "info": meta or {}}
    return save_checkpoint(path, tensors, record)


def _check_meta(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Bounded, well-typed metadata that matches the tensors; raises ``ValueError`` naming the problem."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a filterprune compressed model (format {meta.get('format')!r})")
    if not isinstance(meta.get("arch"), dict) or "name" not in meta["arch"] or not isinstance(meta.get("layers"), dict):
        raise ValueError("metadata lacks arch (a registered model name) or layers")
    if not isinstance(meta.get("modules"), dict):
        raise ValueError("metadata lacks modules (the layer widths)")
    for name, rec in meta["layers"].items():
        if not isinstance(rec, dict) or set(rec) != set(_LAYER_KEYS):
            raise ValueError(f"layer {name}: record keys must be {sorted(_LAYER_KEYS)}")
        for key, tp in _LAYER_KEYS.items():
            if not isinstance(rec[key], tp) or isinstance(rec[key], bool):
                raise ValueError(f"layer {name}: {key} must be {tp.__name__}")
        shape = rec["shape"]
        if not 1 <= len(shape) <= 8 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"layer {name}: bad shape {shape}")
        n = math.prod(shape)
        if n > MAX_WEIGHTS or not 0 <= rec["original_weights"] <= MAX_WEIGHTS:
            raise ValueError(f"layer {name}: more than {MAX_WEIGHTS} weights")
        if not (1 <= rec["bits"] <= 16 and 1 <= rec["gap_bits"] <= 16 and 0 <= rec["entries"] <= n):
            raise ValueError(f"layer {name}: bits/gap_bits must be in 1..16 and entries in 0..{n}")
        for part in _PARTS:
            if f"{name}/{part}" not in tensors:
                raise ValueError(f"layer {name}: tensor {part} missing")
        cb = tensors[f"{name}/codebook"]
        if cb.dtype != torch.float32 or cb.ndim != 1 or len(cb) >= 1 << rec["bits"]:
            raise ValueError(f"layer {name}: codebook must be float32 with fewer than 2**bits entries")
        for part, alphabet in (("symbol", 1 << rec["bits"]), ("run", 1 << rec["gap_bits"])):
            stream, table = tensors[f"{name}/{part}s"], tensors[f"{name}/{part}_lengths"]
            if stream.dtype != torch.uint8 or table.dtype != torch.uint8:
                raise ValueError(f"layer {name}: {part} streams must be uint8")
            if not 0 <= rec[f"{part}_nbits"] <= 8 * stream.numel():
                raise ValueError(f"layer {name}: {part}_nbits exceeds its stream")
            if 8 * table.numel() < alphabet * LENGTH_BITS:
                raise ValueError(f"layer {name}: {part} code table too short")


def read_compressed(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a compressed file, its metadata validated.

    Raises:
        CheckpointError: one line naming the file: missing, corrupt, not a compressed model, or
            metadata out of bounds or inconsistent with its tensors.
    """
    tensors, meta = read_checkpoint(path)
    try:
        _check_meta(Path(path), meta, tensors)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return tensors, meta


def decompress(path: PathLike) -> nn.Module:
    """Rebuild the weight-shared model stored at ``path`` (eval mode), bit-identical to the one written.

    Raises:
        CheckpointError: see :func:`read_compressed`, or the streams do not decode to the architecture.
    """
    from ..graph._validate import validated_widths
    from ..serialize import _build_registered, resize

    path = Path(path)
    tensors, meta = read_compressed(path)
    state = {k[len("dense/"):]: v for k, v in tensors.items() if k.startswith("dense/")}
    try:
        for name, rec in meta["layers"].items():
            parts = {p: tensors[f"{name}/{p}"] for p in _PARTS}
            state[rec["param"]] = decode_layer(parts, rec)
    except (KeyError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not decode ({reason})") from None
    # the architecture and its widths are checked as for any filterprune checkpoint (graph/_validate.py)
    model = _build_registered(path, dict(meta["arch"]), meta.get("modules", {}), state)
    resize(model, validated_widths(path, model, state, meta.get("modules", {})), state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} ({reason})") from None
    return model.eval()


def size_report(path: PathLike) -> dict[str, Any]:
    """Stored bits per compressed layer, per dense tensor and for the whole file, with ratios.

    Returns:
        ``{"layers": {name: {original_weights, weights, nonzero_entries, compressed_bits, ratio,
        bits_by_part}}, "dense": {key: bits}, "network": {original_bits, compressed_bits, ratio,
        file_bytes}}``. ``ratio`` = 32 x ``original_weights`` / ``compressed_bits``. The network's
        original bits are 32 per float of the architecture before filter pruning (``arch`` rebuilt
        unpruned) plus 64 per integer buffer.

    Raises:
        CheckpointError: see :func:`read_compressed`.
    """
    from ..models import create_model

    tensors, meta = read_compressed(path)
    layers = {}
    for name, rec in meta["layers"].items():
        parts = {p: 8 * tensors[f"{name}/{p}"].numel() * tensors[f"{name}/{p}"].element_size() for p in _PARTS}
        parts["record"] = 8 * _record_bytes(rec)
        bits = sum(parts.values())
        layers[name] = {"original_weights": rec["original_weights"], "weights": math.prod(rec["shape"]),
                        "entries": rec["entries"], "compressed_bits": bits,
                        "ratio": 32 * rec["original_weights"] / bits, "bits_by_part": parts}
    dense = {k[len("dense/"):]: 8 * v.numel() * v.element_size() for k, v in tensors.items()
             if k.startswith("dense/")}
    arch = meta["arch"]
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        base = create_model(arch["name"], **{k: v for k, v in arch.items() if k not in ("name", "class")})
    original = sum((32 if v.is_floating_point() else 64) * v.numel() for v in base.state_dict().values())
    file_bytes = Path(path).stat().st_size
    return {"layers": layers, "dense": dense,
            "network": {"original_bits": original, "compressed_bits": 8 * file_bytes,
                        "ratio": original / (8 * file_bytes), "file_bytes": file_bytes}}


def header_meta(path: PathLike) -> dict[str, Any]:
    """The raw metadata JSON of a safetensors file (for tools that only need the header)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get(META_KEY, "{}"))
