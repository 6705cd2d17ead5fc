"""The tracer's verdict on single ops on a channel path (``trace._op_issue``) and its dim wrapping.

Each case puts one op between a conv and a 1x1 conv and checks the exact verdict for the conv's group:
prunable, kept whole with the exact reason, or refused with the exact message. The oracle is the op's
semantics worked out by hand: a concat along the channel axis (dim 1, or -3 of a 4-D map) or a reduction
over a spatial axis leaves the channels alone; a concat along another axis, a reduction over the
channels, a transpose of a merged channel axis do not. Ops that run inside a composite (``torch.diff``,
``torch.trapezoid``, ``F.rms_norm``, ``F.kl_div``) are not seen by the op recorder, so the verdict then
comes from the autograd node's own saved dims, which autograd stores as unsigned 64-bit integers
(-1 is 2**64 - 1). Stub nodes pin the fallbacks for nodes torch no longer produces (no grad_fn, no
saved dim). Then whole groups: refusals naming the model class or an unresizable module, the
"X is ignored; <issue>" reasons, and groups a grouped conv ties across its conv groups (kept whole and
otherwise unchanged; whatever stays prunable must survive surgery).
"""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from graph_nets import MidNet, _Lambda
from torch import nn
from torch_pruning import ops as tp_ops

from filterprune.errors import PruningError
from filterprune.graph._record import OpRecorder
from filterprune.graph.groups import ChannelGroup, Member, PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import _op_issue, _wrap_dim, trace_groups


def _mid(fn, c2_in=8):
    """conv (8 channels) -> ``_Lambda(fn)`` as ``mid`` -> 1x1 conv (``c2_in`` inputs) -> global mean -> linear."""
    return MidNet(_Lambda(fn), c2_in)


def _conv_group(fn, c2_in=8):
    groups = {g.id: g for g in trace_groups(_mid(fn, c2_in).eval(), torch.randn(2, 3, 8, 8))}
    assert groups["conv2"].prunable  # the op only concerns the first group
    return groups["conv"]


def _twice(x):
    return [x, x]


# --- concat -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, -3])
def test_concat_along_the_channel_axis_is_pruned_through(dim):
    """dim -3 of a 4-D map is the channel axis: autograd saves it as 2**64 - 3, which must wrap to 1."""
    group = _conv_group(lambda x: torch.cat(_twice(x), dim), c2_in=16)
    assert group.prunable and group.reason == ""
    conv2 = next(m for m in group.members if m.module == "conv2")
    assert conv2.idxs == tuple((c, c + 8) for c in range(8))  # channel c feeds both copies


@pytest.mark.parametrize("dim", [2, 3, -1, -2])
def test_concat_along_a_spatial_axis_keeps_the_group_whole(dim):
    group = _conv_group(lambda x: torch.cat(_twice(x), dim))
    assert not group.prunable
    assert group.reason == "cat in mid (_Lambda) concatenates along a non-channel axis"


def test_concat_inside_a_composite_op_is_judged_by_its_saved_dim():
    """torch.diff(prepend=) concatenates along dim 2 internally; the recorder only sees ``diff``, so the
    cat node has no recorded info and the tracer falls back to channels on dim 1 of a 4-D map."""
    group = _conv_group(lambda x: torch.diff(x, dim=2, prepend=x[:, :, :1]))
    assert not group.prunable
    assert group.reason == "CatBackward0 concatenates along a non-channel axis"


def _stub_node(module, grad_fn, inputs=(), outputs=()):
    return SimpleNamespace(module=module, grad_fn=grad_fn, inputs=list(inputs), outputs=list(outputs))


class _CatGradFn:
    """A cat autograd node as old torch versions made it: a name, and a ``_saved_dim`` only if given."""

    def __init__(self, dim=None):
        if dim is not None:
            self._saved_dim = dim

    def name(self):
        return "CatBackward0"


def test_concat_node_without_a_saved_dim_is_taken_as_a_channel_concat():
    node = _stub_node(tp_ops._ConcatOp(0), _CatGradFn())
    assert _op_issue(node, OpRecorder(), nn.Identity()) is None
    # the same node with a saved spatial dim (the contrast: the stub does reach the concat check)
    node = _stub_node(tp_ops._ConcatOp(0), _CatGradFn(2))
    assert _op_issue(node, OpRecorder(), nn.Identity()) == (
        "keep", "CatBackward0 concatenates along a non-channel axis")


