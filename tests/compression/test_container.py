"""The compressed container: exact decompression, sizes against an independent byte count, validation."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from filterprune.checkpoint import read_checkpoint, save_checkpoint
from filterprune.compression import decompress, size_report, write_compressed
from filterprune.compression.stages import compressible_layers, magnitude_masks, share_weights
from filterprune.errors import CheckpointError
from filterprune.graph import PrunePlan
from filterprune.graph.check import apply_plan_checked
from filterprune.graph.trace import trace_groups
from filterprune.models import create_model


def shared_model(filter_prune: bool = False):
    torch.manual_seed(0)
    model = create_model("convnet_small", num_classes=10, in_chans=1, image_size=8).eval()
    originals = {n: m.weight.numel() for n, m in compressible_layers(model).items()}
    if filter_prune:
        x = torch.randn(2, 1, 8, 8)
        groups = trace_groups(model, x)
        group = next(g for g in groups if g.id == "features.3")
        apply_plan_checked(model, groups, PrunePlan({group.id: [0, 2, 5]}), x)
    layers = list(compressible_layers(model))
    masks = magnitude_masks(model, {n: 0.7 for n in layers})
    with torch.no_grad():
        for n, m in masks.items():
            model.get_submodule(n).weight.mul_(m)
    with torch.no_grad():  # non-trivial BN statistics, so dense tensors are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    shared = share_weights(model, {n: (5 if n == "classifier" else 4) for n in layers})
    return model, shared, originals


def write(tmp_path, filter_prune=False, name="c.safetensors"):
    model, shared, originals = shared_model(filter_prune)
    path = write_compressed(model, shared, tmp_path / name, gap_bits={n: 3 for n in shared},
                            original_weights=originals)
    return model, path, originals


def test_decompress_is_bit_identical(tmp_path):
    model, path, _ = write(tmp_path, filter_prune=True)
    restored = decompress(path)
    ref, got = model.state_dict(), restored.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert ref[k].dtype == got[k].dtype and torch.equal(ref[k], got[k]), k
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), restored(x))


def parse_safetensors(path):
    """An independent reader: 8-byte little-endian header length, JSON header, raw data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header.pop("__metadata__")["filterprune"])
    sizes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}
    return len(raw), sizes, meta


def test_size_report_counts_every_byte(tmp_path):
    model, path, originals = write(tmp_path, filter_prune=True)
    rep = size_report(path)
    file_bytes, sizes, meta = parse_safetensors(path)
    assert rep["network"]["compressed_bits"] == 8 * file_bytes
    for name, rec in meta["layers"].items():
        own = sum(v for k, v in sizes.items() if k.startswith(f"{name}/"))
        record = len(json.dumps(rec, separators=(",", ":"), sort_keys=True))
        assert rep["layers"][name]["compressed_bits"] == 8 * (own + record)
        assert rep["layers"][name]["original_weights"] == originals[name]
        assert rep["layers"][name]["ratio"] == pytest.approx(32 * originals[name] / (8 * (own + record)))
    assert rep["layers"]["features.3"]["original_weights"] == 32 * 16 * 9  # before 3 filters were removed
    assert rep["layers"]["features.3"]["weights"] == 29 * 16 * 9
    assert rep["dense"] == {k[len("dense/"):]: 8 * v for k, v in sizes.items() if k.startswith("dense/")}
    # the parts account for everything but safetensors' own header and the global metadata
    accounted = sum(r["compressed_bits"] for r in rep["layers"].values()) + sum(rep["dense"].values())
    assert accounted < 8 * file_bytes
    unpruned = create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    original = sum((32 if v.is_floating_point() else 64) * v.numel() for v in unpruned.state_dict().values())
    assert rep["network"]["original_bits"] == original


def test_codes_are_smaller_than_fixed_width(tmp_path):
    _, path, _ = write(tmp_path)
    _, sizes, meta = parse_safetensors(path)
    rec = meta["layers"]["features.7"]
    assert rec["symbol_nbits"] <= rec["entries"] * rec["bits"]  # Huffman never loses to fixed width
    assert rec["run_nbits"] <= rec["entries"] * rec["gap_bits"]
    assert sizes["features.7/symbols"] == math.ceil(rec["symbol_nbits"] / 8)


def test_refuses_weights_that_are_not_their_codebook(tmp_path):
    model, shared, originals = shared_model()
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ValueError, match="features.0"):
        write_compressed(model, shared, tmp_path / "x.safetensors", gap_bits={n: 3 for n in shared},
                         original_weights=originals)


def tamper(tmp_path, change):
    _, path, _ = write(tmp_path)
    tensors, meta = read_checkpoint(path)
    change(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, tensors, meta)
    return bad


@pytest.mark.parametrize("change, words", [
    (lambda t, m: m.update(format="filterprune.model/1"), "format"),
    (lambda t, m: m["layers"]["features.0"].update(bits=40), "bits"),
    (lambda t, m: m["layers"]["features.0"].update(shape=[8, -1, 3, 3]), "shape"),
    (lambda t, m: m["layers"]["features.0"].update(shape=[2 ** 20, 2 ** 20]), "weights"),
    (lambda t, m: m["layers"]["features.0"].update(symbol_nbits=10 ** 9), "symbol_nbits"),
    (lambda t, m: m["layers"]["features.0"].pop("entries"), "keys"),
    (lambda t, m: t.pop("features.3/runs"), "missing"),
    (lambda t, m: t.update({"features.3/codebook": torch.zeros(40)}), "codebook"),
])
def test_bad_metadata_is_one_line_naming_the_file(tmp_path, change, words):
    bad = tamper(tmp_path, change)
    for fn in (decompress, size_report):
        with pytest.raises(CheckpointError) as e:
            fn(bad)
        msg = str(e.value)
        assert str(bad) in msg and words in msg and "\n" not in msg


def test_corrupt_stream_is_refused(tmp_path):
    def flip(t, m):
        t["features.7/symbols"] = t["features.7/symbols"][: len(t["features.7/symbols"]) // 2].clone()
        m["layers"]["features.7"]["symbol_nbits"] = 8 * len(t["features.7/symbols"])

    bad = tamper(tmp_path, flip)
    with pytest.raises(CheckpointError, match="does not decode|does not fit"):
        decompress(bad)
