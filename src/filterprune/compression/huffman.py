"""Canonical Huffman codes and the bit packing of the compressed container.

Source: Huffman (1952), "A method for the construction of minimum-redundancy codes"; canonical codes
as in DEFLATE (RFC 1951 §3.2.2): only the code *length* of every symbol is stored, and the codes are
rebuilt from the lengths (shorter codes first, ties by symbol value). Deep Compression (Han et al.,
arXiv 1510.00149, §4) Huffman-codes the codebook indices and the sparse-position gaps of each layer.

Why our own ~150 lines and not a library: the container must be bit-exact and count every stored bit,
so we need the canonical code table (lengths only) and the raw bitstream. The PyPI Huffman packages
(``dahuffman``, ``huffman``) are small, rarely maintained, pickle or store their own tables, and do
not expose canonical lengths; ``zlib`` does Huffman internally but not over our symbol alphabets.

Codes are length-limited to :data:`MAX_CODE_LENGTH` bits: if the optimal tree is deeper, counts are
halved (rounding up, so no used symbol disappears) until it fits, as JPEG encoders do (ITU T.81 K.2
suggests the same kind of adjustment). With the alphabets here (<= 2**16 symbols) and
realistic counts this never triggers; when it does the code stays a valid prefix code.

>>> import numpy as np
>>> lengths = code_lengths(np.array([5, 2, 1, 1]))
>>> lengths.tolist()
[1, 2, 3, 3]
>>> data, nbits = encode(np.array([0, 1, 3, 0]), lengths)
>>> decode(data, nbits, lengths, 4).tolist()
[0, 1, 3, 0]
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["MAX_CODE_LENGTH", "canonical_codes", "code_lengths", "decode", "encode", "pack_bits"]

MAX_CODE_LENGTH = 20


def _tree_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal (unbounded) Huffman code lengths of the symbols with ``counts > 0``."""
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1  # one symbol still needs one bit per occurrence to be decodable
        return lengths
    # heap items: (weight, tie-breaker, symbols under this node); merging two nodes deepens their symbols
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    tie = len(counts)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, tie, s1 + s2))
        tie += 1
    return lengths


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length (bits) per symbol; 0 for symbols that never occur.

    Args:
        counts: occurrences per symbol, ``(K,)`` non-negative integers, at least one positive.

    Returns:
        ``(K,)`` int64 lengths, each <= :data:`MAX_CODE_LENGTH`.

    Raises:
        ValueError: no symbol occurs, or a count is negative.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError("code_lengths needs a 1-D array of non-negative counts with at least one positive")
    lengths = _tree_lengths(counts)
    while lengths.max() > MAX_CODE_LENGTH:
        counts = np.where(counts > 0, (counts + 1) // 2, 0)
        lengths = _tree_lengths(counts)
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (as an integer, most significant bit first) of every symbol.

    Symbols are ordered by (length, symbol); each code is the previous one plus one, shifted left
    when the length grows (RFC 1951 §3.2.2). Symbols of length 0 get code 0 and are never written.

    Raises:
        ValueError: the lengths violate Kraft's inequality (no prefix code has them).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if len(used) and (np.ldexp(1.0, -lengths[used]).sum() > 1.0 + 1e-12):
        raise ValueError("code lengths violate Kraft's inequality")
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(used.tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        prev = int(lengths[s])
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Huffman-code ``symbols`` with the canonical code of ``lengths``.

    Returns:
        ``(data, nbits)``: the bitstream packed most significant bit first into uint8 (the last byte
        padded with zeros) and the number of meaningful bits.

    Raises:
        ValueError: a symbol has no code (length 0).
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) == 0:
        return np.zeros(0, dtype=np.uint8), 0
    if (lengths[symbols] == 0).any():
        raise ValueError("a symbol to encode has no Huffman code")
    return pack_bits(canonical_codes(lengths)[symbols], lengths[symbols])


def pack_bits(values: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, int]:
    """Concatenate ``values[i]`` written in ``widths[i]`` bits (MSB first) into packed uint8."""
    values = np.asarray(values, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    owner = np.repeat(np.arange(len(values)), widths)  # (total,) which value each bit belongs to
    starts = np.cumsum(widths) - widths
    within = np.arange(total) - starts[owner]
    bits = (values[owner] >> (widths[owner] - 1 - within)) & 1
    return np.packbits(bits.astype(np.uint8)), total


def decode(data: np.ndarray, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Read ``count`` symbols from the first ``nbits`` bits of ``data`` (inverse of :func:`encode`).

    Raises:
        ValueError: the stream ends early, has bits left over, or holds no valid code.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        if nbits:
            raise ValueError("bitstream has bits but no symbols")
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8))[:nbits].astype(np.int64)
    if len(bits) != nbits:
        raise ValueError("bitstream shorter than its declared length")
    codes = canonical_codes(lengths)
    width = int(lengths.max())
    # lookup table over every width-bit window: the symbol whose code is its prefix, and that code's length
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero(lengths).tolist():
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = lo + (1 << (width - int(lengths[s])))
        table_sym[lo:hi], table_len[lo:hi] = s, lengths[s]
    padded = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    windows = np.zeros(nbits, dtype=np.int64)
    for j in range(width):  # windows[p] = the width bits starting at p, as an integer
        windows |= padded[j:j + nbits] << (width - 1 - j)
    sym_at, len_at = table_sym[windows].tolist(), table_len[windows].tolist()
    out = np.empty(count, dtype=np.int64)
    p = 0
    for i in range(count):
        if p >= nbits or sym_at[p] < 0:
            raise ValueError("bitstream ends early or holds an invalid code")
        out[i] = sym_at[p]
        p += len_at[p]
    if p != nbits:
        raise ValueError(f"bitstream has {nbits - p} bits left over after {count} symbols")
    return out
