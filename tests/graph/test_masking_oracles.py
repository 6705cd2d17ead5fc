"""Consumer slices of a mask, checked by hand on hand-built groups.

A registered layer op is asked where to write with exactly the input indices of its consumer slice,
and the engine fills what it names at those indices; a consumer the engine cannot mask (a depthwise
conv or a norm listed as an ``"in"`` member) is refused in one line naming the module and its type,
with nothing changed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from filterprune.errors import PruningError
from filterprune.graph import ops
from filterprune.graph.groups import ChannelGroup, Member
from filterprune.graph.masking import mask
from filterprune.graph.ops import LayerOp, register_layer_op


class _Mix(nn.Module):
    """A user's 1x1 mixing layer written with ``F.conv2d`` (weight: out x in)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.arange(1.0, 1.0 + cout * cin).reshape(cout, cin))

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, None, None])


class _RecordingMixOp(LayerOp):
    """Names the weight's input dim and records the indices the engine asks about."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def mask_in(self, m, idxs):
        self.asked.append(idxs.tolist())
        return [(m.weight, 1, 0.0)]

    def channel_attrs(self, m):
        return {}


def test_registered_op_is_asked_about_exactly_the_masked_input_indices(monkeypatch):
    monkeypatch.setattr(ops, "_OPS", dict(ops._OPS))
    op = _RecordingMixOp()
    register_layer_op(_Mix, op)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), _Mix(4, 3))
    # group channel c reaches the mixer's input index 3 - c (a reversed wiring, so position != channel)
    group = ChannelGroup("0", 4, (Member("0", "out", "Conv2d", tuple((c,) for c in range(4))),
                                  Member("1", "in", "_Mix", tuple((3 - c,) for c in range(4)))))
    expected = model[1].weight.detach().clone()
    expected[:, [3, 1]] = 0.0
    handle = mask(model, group, [0, 2])
    assert op.asked == [[3, 1]]
    assert torch.equal(model[1].weight.detach(), expected)
    handle.restore()
    assert torch.equal(model[1].weight.detach(), torch.arange(1.0, 13.0).reshape(3, 4))


@pytest.mark.parametrize("layer, kind", [(nn.Conv2d(4, 4, 3, groups=4), "Conv2d"), (nn.BatchNorm2d(4), "BatchNorm2d")])
def test_consumer_the_engine_cannot_mask_is_refused_by_name_and_type(layer, kind):
    """A depthwise conv passes channels through; as an ``"in"`` member it has no input slice to zero."""
    model = nn.Sequential(nn.Conv2d(2, 4, 1), layer)
    group = ChannelGroup("0", 4, (Member("0", "out", "Conv2d", tuple((c,) for c in range(4))),
                                  Member("1", "in", kind, tuple((c,) for c in range(4)))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruningError, match=rf"^cannot mask the input of 1 \({kind}\)$"):
        mask(model, group, [1])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
