"""Checkpoint metadata validation (``graph/_validate.py``): each bound's last accepted and first refused value,
and each refusal's exact one-line message (the file, then the problem).

The bounds are those of the module docstring: ``arch`` holds at most 64 JSON scalars (numbers finite
and at most 1e6 in magnitude, strings at most 256 characters, booleans, null) and names a registered
model or a class; ``inputs`` holds 1 to 8 shapes of positive integers with at most 2**22 values each;
a registry architecture may take at most ``max(256 MiB, 1024 x the file's tensor bytes)``; a channel
attribute is an integer in [1, the largest tensor dimension in the file] (LayerNorm: a list of them),
conv groups and GroupNorm groups divide their channels, and widths imply the stored tensor shapes.
The functions are called directly, with tiny models built by hand; the whole load path is covered by
``tests/robustness/test_checkpoints.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from filterprune.errors import CheckpointError
from filterprune.graph._validate import check_arch_size, check_inputs_run, validated_record, validated_widths
from filterprune.serialize import FORMAT, READABLE, module_shapes

PATH = Path("ck.safetensors")


def _refused(msg: str):
    """``pytest.raises`` for exactly the one line ``"<file>: <msg>"``."""
    return pytest.raises(CheckpointError, match="^" + re.escape(f"{PATH}: {msg}") + "$")


def _record(arch=None, **extra):
    meta = {"format": FORMAT, "arch": {"name": "convnet_small"} if arch is None else arch, "modules": {}, **extra}
    return validated_record(PATH, meta, READABLE)


# ---------------------------------------------------------------- validated_record: format, arch, inputs


def test_missing_or_non_object_arch_and_modules_are_refused_by_key():
    with _refused("metadata has no 'modules'"):
        validated_record(PATH, {"format": FORMAT, "arch": {"name": "n"}}, READABLE)
    with _refused("metadata 'arch' is a JSON list, expected an object"):
        _record(arch=[1, 2])


def test_arch_of_64_keys_is_accepted_and_of_65_refused():
    arch = {"name": "n", **{f"a{i}": i for i in range(63)}}
    assert _record(arch=arch)["arch"] == arch
    with _refused("metadata 'arch' has 65 keys (at most 64)"):
        _record(arch={**arch, "one_more": 1})


@pytest.mark.parametrize("arch", [{"name": "convnet_small"}, {"class": "mypkg.nets.MyNet"}])
def test_arch_naming_only_a_model_or_only_a_class_is_accepted(arch):
    assert _record(arch=arch) == {"arch": arch, "modules": {}}


def test_arch_naming_neither_a_model_nor_a_class_is_refused():
    with _refused("metadata 'arch' names neither a registered model ('name') nor a class ('class')"):
        _record(arch={"width_mult": 0.5})


def test_arch_arguments_may_be_null_booleans_and_numbers_up_to_1e6_in_magnitude():
    arch = {"name": "n", "weights": None, "pretrained": True, "bias": False, "big": 1e6, "neg": -1_000_000}
    assert _record(arch=arch)["arch"] == arch


@pytest.mark.parametrize("value", [1_000_000.5, -1_000_001, float("inf")])
def test_arch_number_beyond_1e6_in_magnitude_is_refused(value):
    with _refused(f"architecture argument width_mult={value!r} is out of range (|value| <= 1e+06)"):
        _record(arch={"name": "n", "width_mult": value})


def test_arch_string_of_256_characters_is_accepted_and_of_257_refused():
    assert _record(arch={"name": "n", "tag": "x" * 256})["arch"]["tag"] == "x" * 256
    with _refused("architecture argument 'tag' is a string of 257 characters (at most 256)"):
        _record(arch={"name": "n", "tag": "x" * 257})


@pytest.mark.parametrize("value, kind", [({"a": 1}, "dict"), ([1, 2], "list")])
def test_arch_argument_that_is_not_a_scalar_is_refused_naming_its_json_type(value, kind):
    with _refused(f"architecture argument 'width_mult' is a JSON {kind}; only numbers, strings, booleans and "
                  "null are accepted"):
        _record(arch={"name": "n", "width_mult": value})


def test_inputs_are_kept_in_the_record_only_when_recorded():
    assert "inputs" not in _record()
    assert _record(inputs=[[1, 1, 1], [3]])["inputs"] == [[1, 1, 1], [3]]  # 1 is a positive integer


def test_eight_input_shapes_of_eight_dims_are_accepted_and_a_ninth_shape_refused():
    eight = [[1] * 8 for _ in range(8)]
    assert _record(inputs=eight)["inputs"] == eight
    with _refused("metadata 'inputs' must be 1 to 8 shapes (lists of positive integers), got "
                  "[[1], [1], [1], [1], [1], [1], [1], [1], [1]]"):
        _record(inputs=[[1]] * 9)


@pytest.mark.parametrize("inputs, shown", [
    ([], "[]"),
    ([[3, 0]], "[[3, 0]]"),
    ([[1] * 9], "[[1, 1, 1, 1, 1, 1, 1, 1, 1]]"),
    ([[2.0]], "[[2.0]]"),
    ("[[1, 2]]", "'[[1, 2]]'"),  # a JSON string, not a list: shown as its repr
    ([[123456789] * 8, [0]], "[[" + "123456789, " * 7 + "1"),  # 80 characters: the zero is cut off
])
def test_malformed_inputs_are_refused_showing_at_most_80_characters(inputs, shown):
    with _refused(f"metadata 'inputs' must be 1 to 8 shapes (lists of positive integers), got {shown}"):
        _record(inputs=inputs)


def test_input_shape_of_2_to_the_22_values_is_accepted_and_one_more_row_refused():
    assert _record(inputs=[[2048, 2048]])["inputs"] == [[2048, 2048]]
    with _refused("metadata 'inputs' shape [2049, 2048] has more than 4194304 values"):
        _record(inputs=[[3], [2049, 2048]])


# ---------------------------------------------------------------- check_arch_size


def _probe(n_floats: int, cfg=None) -> nn.Module:
    """A model on the meta device whose state holds ``n_floats`` float32 values (no memory taken)."""
    probe = nn.Module()
    probe.register_buffer("w", torch.empty(n_floats, device="meta"))
    if cfg is not None:
        probe.filterprune_cfg = cfg
    return probe


def test_arch_size_up_to_256_mib_is_accepted_for_a_small_file_and_one_value_more_refused():
    small = {"w": torch.zeros(384)}  # 1536 bytes = 1.5 KiB: the 256 MiB floor is the limit
    check_arch_size(PATH, _probe(2**26), small)  # exactly 256 MiB
    with _refused("architecture {'name': 'wide', 'width_mult': 400} would take 257 MiB unpruned, but the file "
                  "holds 1.5 KiB of tensors (limit 256 MiB): refused"):
        check_arch_size(PATH, _probe(2**26 + 2**18, {"name": "wide", "width_mult": 400}), small)


def test_arch_size_limit_is_1024_times_the_file_bytes_when_that_is_larger():
    one_mib = {"w": torch.zeros(2**18)}  # 1 MiB: the limit is 1 GiB
    check_arch_size(PATH, _probe(2**28), one_mib)  # exactly 1 GiB
    with _refused("architecture {} would take 1,024 MiB unpruned, but the file holds 1,024.0 KiB of tensors "
                  "(limit 1,024 MiB): refused"):
        check_arch_size(PATH, _probe(2**28 + 1), one_mib)  # a probe without filterprune_cfg shows {}


# ---------------------------------------------------------------- validated_widths


def _pruned_pair(full: nn.Module, pruned: nn.Module):
    """(full-width model to load into, the pruned model's state, the pruned model's ``modules`` JSON)."""
    return full, pruned.state_dict(), module_shapes(pruned)


def test_widths_of_a_pruned_model_are_returned_without_their_type():
    model, state, modules = _pruned_pair(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(),
                                                       nn.Linear(8, 2)),
                                         nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(),
                                                       nn.Linear(5, 2)))
    assert validated_widths(PATH, model, state, modules) == {
        "0": {"in_channels": 3, "out_channels": 5, "groups": 1}, "1": {"num_features": 5},
        "3": {"in_features": 5, "out_features": 2}}


def test_layernorm_shape_is_a_list_of_widths_and_another_attribute_may_not_be_a_list():
    model, state, modules = _pruned_pair(nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6)),
                                         nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    assert modules["1"] == {"type": "LayerNorm", "normalized_shape": [4]}
    assert validated_widths(PATH, model, state, modules)["1"] == {"normalized_shape": [4]}
    with _refused("layer 0: out_features=[2, 2] is not a width (integers in [1, 4], the largest tensor "
                  "dimension in the file)"):
        validated_widths(PATH, model, state, {**modules, "0": {**modules["0"], "out_features": [2, 2]}})
    with _refused("layer 1: normalized_shape=[] is not a width (integers in [1, 4], the largest tensor "
                  "dimension in the file)"):
        validated_widths(PATH, model, state, {**modules, "1": {"type": "LayerNorm", "normalized_shape": []}})


def test_groupnorm_widths_are_accepted_when_groups_divide_channels_and_refused_otherwise():
    model, state, modules = _pruned_pair(nn.Sequential(nn.Conv2d(2, 8, 1), nn.GroupNorm(2, 8)),
                                         nn.Sequential(nn.Conv2d(2, 6, 1), nn.GroupNorm(2, 6)))
    assert validated_widths(PATH, model, state, modules)["1"] == {"num_groups": 2, "num_channels": 6}
    with _refused("layer 1: num_groups=4 does not divide num_channels=6"):
        validated_widths(PATH, model, state, {**modules, "1": {**modules["1"], "num_groups": 4}})


@pytest.mark.parametrize("cin, cout", [(4, 6), (6, 4)])
def test_conv_groups_must_divide_both_channel_counts(cin, cout):
    """One of the two counts not divisible is enough to refuse."""
    model = nn.Sequential(nn.Conv2d(8, 8, 1, groups=2))
    modules = {"0": {"type": "Conv2d", "in_channels": cin, "out_channels": cout, "groups": 4}}
    with _refused(f"layer 0: groups=4 does not divide in_channels={cin} and out_channels={cout}"):
        validated_widths(PATH, model, model.state_dict(), modules)


def test_width_that_disagrees_with_a_stored_tensor_shape_is_refused_showing_both():
    model, state, modules = _pruned_pair(nn.Sequential(nn.Conv2d(3, 8, 3)), nn.Sequential(nn.Conv2d(3, 2, 3)))
    with _refused("layer 0 (in_channels=3, out_channels=3, groups=1) implies 0.weight of shape (3, 3, 3, 3), "
                  "the file holds (2, 3, 3, 3)"):
        validated_widths(PATH, model, state, {"0": {**modules["0"], "out_channels": 3}})


def test_layers_the_checkpoint_describes_wrongly_are_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    state, modules = model.state_dict(), module_shapes(model)
    with _refused("layer 'head' of the checkpoint is not in Sequential"):
        validated_widths(PATH, model, state, {**modules, "head": {"type": "Linear"}})
    with _refused("modules['0'] is a JSON list, expected an object"):
        validated_widths(PATH, model, state, {**modules, "0": [3, 4]})
    with _refused("layer 0 is a Conv2d in Sequential, the checkpoint says 'Linear'"):
        validated_widths(PATH, model, state, {**modules, "0": {**modules["0"], "type": "Linear"}})
    with _refused("layer 2 (BatchNorm2d): 'eps' is not a channel attribute (accepted: num_features); refused"):
        validated_widths(PATH, model, state, {**modules, "2": {**modules["2"], "eps": 1000.0}})
    with _refused("layer 1 (ReLU): 'inplace' is not a channel attribute (accepted: none); refused"):
        validated_widths(PATH, model, state, {**modules, "1": {"type": "ReLU", "inplace": True}})


def test_tensor_names_that_differ_list_at_most_three_of_each_kind():
    two_linears = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))  # 4 tensors
    with _refused("tensors do not match Sequential: missing tensors 0.weight, 0.bias, 1.weight ..."):
        validated_widths(PATH, two_linears, {}, {})  # no tensors at all: nothing to take widths from
    linear_prelu = nn.Sequential(nn.Linear(2, 3), nn.PReLU(3))  # 3 tensors
    with _refused("tensors do not match Sequential: missing tensors 0.weight, 0.bias, 1.weight"):
        validated_widths(PATH, linear_prelu, {}, {})
    state = {**linear_prelu.state_dict(), "a": torch.zeros(1), "b": torch.zeros(1), "c": torch.zeros(1)}
    del state["1.weight"]
    with _refused("tensors do not match Sequential: missing tensors 1.weight; unexpected tensors a, b, c"):
        validated_widths(PATH, linear_prelu, state, {})
    with _refused("tensors do not match Sequential: unexpected tensors a, b, c ..."):
        validated_widths(PATH, linear_prelu, {**state, "1.weight": torch.ones(3), "d": torch.zeros(1)}, {})


# ---------------------------------------------------------------- check_inputs_run


def test_recorded_inputs_are_run_in_the_dtype_of_the_models_parameters():
    """A float64 model runs on float64 zeros: float32 ones would fail and refuse an honest file."""
    check_inputs_run(PATH, nn.Sequential(nn.Linear(3, 2)).double(), [[3]])
    check_inputs_run(PATH, nn.Flatten(), [[2, 2]])  # no parameters: float32


class _Refuses(nn.Module):
    def forward(self, x):
        raise ValueError()


def test_model_failing_on_its_recorded_inputs_is_refused_with_the_reason():
    with _refused("the loaded model fails on its recorded input shapes [[4]] (ValueError); its layer widths "
                  "disagree"):
        check_inputs_run(PATH, _Refuses(), [[4]])  # an exception without a message: its type is the reason
    with pytest.raises(CheckpointError, match=r"^ck\.safetensors: the loaded model fails on its recorded input "
                                              r"shapes \[\[4\]\] \(.+\); its layer widths disagree$"):
        check_inputs_run(PATH, nn.Sequential(nn.Linear(3, 2)), [[4]])
