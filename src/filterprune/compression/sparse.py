"""Sparse positions as relative indices of a fixed bit width, with filler zeros (Deep Compression).

Source: Han, Mao & Dally, "Deep Compression", arXiv 1510.00149, §2 and Fig. 2: the nonzero weights of
a layer are stored in order with, for each, the *difference* to the previous stored position in a few
bits; "when we need an index difference larger than the bound, we ... add a filler zero".

Our exact rule (a filled-in detail, [I]): the weight tensor is flattened in C order (``(C_out, C_in,
k, k)`` -> ``C_out*C_in*k*k``). Each stored *entry* has a ``run`` = the number of zero positions
skipped before it (``0 <= run < 2**gap_bits``) and a ``symbol`` = the codebook index of its value,
where symbol 0 means the value 0 (a filler). If more than ``2**gap_bits - 1`` zeros precede the next
nonzero, a filler entry ``(run=2**gap_bits - 1, symbol=0)`` is emitted; it stands for one more zero
position, so each filler advances ``2**gap_bits`` positions. Zeros after the last nonzero are not
stored (the length comes from the shape).

Example, ``gap_bits=2`` (runs 0..3), flat symbols ``[0, 5, 0, 0, 0, 0, 0, 0, 7]``: runs ``[1, 3, 2]``,
symbols ``[5, 0, 7]`` (the filler sits at position 5).

>>> import numpy as np
>>> runs, syms = encode_positions(np.array([0, 5, 0, 0, 0, 0, 0, 0, 7]), gap_bits=2)
>>> runs.tolist(), syms.tolist()
([1, 3, 2], [5, 0, 7])
>>> decode_positions(runs, syms, 9).tolist()
[0, 5, 0, 0, 0, 0, 0, 0, 7]
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_positions", "encode_positions"]


def encode_positions(flat_symbols: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries ``(runs, symbols)`` of a flat symbol array in which 0 marks a pruned weight.

    Args:
        flat_symbols: ``(N,)`` codebook indices, 0 = zero weight.
        gap_bits: bits of one run (1..16).

    Returns:
        ``runs`` and ``symbols``, both ``(E,)`` int64, E = nonzeros + fillers.
    """
    if not 1 <= gap_bits <= 16:
        raise ValueError(f"gap_bits must be in 1..16, got {gap_bits}")
    flat_symbols = np.asarray(flat_symbols, dtype=np.int64)
    pos = np.flatnonzero(flat_symbols)
    span = 1 << gap_bits  # positions one filler advances
    gaps = np.diff(pos, prepend=-1) - 1  # zeros before each nonzero, (nnz,)
    fillers = gaps // span
    runs = np.full(int(fillers.sum()) + len(pos), span - 1, dtype=np.int64)
    symbols = np.zeros(len(runs), dtype=np.int64)
    at = np.cumsum(fillers + 1) - 1  # entry index of each nonzero after its fillers
    runs[at] = gaps - fillers * span
    symbols[at] = flat_symbols[pos]
    return runs, symbols


def decode_positions(runs: np.ndarray, symbols: np.ndarray, length: int) -> np.ndarray:
    """The flat ``(length,)`` symbol array back from its entries (inverse of :func:`encode_positions`).

    Raises:
        ValueError: the entries run past ``length``.
    """
    runs = np.asarray(runs, dtype=np.int64)
    pos = np.cumsum(runs + 1) - 1  # position of each entry
    if len(pos) and pos[-1] >= length:
        raise ValueError(f"sparse entries reach position {int(pos[-1])} of a {length}-weight layer")
    out = np.zeros(length, dtype=np.int64)
    out[pos] = symbols
    return out
