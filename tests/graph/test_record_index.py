"""``_index_touches``: which indexing expressions select along a channel axis (issue 14: a hand table
with an Ellipsis in every position, ``None`` axes and indices shorter than the tensor)."""

import pytest

from filterprune.graph._record import _index_touches

E, ALL = Ellipsis, slice(None)


@pytest.mark.parametrize("index, ndim, axis, touches", [
    (0, 4, 0, True),                      # x[0]: the batch axis
    (0, 4, 1, False),                     # ... leaves the channels whole
    ((ALL, 0), 4, 1, True),               # x[:, 0]
    ((ALL, slice(0, 2)), 4, 1, True),     # x[:, :2]
    ((ALL, ALL, 0), 4, 1, False),         # x[:, :, 0]
    ((E, 0), 4, 3, True),                 # x[..., 0]: the last axis
    ((E, 0), 4, 1, False),                # ... not the channels
    ((E, 0, ALL), 4, 2, True),            # x[..., 0, :]: Ellipsis expands to two axes
    ((E, 0, ALL), 4, 1, False),
    ((ALL, E, 0), 4, 1, False),           # x[:, ..., 0]
    ((ALL, E, 0), 4, 3, True),
    ((0, E), 4, 0, True),                 # x[0, ...]
    ((0, E), 4, 1, False),
    ((ALL, 1, E, ALL), 5, 1, True),       # x[:, 1, ..., :] on 5-d: the channel axis, then 3 whole axes
    ((ALL, 1, E, ALL), 5, 4, False),
    ((ALL, None, 0), 4, 1, True),         # None adds an axis; it is ignored in this reading
    ((ALL, ALL), 4, 3, False),            # an index shorter than the tensor: the rest is whole
    ((ALL, ALL), 4, 2, False),            # ... from the first axis it does not name
])
def test_index_touches_the_axes_it_selects(index, ndim, axis, touches):
    assert _index_touches(index, ndim, axis) is touches


def test_refusal_message_names_the_first_reason_the_count_and_every_root():
    from filterprune.graph.trace import _refusal_message

    one = _refusal_message([("conv1", "a flatten")])
    assert one == "group conv1: cannot prune through a flatten; to keep these channels whole pass " \
                  "ignored_layers=['conv1']"
    three = _refusal_message([("fc", "a view"), ("conv2", "a gather"), ("conv2", "a flatten")])
    assert three == "group fc: cannot prune through a view (and 2 more); to keep these channels whole pass " \
                    "ignored_layers=['conv2', 'fc']"


def test_keep_idxs_is_the_complement_of_the_plan_in_order():
    from filterprune.graph.groups import ChannelGroup, PrunePlan

    group = ChannelGroup("conv1", 6, ())
    assert PrunePlan({"conv1": [4, 1]}).keep_idxs(group) == [0, 2, 3, 5]
    assert PrunePlan({"other": [0]}).keep_idxs(group) == list(range(6))


def test_refusal_message_of_two_refusals_counts_one_more():
    # issue 14, session 15: "(and N more)" from two refusals on
    from filterprune.graph.trace import _refusal_message

    assert _refusal_message([("conv2", "a view"), ("conv1", "a gather")]) == (
        "group conv2: cannot prune through a view (and 1 more); to keep these channels whole pass "
        "ignored_layers=['conv1', 'conv2']")


def test_members_of_filters_by_kind_and_by_module_type_in_member_order():
    from filterprune.graph.groups import ChannelGroup, Member

    conv1, bn1 = Member("conv1", "out", "Conv2d", ((0,),)), Member("bn1", "out", "BatchNorm2d", ((0,),))
    conv2, bn2 = Member("conv2", "in", "Conv2d", ((0,),)), Member("bn2", "in", "BatchNorm2d", ((0,),))
    group = ChannelGroup("conv1", 1, (conv1, bn1, conv2, bn2))
    assert group.members_of() == [conv1, bn1, conv2, bn2]
    assert group.members_of("out") == [conv1, bn1]
    assert group.members_of(module_type="Conv2d") == [conv1, conv2]
    assert group.members_of("in", "BatchNorm2d") == [bn2]
    assert group.members_of("out", "Linear") == []
