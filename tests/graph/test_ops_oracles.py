"""``expected_shapes`` against the shapes torch itself gives each layer, and the opaque node's backward refusal.

``expected_shapes(m, attrs)`` is what checkpoint loading compares the stored tensors with: for every
built-in layer kind it must name each of the layer's own tensors (``state_dict`` keys, no more and no
less) with the shape a freshly built layer of widths ``attrs`` has. The oracle is torch: build the
layer at those widths and read its ``state_dict`` shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filterprune.graph.ops import _Opaque, channel_attrs, expected_shapes


def _torch_shapes(layer):
    return {k: tuple(v.shape) for k, v in layer.state_dict().items()}


# (layer at its original widths, the widths to ask about, the same layer built at those widths)
CASES = {
    "conv2d": (nn.Conv2d(4, 8, 3), {"in_channels": 6, "out_channels": 10, "groups": 1}, nn.Conv2d(6, 10, 3)),
    "grouped_conv2d": (nn.Conv2d(4, 8, (3, 1), groups=2), {"in_channels": 6, "out_channels": 4, "groups": 2},
                       nn.Conv2d(6, 4, (3, 1), groups=2)),
    "conv_transpose2d": (nn.ConvTranspose2d(4, 8, 2, groups=2), {"in_channels": 6, "out_channels": 10, "groups": 2},
                         nn.ConvTranspose2d(6, 10, 2, groups=2)),
    "conv1d": (nn.Conv1d(3, 5, 2), {"in_channels": 2, "out_channels": 7, "groups": 1}, nn.Conv1d(2, 7, 2)),
    "linear": (nn.Linear(4, 8), {"in_features": 3, "out_features": 5}, nn.Linear(3, 5)),
    "batchnorm2d": (nn.BatchNorm2d(8), {"num_features": 5}, nn.BatchNorm2d(5)),
    "instancenorm2d_affine": (nn.InstanceNorm2d(8, affine=True, track_running_stats=True), {"num_features": 3},
                              nn.InstanceNorm2d(3, affine=True, track_running_stats=True)),
    "groupnorm": (nn.GroupNorm(2, 8), {"num_groups": 3, "num_channels": 6}, nn.GroupNorm(3, 6)),
    "layernorm": (nn.LayerNorm([4, 5]), {"normalized_shape": [3, 2]}, nn.LayerNorm([3, 2])),
    "prelu": (nn.PReLU(8), {"num_parameters": 3}, nn.PReLU(3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_expected_shapes_name_every_tensor_of_the_layer_built_at_those_widths(case):
    layer, attrs, built = CASES[case]
    assert set(attrs) == set(channel_attrs(layer))  # the question is asked in the layer's own attributes
    assert expected_shapes(layer, attrs) == _torch_shapes(built)


def test_expected_shapes_of_a_layer_without_widths_is_empty():
    assert expected_shapes(nn.ReLU(), {}) == {}


def test_opaque_node_refuses_backward_with_its_reason():
    """Only tracing builds the opaque node; a backward through it is a bug, said in one line."""
    x = torch.ones(3, requires_grad=True)
    y = _Opaque.apply(lambda t: 2 * t, x)
    assert torch.equal(y, torch.full((3,), 2.0))
    with pytest.raises(RuntimeError, match=r"^a registered layer op was run backward while opaque \(tracing only\)$"):
        y.sum().backward()
