"""Hostile and broken checkpoint files: each one refused in one line that names the file and the problem.

Every case goes through the CLI (``filterprune info --weights FILE``, which loads and does nothing
else): exit code 2, stderr exactly one line naming the file and the problem, stdout empty, and every
file in the folder byte-identical afterwards. The files are crafted from a real checkpoint; where the
digest would give the edit away, it is recomputed (an attacker can do that), so the metadata checks
themselves are exercised.
"""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from filterprune.api import load, prune, save
from filterprune.checkpoint import DIGEST_KEY, META_KEY, read_checkpoint, save_checkpoint, tensor_digest
from filterprune.cli.main import main
from filterprune.models import create_model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A pruned convnet_small checkpoint with its input shape recorded: (path, tensors, meta)."""
    torch.manual_seed(0)
    model, x = create_model("convnet_small"), torch.randn(2, 1, 8, 8)
    prune(model, x, "l1", ratio=0.3)
    path = save(model, tmp_path_factory.mktemp("good") / "good.safetensors", example_inputs=x)
    tensors, meta = read_checkpoint(path)
    return path, tensors, meta


def _write(path, tensors, meta, *, digest=True, raw_meta=None):
    header = {META_KEY: raw_meta if raw_meta is not None else json.dumps(meta)}
    if digest:
        header[DIGEST_KEY] = tensor_digest(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=header)
    return path


def _edit_meta(fn):
    def make(tmp_path, good):
        _, tensors, meta = good
        meta, tensors = json.loads(json.dumps(meta)), dict(tensors)
        fn(meta, tensors)
        return _write(tmp_path / "bad.safetensors", tensors, meta)
    return make


def _edit_tensors(fn):
    def make(tmp_path, good):
        _, tensors, meta = good
        tensors = dict(tensors)
        fn(tensors)
        return _write(tmp_path / "bad.safetensors", tensors, meta)
    return make


def _raw(data_fn, name="bad.safetensors"):
    def make(tmp_path, good):
        path = tmp_path / name
        path.write_bytes(data_fn(good[0].read_bytes()))
        return path
    return make


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[-10] ^= 0xFF  # inside the last tensor's bytes
    return bytes(b)


def _set(meta, dotted, value):
    node = meta
    *parents, leaf = dotted.split("/")
    for p in parents:
        node = node[p]
    node[leaf] = value


def _pickle_file(tmp_path, good):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
    return path


def _torch_save_file(tmp_path, good):
    path = tmp_path / "bad.safetensors"
    torch.save({"weight": torch.zeros(2)}, path)
    return path


def _meta_raw(text):
    def make(tmp_path, good):
        _, tensors, _ = good
        return _write(tmp_path / "bad.safetensors", tensors, None, raw_meta=text)
    return make


def _directory(tmp_path, good):
    (tmp_path / "bad.safetensors").mkdir()
    return tmp_path / "bad.safetensors"


def _inconsistent(meta, tensors):
    """conv1 pruned to 12 filters in JSON *and* tensors, BatchNorm left at 16: only a forward sees it."""
    conv = "features.0"
    n = meta["modules"][conv]["out_channels"] - 2
    meta["modules"][conv]["out_channels"] = n
    tensors[f"{conv}.weight"] = tensors[f"{conv}.weight"][:n].clone()


CASES = {
    "bn_eps_attribute": (_edit_meta(lambda m, t: _set(m, "modules/features.1/eps", 1000.0)),
                         "'eps' is not a channel attribute"),
    "conv_stride_attribute": (_edit_meta(lambda m, t: _set(m, "modules/features.0/stride", [2, 2])),
                              "'stride' is not a channel attribute"),
    "width_mult_bomb": (_edit_meta(lambda m, t: _set(m, "arch/width_mult", 400)), "MiB unpruned"),
    "num_classes_bomb": (_edit_meta(lambda m, t: _set(m, "arch/num_classes", 900_000)), "MiB unpruned"),
    "arch_value_out_of_range": (_edit_meta(lambda m, t: _set(m, "arch/width_mult", 1e300)), "out of range"),
    "arch_nan": (_edit_meta(lambda m, t: _set(m, "arch/width_mult", float("nan"))), "out of range"),
    "arch_value_wrong_type": (_edit_meta(lambda m, t: _set(m, "arch/width_mult", {"a": 1})), "only numbers"),
    "arch_unknown_argument": (_edit_meta(lambda m, t: _set(m, "arch/eps", 1000.0)), "cannot build convnet_small"),
    "arch_name_not_a_string": (_edit_meta(lambda m, t: _set(m, "arch/name", 7)), "must be a string"),
    "unregistered_model": (_edit_meta(lambda m, t: _set(m, "arch/name", "not_a_model")), "not registered"),
    "arch_is_a_list": (_edit_meta(lambda m, t: _set(m, "arch", [1, 2])), "'arch' is a JSON list"),
    "missing_modules_key": (_edit_meta(lambda m, t: m.pop("modules")), "has no 'modules'"),
    "missing_format": (_edit_meta(lambda m, t: m.pop("format")), "not a filterprune model checkpoint"),
    "wrong_width": (_edit_meta(lambda m, t: _set(m, "modules/features.0/out_channels", 8)), "of shape"),
    "width_is_a_string": (_edit_meta(lambda m, t: _set(m, "modules/features.1/num_features", "11")),
                          "is not a width"),
    "width_is_huge": (_edit_meta(lambda m, t: _set(m, "modules/classifier/in_features", 10**9)), "is not a width"),
    "width_is_a_bool": (_edit_meta(lambda m, t: _set(m, "modules/features.1/num_features", True)), "is not a width"),
    "groups_zero": (_edit_meta(lambda m, t: _set(m, "modules/features.0/groups", 0)), "is not a width"),
    "groups_not_dividing": (_edit_meta(lambda m, t: _set(m, "modules/features.3/groups", 3)), "does not divide"),
    "wrong_layer_type": (_edit_meta(lambda m, t: _set(m, "modules/features.1/type", "Conv2d")),
                         "is a BatchNorm2d in SmallConvNet"),
    "layer_not_in_model": (_edit_meta(lambda m, t: _set(m, "modules/head", {"type": "Linear", "in_features": 4})),
                           "layer 'head' of the checkpoint is not in SmallConvNet"),
    "module_entry_is_a_list": (_edit_meta(lambda m, t: _set(m, "modules/features.0", [3, 16])),
                               "expected an object"),
    "layer_widths_disagree": (_edit_meta(_inconsistent), "fails on its recorded input shapes"),
    "inputs_malformed": (_edit_meta(lambda m, t: _set(m, "inputs", [[1, -8, 8]])), "'inputs' must be"),
    "inputs_bomb": (_edit_meta(lambda m, t: _set(m, "inputs", [[1, 10**6, 10**6]])), "more than"),
    "missing_tensor": (_edit_tensors(lambda t: t.pop("features.1.running_var")),
                       "missing tensors features.1.running_var"),
    "extra_tensor": (_edit_tensors(lambda t: t.update(extra=torch.zeros(3))), "unexpected tensors extra"),
    "tensor_of_wrong_shape": (_edit_tensors(lambda t: t.update({"features.1.bias": torch.zeros(5)})), "of shape"),
    "flipped_bytes": (_raw(_flip), "does not match its sha256"),
    "truncated": (_raw(lambda d: d[: len(d) - 100]), "truncated"),
    "truncated_in_header": (_raw(lambda d: d[:40]), "truncated"),
    "empty_file": (_raw(lambda d: b""), "too short"),
    "text_file": (_raw(lambda d: b"this is not a checkpoint\n" * 4), "not a safetensors file"),
    "pickle_named_safetensors": (_pickle_file, "a Python pickle, not safetensors"),
    "torch_save_named_safetensors": (_torch_save_file, "torch.save format"),
    "metadata_is_a_list": (_meta_raw("[1, 2, 3]"), "metadata is a JSON list"),
    "metadata_deeply_nested": (_meta_raw("[" * 200_000 + "]" * 200_000), "nested too deeply"),
    "metadata_not_json": (_meta_raw("{'format': 1"), "metadata is not valid JSON"),
    "header_deeply_nested": (_raw(lambda d: struct.pack("<Q", 400_000) + b"[" * 200_000 + b"]" * 200_000),
                             "nested too deeply"),
    "header_is_a_list": (_raw(lambda d: struct.pack("<Q", 2) + b"[]"), "header is a JSON list"),
    "a_directory": (_directory, ("not a file", "no such file")),  # the argument check or the loader
}


def _snapshot(folder):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_is_one_line_naming_file_and_problem(case, tmp_path, good, capsys):
    make, problem = CASES[case]
    path = make(tmp_path, good)
    before = _snapshot(tmp_path)
    code = main(["info", "--weights", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    problems = (problem,) if isinstance(problem, str) else problem
    assert str(path) in lines[0] and any(p in lines[0] for p in problems), lines[0]
    assert _snapshot(tmp_path) == before


def test_the_good_file_loads_and_matches(good):
    """The oracle for the cases above: the unedited file loads and gives the saved model's outputs."""
    path, tensors, _ = good
    model = load(path)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in tensors.items()}
    assert main(["info", "--weights", str(path)]) == 0


