"""The op recorder (``graph._record``): the channel axis and the "touches the channels" flag it records per op.

Each case runs one op on a leaf (B, C, H, W) tensor, whose channel axis is 1, under :class:`OpRecorder` and
checks the :class:`OpInfo` kept for the result against the op's semantics worked out by hand: where axis 1
lands after a permute/transpose/movedim/stack/reshape, whether a split, flip, roll or reduction acts on it.
Ops given their dims as keywords must read the same as positional ones. Then whole nets where the axis
decides the verdict: a concat along the channel axis of a channels-last map is pruned through
(pruned == masked), which needs the cat's axis read from the tensors inside its list.
"""

from __future__ import annotations

import pytest
import torch
from graph_nets import pruned_matches_masked
from torch import nn

from filterprune.graph._record import OpRecorder, _reshaped_axis, recording
from filterprune.graph.groups import PrunePlan
from filterprune.graph.trace import trace_groups


def _record(fn, shape=(2, 4, 3, 5)):
    """(func, axis, touches) recorded for ``fn(x)`` on a leaf x (channel axis 1); the first output of a split."""
    x = torch.randn(*shape, requires_grad=True)
    with OpRecorder() as rec:
        y = fn(x)
    y = y[0] if isinstance(y, (tuple, list)) else y
    info = rec.info[y.grad_fn]
    return info.func, info.axis, info.touches


# --- axis moves -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, axis", [
    (lambda x: x.permute(0, 2, 3, 1), 3),
    (lambda x: x.permute(dims=(0, 2, 3, 1)), 3),          # dims as a keyword
    (lambda x: x.permute(3, 1, 0, 2), 1),
    (lambda x: x.transpose(1, 3), 3),
    (lambda x: x.transpose(2, 3), 1),                     # another pair: the channels stay
    (lambda x: x.transpose(dim0=2, dim1=3), 1),
    (lambda x: x.movedim(1, -1), 3),                      # channels-last
    (lambda x: x.movedim(3, 0), 2),                       # another axis moved before the channels
])
def test_permutes_and_transposes_move_the_channel_axis_to_where_dim_1_lands(fn, axis):
    assert _record(fn)[1:] == (axis, False)


@pytest.mark.parametrize("fn, axis", [
    (lambda x: x.transpose(dim0=1, dim1=3), 3),           # keywords: read like positional dims
    (lambda x: x.transpose(0, dim1=1), 0),
    (lambda x: x.swapaxes(axis0=1, axis1=2), 2),
    (lambda x: x.movedim(source=1, destination=3), 3),
    (lambda x: x.movedim((1, 2), (3, 1)), 3),             # sequences: axis 1 goes to 3, axis 2 to 1
    (lambda x: x.movedim((0, 2), (1, 0)), 2),             # 0 -> 1, 2 -> 0: the rest (1, 3) fill 2, 3
    (lambda x: torch.moveaxis(x, [0], [3]), 0),
])
def test_transpose_and_movedim_read_dims_given_as_keywords_or_sequences(fn, axis):
    """Found by this test: keyword dims were read as (0, 0), so ``transpose(dim0=1, dim1=3)`` left the axis at 1,
    and ``movedim`` with sequences raised TypeError (``tuple % int``) inside the recorder, failing the trace."""
    assert _record(fn)[1:] == (axis, False)


@pytest.mark.parametrize("fn, axis", [
    (lambda x: torch.stack([x, x], 0), 2),                # a new axis before the channels moves them up
    (lambda x: torch.stack([x, x], 1), 2),
    (lambda x: torch.stack([x, x], 2), 1),                # after them: they stay at 1
    (lambda x: torch.stack([x, x], -1), 1),
    (lambda x: torch.stack([x, x], dim=-5), 2),           # -5 of the 5-d result is 0
    (lambda x: torch.stack(tensors=[x, x], dim=3), 1),
    (lambda x: torch.cat([x, x], 2), 1),
    (lambda x: torch.cat([x.permute(0, 2, 3, 1)] * 2, -1), 3),  # the first tensor's axis, not a fixed 1
    (lambda x: torch.cat(tensors=[x.movedim(1, 2), x.movedim(1, 2)], dim=0), 2),
    (lambda x: torch.concat([x.movedim(1, 3), x.movedim(1, 3)], 0), 3),
])
def test_stack_and_cat_take_the_channel_axis_of_the_tensors_in_their_list(fn, axis):
    """Found by this test: cat never read its list (axis always 1), stack always added 1 to its input's axis."""
    assert _record(fn)[1:] == (axis, False)


