"""Relative positions with filler zeros (Deep Compression Fig. 2), against hand-computed entries."""

from __future__ import annotations

import numpy as np

from filterprune.compression.sparse import decode_positions, encode_positions


def test_hand_example_with_overflow_fillers():
    # gap_bits=2: a run holds 0..3 zeros; positions 0, 3, 15, 16, 25 hold symbols 4, 1, 2, 3, 1
    flat = np.zeros(28, dtype=np.int64)
    flat[[0, 3, 15, 16, 25]] = [4, 1, 2, 3, 1]
    runs, symbols = encode_positions(flat, gap_bits=2)
    # 0: run 0 | 3: run 2 | 15: 11 zeros = two fillers (at 7, 11; 4 positions each) then run 3
    # 16: run 0 | 25: 8 zeros = two fillers (at 20, 24) then run 0; trailing zeros 26, 27 not stored
    assert runs.tolist() == [0, 2, 3, 3, 3, 0, 3, 3, 0]
    assert symbols.tolist() == [4, 1, 0, 0, 2, 3, 0, 0, 1]
    assert np.array_equal(decode_positions(runs, symbols, 28), flat)


def test_run_at_the_bound_needs_no_filler():
    flat = np.zeros(10, dtype=np.int64)
    flat[[3, 8]] = [1, 2]  # 3 zeros, then 4 zeros
    runs, symbols = encode_positions(flat, gap_bits=2)
    assert runs.tolist() == [3, 3, 0] and symbols.tolist() == [1, 0, 2]


def test_round_trip_random_sparsity():
    rng = np.random.default_rng(0)
    for gap_bits in (1, 3, 5, 8):
        flat = np.where(rng.random(5000) < 0.05, rng.integers(1, 16, 5000), 0)
        runs, symbols = encode_positions(flat, gap_bits)
        assert runs.max() < 2 ** gap_bits
        assert (symbols != 0).sum() == (flat != 0).sum()
        assert np.array_equal(decode_positions(runs, symbols, len(flat)), flat)


def test_all_zero_layer_has_no_entries():
    runs, symbols = encode_positions(np.zeros(7, dtype=np.int64), 3)
    assert len(runs) == len(symbols) == 0
    assert decode_positions(runs, symbols, 7).tolist() == [0] * 7