# --- ops without a grad_fn name -----------------------------------------------------------------------

def test_an_op_node_without_grad_fn_is_refused_as_unknown():
    """No grad_fn: the op is 'unknown', which is refused wherever it acts, and is called 'an op'."""
    node = _stub_node(tp_ops._ElementWiseOp(0, "Unknown"), None, inputs=[object()])
    assert _op_issue(node, OpRecorder(), nn.Identity()) == (
        "refuse", "an op moves or selects channels in a way the trace cannot follow")


# --- transpose / permute ------------------------------------------------------------------------------

class _FlatPermute(nn.Module):
    """conv -> flatten(1) (channels merged with space) -> permute there and back -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1).permute(1, 0).permute(1, 0))


def test_permute_of_a_merged_channel_axis_is_refused():
    """After flatten(1) there is no channel axis left to follow, so a permute is refused as a possible
    channel shuffle (even this one, which undoes itself), naming the permute, not another op."""
    msg = ("group conv: cannot prune through permute in the model forward (_FlatPermute) transposes the "
           "channel axis into another one (a channel shuffle?); to keep these channels whole pass "
           "ignored_layers=['conv']")
    with pytest.raises(PruningError, match=f"^{re.escape(msg)}$"):
        trace_groups(_FlatPermute(), torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("fn", [lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2),
                                lambda x: x.transpose(1, 3).transpose(1, 3)])
def test_moving_the_channel_axis_and_back_is_pruned_through(fn):
    group = _conv_group(fn)
    assert group.prunable
    assert next(m for m in group.members if m.module == "conv2").idxs == tuple((c,) for c in range(8))


# --- reductions ---------------------------------------------------------------------------------------

def test_softmax_over_channels_feeding_a_conv_keeps_the_group_whole():
    """The softmax's only consumer is a conv: that must not excuse it (only a Linear's own
    matmul/reshape nodes, which have no recorded info, are skipped that way)."""
    group = _conv_group(lambda x: x.softmax(1))
    assert not group.prunable
    assert group.reason == "softmax in mid (_Lambda) reduces over the channels"


@pytest.mark.parametrize("fn", [
    lambda x: F.rms_norm(x, (8,)),  # MeanBackward1 over dim 3 (width)
    lambda x: x * torch.trapezoid(x, dim=-1).unsqueeze(-1),  # SumBackward1 over dim 2**64 - 1 = -1 = 3
])
def test_composite_reduction_over_a_spatial_axis_is_pruned_through(fn):
    group = _conv_group(fn)
    assert group.prunable and group.reason == ""


@pytest.mark.parametrize("fn, reason", [
    (lambda x: F.rms_norm(x, (8, 8, 8)), "MeanBackward1 reduces over the channels"),  # dims (3, 2, 1)
    (lambda x: x * torch.trapezoid(x, dim=-3).unsqueeze(1), "SumBackward1 reduces over the channels"),  # 2**64-3
    (lambda x: x * torch.trapezoid(x, dim=1).unsqueeze(1), "SumBackward1 reduces over the channels"),
    # a full sum (SumBackward0 saves no dim at all) over every channel
    (lambda x: x * F.kl_div(x, x.detach(), reduction="batchmean", log_target=True),
     "SumBackward0 reduces over the channels"),
])
def test_composite_reduction_over_the_channels_keeps_the_group_whole(fn, reason):
    group = _conv_group(fn)
    assert not group.prunable and group.reason == reason


# --- ops that move or mix channels ---------------------------------------------------------------------

_EYE = torch.eye(64)


@pytest.mark.parametrize("fn, op", [
    (lambda x: x.flip(1), "flip"),  # reverses the channels
    (lambda x: x.roll(1, 1), "roll"),  # rotates the channels
    # a batched matmul over space: refused even though the recorder says it leaves the channel axis alone
    (lambda x: torch.bmm(x.flatten(2), _EYE.expand(x.shape[0], 64, 64)).view_as(x), "bmm"),
])
def test_ops_that_move_or_mix_channels_are_refused(fn, op):
    msg = (f"group conv: cannot prune through {op} in mid (_Lambda) moves or selects channels in a way the trace "
           "cannot follow; to keep these channels whole pass ignored_layers=['conv']")
    with pytest.raises(PruningError, match=f"^{re.escape(msg)}$"):
        trace_groups(_mid(fn).eval(), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("fn", [lambda x: x.flip(3), lambda x: x.roll(1, 2)])
def test_flip_or_roll_of_a_spatial_axis_is_pruned_through(fn):
    """flip/roll are refused by name only when the recorder could not tell which axis they act on."""
    group = _conv_group(fn)
    assert group.prunable and group.reason == ""


# --- reasons and refusals of whole groups --------------------------------------------------------------

class _RootScale(nn.Module):
    """A per-channel scale that is a parameter of the model itself, not of a submodule."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(4, 1, 1))
        self.conv2 = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.conv2(self.conv(x) * self.gamma).mean((2, 3)))


