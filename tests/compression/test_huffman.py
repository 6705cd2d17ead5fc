"""Canonical Huffman: round trips, prefix property, and optimality against independent oracles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from filterprune.compression import huffman


def brute_force_cost(counts: list[int]) -> int:
    """Smallest sum(count * length) over every length vector that a prefix code can have (Kraft <= 1)."""
    used = [c for c in counts if c > 0]
    if len(used) == 1:
        return used[0]  # one symbol: one bit each (a zero-length code is not decodable)
    best = None
    for lengths in itertools.product(range(1, len(used)), repeat=len(used)):
        if sum(2.0 ** -ell for ell in lengths) <= 1.0:
            cost = sum(c * ell for c, ell in zip(used, lengths, strict=True))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("counts", [[5, 2, 1, 1], [1, 1, 1, 1, 1], [10, 0, 3, 3, 1], [7], [0, 4, 0],
                                    [1, 2, 4, 8, 16], [3, 3, 2, 2, 1, 1]])
def test_code_lengths_are_optimal_against_brute_force(counts):
    lengths = huffman.code_lengths(np.array(counts))
    assert int((np.array(counts) * lengths).sum()) == brute_force_cost(counts)
    assert all((ell == 0) == (c == 0) for c, ell in zip(counts, lengths, strict=True))


def test_random_alphabets_meet_the_entropy_bound_and_optimum():
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = rng.integers(1, 50, size=rng.integers(2, 6))
        lengths = huffman.code_lengths(counts)
        p = counts / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
        average = float((p * lengths).sum())
        assert entropy - 1e-9 <= average < entropy + 1  # Shannon's bounds for an optimal code
        assert int((counts * lengths).sum()) == brute_force_cost(counts.tolist())


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = huffman.code_lengths(np.array([40, 30, 10, 10, 5, 3, 1, 1]))
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(ell)}b") for c, ell in zip(codes, lengths, strict=True)]
    for a, b in itertools.permutations(words, 2):
        assert not b.startswith(a)
    # canonical: by (length, symbol), consecutive codes count up
    order = sorted(range(len(words)), key=lambda s: (lengths[s], s))
    assert [words[s] for s in order] == sorted(words, key=lambda w: (len(w), w))
    assert words[order[0]] == "0" * int(lengths[order[0]])


@pytest.mark.parametrize("alphabet", [1, 2, 3, 32, 256])
def test_round_trip(alphabet):
    rng = np.random.default_rng(alphabet)
    symbols = rng.geometric(0.3, size=3000) % alphabet
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    data, nbits = huffman.encode(symbols, lengths)
    assert nbits == int(lengths[symbols].sum())
    assert len(data) == math.ceil(nbits / 8)
    assert np.array_equal(huffman.decode(data, nbits, lengths, len(symbols)), symbols)


def test_bit_layout_by_hand():
    lengths = np.array([1, 2, 2])  # canonical codes 0, 10, 11
    data, nbits = huffman.encode(np.array([1, 0, 2, 2]), lengths)
    assert nbits == 7 and data.tolist() == [0b10011110]


def test_decode_refuses_truncated_and_overlong_streams():
    lengths = np.array([1, 2, 2])
    data, nbits = huffman.encode(np.array([1, 2, 0]), lengths)
    with pytest.raises(ValueError):
        huffman.decode(data, nbits - 1, lengths, 3)
    with pytest.raises(ValueError):
        huffman.decode(data, nbits, lengths, 2)  # bits left over


def test_lengths_are_limited():
    counts = np.array([2 ** i for i in range(30)])  # optimal tree would be 29 deep
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH
    assert np.ldexp(1.0, -lengths).sum() <= 1.0
    symbols = np.arange(30)
    data, nbits = huffman.encode(symbols, lengths)
    assert np.array_equal(huffman.decode(data, nbits, lengths, 30), symbols)