def test_ops_given_tensors_only_inside_a_list_keep_the_channels_on_dim_1():
    """hstack concatenates a (B, C, H, W) list along dim 1: no tensor operand, so the default axis 1."""
    assert _record(lambda x: torch.hstack([x, x])) == ("hstack", 1, False)


@pytest.mark.parametrize("fn, axis", [
    (lambda x: x.flatten(2), 1),                          # (2, 4, 15): the spatial axes merge after the channels
    (lambda x: x.reshape(2, 4, 15, 1), 1),
    (lambda x: x.unsqueeze(0), 2),
    (lambda x: x.flatten(1), None),                       # channels merged with H, W
    (lambda x: x.reshape(8, 15), None),                   # batch merged with the channels
])
def test_reshapes_keep_the_channel_axis_only_when_it_survives_whole(fn, axis):
    assert _record(fn)[1:] == (axis, False)


@pytest.mark.parametrize("shape_in, shape_out, axis, expected", [
    ((2, 4, 3, 5), (2, 4, 15), 1, 1),
    ((2, 4, 3, 5), (8, 3, 5), 1, None),                   # merged with the batch
    ((2, 4, 3, 5), (2, 2, 2, 15), 1, None),               # split in two
    ((2, 4, 3, 5), (1, 2, 4, 15), 1, 2),                  # a leading 1: the product before is still 2
    ((6, 4, 5), (2, 3, 4, 5), 1, 2),                      # the axis before split: 2 * 3 == 6
    ((6, 4, 5), (3, 2, 4, 5), 1, 2),
    ((6, 4, 5), (4, 6, 5), 1, None),                      # the product before jumps from 4 to 24, past 6
])
def test_reshaped_axis_finds_the_output_axis_with_the_same_size_and_the_same_product_before(
        shape_in, shape_out, axis, expected):
    assert _reshaped_axis(shape_in, shape_out, axis) == expected


# --- ops that act on the channel axis or not ------------------------------------------------------------

@pytest.mark.parametrize("fn, axis, touches", [
    (lambda x: x.flip(1), 1, True),
    (lambda x: x.flip(2), 1, False),
    (lambda x: x.flip(dims=(1,)), 1, True),
    (lambda x: x.flip(dims=(2, 3)), 1, False),
    (lambda x: x.roll(1, 1), 1, True),
    (lambda x: x.roll(1, dims=2), 1, False),              # roll's dims keyword
    (lambda x: x.roll(1, dims=1), 1, True),
    (lambda x: x.split(2, 1), 1, True),
    (lambda x: x.split(2, 2), 1, False),                  # split's dim is its third argument
    (lambda x: x.chunk(3, 3), 1, False),
    (lambda x: x.narrow(1, 0, 2), 1, True),               # narrow's dim is its second argument
    (lambda x: x.narrow(2, 1, 2), 1, False),
    (lambda x: x.select(1, 0), 1, True),
    (lambda x: x.index_select(3, torch.tensor([0, 2])), 1, False),
])
def test_splits_flips_and_rolls_touch_the_channels_only_along_their_dim(fn, axis, touches):
    assert _record(fn)[1:] == (axis, touches)


@pytest.mark.parametrize("fn, axis, touches", [
    (lambda x: x.sum(1), None, True),                     # the channels reduced away
    (lambda x: x.sum(1, keepdim=True), 1, True),          # kept as a size-1 axis
    (lambda x: x.sum(dim=1), None, True),
    (lambda x: x.sum(dim=2), 1, False),                   # dim as a keyword: a spatial reduction
    (lambda x: x.mean(dim=(0,)), 0, False),               # the batch axis before the channels is gone
    (lambda x: x.mean((2, 3)), 1, False),
    (lambda x: x.amax(dim=(0, 2), keepdim=True), 1, False),
    (lambda x: x.sum(), None, True),                      # over everything
])
def test_reductions_drop_the_channel_axis_or_shift_it_by_the_axes_reduced_before_it(fn, axis, touches):
    assert _record(fn)[1:] == (axis, touches)