_ROOT_PARAM = ("_RootScale model computes with its own nn.Parameter 'gamma' on a channel path "
               "(register a LayerOp for _RootScale with fp.register_layer_op)")


def test_a_parameter_of_the_model_itself_is_refused_naming_the_model_class():
    msg = f"group conv: cannot prune through {_ROOT_PARAM}; to keep these channels whole pass ignored_layers=['conv']"
    with pytest.raises(PruningError, match=f"^{re.escape(msg)}$"):
        trace_groups(_RootScale(), torch.randn(2, 3, 8, 8))


def test_an_ignored_group_gives_both_reasons():
    """An ignored group's reason is 'X is ignored' followed by the first op issue on its path, a refusal
    (which ignoring turns into a reason) or a keep."""
    groups = {g.id: g for g in trace_groups(_RootScale(), torch.randn(2, 3, 8, 8), ignored_layers=["conv"])}
    assert groups["conv"].reason == f"conv is ignored; {_ROOT_PARAM}" and not groups["conv"].prunable
    model = _mid(lambda x: torch.cat(_twice(x), 2))
    groups = {g.id: g for g in trace_groups(model, torch.randn(2, 3, 8, 8), ignored_layers=[model.conv])}
    assert groups["conv"].reason == "conv is ignored; cat in mid (_Lambda) concatenates along a non-channel axis"
    assert groups["conv2"].prunable and groups["conv2"].reason == ""


class _ResidualScale(nn.Module):
    """conv a + conv b (one group rooted at a), then a per-channel scale owned by the model itself."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.gamma = nn.Parameter(torch.ones(4, 1, 1))
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.head((self.a(x) + self.b(x)) * self.gamma).mean((2, 3))


def test_ignoring_a_coupled_layer_that_is_not_the_root_also_lifts_the_refusal():
    """b's output channels are tied to a's: ignoring b keeps the whole group, so its refusal becomes a
    reason instead of an error, exactly as when ignoring the root a."""
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(PruningError, match=r"^group a: cannot prune through _ResidualScale model computes"):
        trace_groups(_ResidualScale(), x)
    why = ("_ResidualScale model computes with its own nn.Parameter 'gamma' on a channel path "
           "(register a LayerOp for _ResidualScale with fp.register_layer_op)")
    for ignored in ("a", "b"):
        group = {g.id: g for g in trace_groups(_ResidualScale(), x, ignored_layers=[ignored])}["a"]
        assert not group.prunable and group.reason == f"{ignored} is ignored; {why}"


class _EmbeddingPlusLinear(nn.Module):
    """An embedding added to a Linear's output: the Linear's group runs through the embedding table."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(3, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, idx, feat):
        return self.fc(self.emb(idx) + self.fc1(feat))


def test_a_module_the_engine_cannot_resize_is_refused_naming_its_class():
    msg = ("group fc1: cannot prune through emb (Embedding) sits on a channel path and the engine cannot resize "
           "it (register a LayerOp for Embedding with fp.register_layer_op); to keep these channels whole pass "
           "ignored_layers=['fc1']")
    with pytest.raises(PruningError, match=f"^{re.escape(msg)}$"):
        trace_groups(_EmbeddingPlusLinear(), (torch.randint(0, 10, (2,)), torch.randn(2, 3)))