def test_checkpoint_without_digest_loads_unverified(tmp_path, good, caplog):
    """Files of older versions (no digest, format /1) still load, with one warning."""
    _, tensors, meta = good
    old = {k: v for k, v in meta.items() if k != "inputs"}
    old["format"] = "filterprune.model/1"
    path = _write(tmp_path / "old.safetensors", tensors, old, digest=False)
    with caplog.at_level("WARNING", logger="filterprune.checkpoint"):
        model = load(path)
    assert any("unverified" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors[k])


def test_wide_but_honest_architecture_loads(tmp_path):
    """The size bound is relative to the file: an unpruned width_mult=3 model is not refused."""
    model = create_model("convnet_small", width_mult=3.0)
    assert load(save(model, tmp_path / "wide.safetensors")).classifier.in_features == 96 * 4


def test_digest_is_checked_on_training_checkpoints_too(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"a": torch.arange(4.0)}, {"epoch": 0})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"):
        read_checkpoint(path)


class _Evil:
    """Unpickling this runs ``os.system`` (a file appears): the side effect that must never happen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("suffix", [".pt", ".th", ".safetensors"])
def test_a_malicious_pickle_is_never_executed(tmp_path, capsys, suffix):
    """A foreign weights file whose pickle runs code: refused in one line, the code never runs
    (``.pt``/``.th``: ``torch.load(weights_only=True)``; ``.safetensors``: never unpickled at all)."""
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"conv1.weight": _Evil(str(marker))}, path)
    before = _snapshot(tmp_path)
    code = main(["info", "--model", "resnet20", "--weights", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0], err
    assert not marker.exists()
    assert _snapshot(tmp_path) == before