@pytest.mark.parametrize("fn, axis", [
    (lambda x: nn.functional.linear(x, torch.randn(6, 5)), 3),
    (lambda x: nn.functional.layer_norm(x, (5,)), 3),
    (lambda x: x @ torch.randn(5, 6), 3),
])
def test_linear_layer_norm_and_matmul_put_the_channels_last_without_touching_the_input_channels(fn, axis):
    assert _record(fn)[1:] == (axis, False)


def test_a_function_without_a_name_is_recorded_by_its_text():
    """``handle_torch_function`` with a callable object: the recorder names it by ``str(func)``."""
    class _Op:
        def __call__(self, x):
            return x * 2

        def __repr__(self):
            return "_Double_"

    x = torch.randn(2, 3, requires_grad=True)
    with OpRecorder() as rec:
        y = torch.overrides.handle_torch_function(_Op(), (x,), x)
    assert rec.info[y.grad_fn].func == "double"


# --- module hooks ---------------------------------------------------------------------------------------

class _EinsumLinear(nn.Linear):
    """A Linear subclass computing through einsum: the recorder cannot tell its axis from the op."""

    def forward(self, x):
        return torch.einsum("...i,oi->...o", x, self.weight)


class _Pair(nn.Module):
    def forward(self, x):
        return x, x + 1


class _Total(nn.Module):
    def forward(self, x):
        return x.sum((1, 2, 3))


def test_a_linear_module_puts_its_result_channels_last_whatever_op_computed_them():
    model = nn.Sequential(_EinsumLinear(5, 6))
    x = torch.randn(2, 3, 5)
    with recording(model) as rec:
        y = model(x)
    assert rec.axis_of(y) == 2


class _SecondOfPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = _Pair()

    def forward(self, x):
        return self.pair(x)[1]