# --- grouped convs: channels tied across conv groups ----------------------------------------------------

class _GroupedAfter(nn.Module):
    """conv a -> grouped conv g (groups=2) -> linear; ``cat``: g reads a's and b's channels concatenated."""

    def __init__(self, a_width, g, cat=False):
        super().__init__()
        self.cat = cat
        self.a = nn.Conv2d(3, a_width, 1)
        self.b = nn.Conv2d(3, a_width, 1) if cat else None
        self.g = g
        self.fc = nn.Linear(g.out_channels, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1) if self.cat else self.a(x)
        return self.fc(self.g(y).mean((2, 3)))


def _whole(gid, size, reason, *members):
    return ChannelGroup(gid, size, tuple(Member(n, k, t, tuple((i,) for i in idxs)) for n, k, t, idxs in members),
                        prunable=False, reason=reason, reaches_output=False)


@pytest.mark.parametrize("a_width, g, reason", [
    # block of 1 input channel per conv group: channel 0 ties to channel 1, so no unit is left to cut
    (2, nn.Conv2d(2, 4, 1, groups=2), "its grouped convs tie all its channels together"),
    (4, nn.ConvTranspose2d(4, 4, 3, groups=2), "g is a grouped transposed conv (groups=2)"),
])
def test_a_group_its_grouped_conv_cannot_split_is_returned_whole_and_unchanged(a_width, g, reason):
    """The group as traced (size, members, not an output) with prunable=False and the tie's reason."""
    groups = {grp.id: grp for grp in trace_groups(_GroupedAfter(a_width, g), torch.randn(2, 3, 4, 4))}
    assert groups["a"] == _whole("a", a_width, reason, ("a", "out", "Conv2d", range(a_width)),
                                 ("g", "in", type(g).__name__, range(a_width)))


def test_a_grouped_conv_reading_two_groups_keeps_both_whole():
    """g (groups=2) reads a's 4 channels in its first conv group and b's 4 in its second: cutting a channel
    of either would leave g's conv groups with different input positions, which surgery refuses.
    Found by this test: only a (the first) was kept whole; b was called prunable and fp.prune then failed in
    surgery with "a grouped conv (groups=2) must lose the same channel positions in every group"."""
    model = _GroupedAfter(4, nn.Conv2d(8, 4, 1, groups=2), cat=True)
    x = torch.randn(2, 3, 4, 4)
    groups = {grp.id: grp for grp in trace_groups(model, x)}
    why = "g (groups=2) reads channels of this group and of others in its conv groups"
    assert groups["a"] == _whole("a", 4, why, ("a", "out", "Conv2d", range(4)), ("g", "in", "Conv2d", range(4)))
    assert groups["b"] == _whole("b", 4, why, ("b", "out", "Conv2d", range(4)), ("g", "in", "Conv2d", range(4, 8)))
    assert groups["g"].prunable and groups["g"].size == 2  # g's outputs 0/2 and 1/3 go together
    for grp in groups.values():  # whatever is called prunable can lose a unit
        if grp.prunable:
            pruned = apply_plan(copy.deepcopy(model), list(groups.values()), PrunePlan({grp.id: [0]}))
            assert pruned(x).shape == (2, 3)


# --- _wrap_dim ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("d, ndim, expected", [
    (0, 4, 0), (1, 4, 1), (3, 4, 3),  # non-negative dims are kept
    (-1, 4, 3), (-3, 4, 1), (-4, 4, 0), (-1, 3, 2),  # negative dims wrap by +ndim
    (2**64 - 1, 4, 3), (2**64 - 3, 4, 1), (2**64 - 4, 4, 0), (2**64 - 1, 5, 4),  # unsigned storage of -1, -3, -4
    (2**63, 4, 4 - 2**63),  # the smallest stored value that is negative: -2**63
    (2**63 - 1, 4, 2**63 - 1),  # the largest that is not
])
def test_wrap_dim_reads_unsigned_storage_and_wraps_negative_dims(d, ndim, expected):
    assert _wrap_dim(d, ndim) == expected