def test_submodules_returning_a_tuple_or_a_1d_tensor_are_recorded_without_error():
    """The forward hook must not read ``grad_fn`` of a tuple, nor ``shape[1]`` of a 1-d result."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _Total())
    pair = _SecondOfPair()
    x = torch.randn(2, 3, 4, 4)
    with recording(model) as rec, recording(pair):
        y = model(x)
        b = pair(x)
    assert y.shape == (2,) and rec.axis_of(y) is None  # summed over the channels
    assert torch.equal(b, x + 1)


# --- whole nets: the concat's axis decides the verdict --------------------------------------------------

class _Mid(nn.Module):
    def __init__(self, fn, c2_in):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(c2_in, 5, 1)
        self.fn = fn

    def forward(self, x):
        return self.conv2(self.fn(self.conv(x)))


@pytest.mark.parametrize("fn, c2_in, idxs", [
    # a concat along the channel axis of a channels-last map: channel c feeds conv2 inputs c and c + 4
    (lambda y: torch.cat([y.permute(0, 2, 3, 1)] * 2, -1).permute(0, 3, 1, 2), 8,
     tuple((c, c + 4) for c in range(4))),
    # stacking after the channel axis and summing the copies: the channels stay at dim 1 all along
    (lambda y: torch.stack([y, y], 2).sum(2), 4, tuple((c,) for c in range(4))),
])
def test_concat_or_stack_off_dim_1_but_not_across_channels_is_pruned_through(fn, c2_in, idxs):
    """Found by this test: cat's axis was always recorded as 1 (its tensors sit in a list, which the recorder
    never read) and stack's always as one more than its input's, so both nets were kept whole."""
    torch.manual_seed(0)
    model, x = _Mid(fn, c2_in).eval(), torch.randn(2, 3, 5, 5)
    groups = trace_groups(model, x)
    group = next(g for g in groups if g.id == "conv")
    assert group.prunable and group.reason == ""
    assert next(m for m in group.members if m.module == "conv2").idxs == idxs
    pruned = pruned_matches_masked(model, groups, PrunePlan({"conv": [1]}), x)
    assert pruned.conv.out_channels == 3


# --- issue 14: survivors of OpRecorder._axis --------------------------------------------------------------

def _named(name):
    """A user function called ``name`` that dispatches through the torch-function protocol (doubles its tensor)."""
    def fn(*args, **kwargs):
        return [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)][0] * 2
    fn.__name__ = name
    return fn


_dispatch = torch.overrides.handle_torch_function


@pytest.mark.parametrize("fn, expected", [
    (lambda x: _dispatch(_named("cat"), (x,), x=x), ("cat", 1, False)),        # no list at all: default axis 1
    (lambda x: _dispatch(_named("cat"), (x,), [], x), ("cat", 1, False)),      # an empty list: default axis 1
    (lambda x: _dispatch(_named("permute"), (x,), x), ("permute", None, False)),  # no dims: the axis is lost
    (lambda x: _dispatch(_named("transpose"), (x,), x), ("transpose", 1, False)),  # no dims: read as (0, 0)
    (lambda x: _dispatch(_named("getitem"), (x,), x), ("getitem", 1, False)),  # no index: nothing selected
])
def test_ops_named_like_torch_ops_but_missing_their_arguments_read_the_documented_defaults(fn, expected):
    """The recorder must not crash on a user function named like a torch op whose arguments it cannot find."""
    assert _record(fn) == expected


@pytest.mark.parametrize("fn, expected", [
    (lambda x: x.permute((0, 2, 3, 1)), 3),                      # the dims as one tuple argument
    (lambda x: torch.permute(x, (3, 1, 0, 2)), 1),
])
def test_permute_reads_its_dims_given_as_one_sequence(fn, expected):
    assert _record(fn)[1:] == (expected, False)


def test_a_1d_result_of_an_op_without_tensor_operands_has_no_channel_axis():
    assert _record(lambda x: torch.hstack([x, x]), shape=(4,)) == ("hstack", None, False)


@pytest.mark.parametrize("fn, touches", [
    (lambda x: x.gather(1, torch.zeros(2, 2, 3, 5, dtype=torch.long)), True),   # gathers channels
    (lambda x: x.gather(2, torch.zeros(2, 4, 1, 5, dtype=torch.long)), False),  # gathers rows
])
def test_gather_touches_the_channels_only_along_the_channel_axis(fn, touches):
    assert _record(fn) == ("gather", 1, touches)


@pytest.mark.parametrize("fn, expected", [
    (lambda x: x.sum(1, True), (1, True)),                       # keepdim as the third positional argument
    (lambda x: x.sum(2, True), (1, False)),
    (lambda x: x.sum(0, False), (0, False)),
])
def test_reductions_read_keepdim_given_positionally(fn, expected):
    assert _record(fn)[1:] == expected


def test_a_prelu_of_a_vector_has_no_channel_axis():
    """Found by this test: PReLU (like every dim-1 op) was recorded with axis 1 even on a 1-d result, so the
    tracer indexed past the shape (IndexError in the broadcast cut) on ``prelu(h.sum(1))``."""
    assert _record(lambda x: nn.functional.prelu(x, torch.tensor([0.25])), shape=(4,)) == ("prelu", None, False)


@pytest.mark.parametrize("fn, axis", [
    (lambda x: x.swapdims(1, 3), 3),
    (lambda x: x.swapaxes(1, 2), 2),
])
def test_swapdims_and_swapaxes_move_the_channel_axis_like_transpose(fn, axis):
    assert _record(fn)[1:] == (axis, False)


@pytest.mark.parametrize("fn, touches", [
    (lambda x: x[..., :2], False),          # the ellipsis covers the channels: a full slice there
    (lambda x: x[..., 1:3, :, :], True),    # ... which is empty here: the channels are sliced
    (lambda x: x[:, :, ..., 0], False),
])
def test_an_index_with_an_ellipsis_is_read_against_the_tensors_rank(fn, touches):
    assert _record(fn)[1:] == (1, touches)

