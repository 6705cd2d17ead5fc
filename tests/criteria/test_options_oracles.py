"""Criterion options, each boundary and message (issue 14: mutation survivors in the constructors of
PLS+VIP and class-wise CAR, and in the small helpers they use)."""

import pytest
import torch
from torch import nn

from filterprune.criteria.car import ClasswiseCAR
from filterprune.criteria.pls_vip import PLSVIP, POOLINGS, POSITIONS, REDUCTIONS, _num_classes


def test_pls_vip_accepts_the_smallest_counts_and_keeps_every_option():
    crit = PLSVIP(n_components=1, samples=1, pooling="avg" if "avg" in POOLINGS else POOLINGS[-1],
                  position=POSITIONS[-1], reduce=REDUCTIONS[-1], distributed=True)
    assert (crit.n_components, crit.samples, crit.position, crit.reduce, crit.distributed) == (
        1, 1, POSITIONS[-1], REDUCTIONS[-1], True)
    assert PLSVIP(distributed=False).distributed is False and PLSVIP().distributed == "auto"


@pytest.mark.parametrize("kwargs, message", [
    ({"n_components": 0}, "n_components must be a positive integer, got 0"),
    ({"n_components": 1.0}, "n_components must be a positive integer, got 1.0"),
    ({"samples": 0}, "samples must be a positive integer or None, got 0"),
    ({"distributed": "yes"}, "distributed must be 'auto', True or False, got 'yes'"),
    ({"pooling": "median"}, f"pooling must be one of {', '.join(POOLINGS)}, got 'median'"),
    ({"position": "after"}, f"position must be one of {', '.join(POSITIONS)}, got 'after'"),
    ({"reduce": "sum"}, f"reduce must be one of {', '.join(REDUCTIONS)}, got 'sum'"),
])
def test_pls_vip_refuses_each_bad_option_naming_it(kwargs, message):
    with pytest.raises(ValueError) as info:
        PLSVIP(**kwargs)
    assert str(info.value) == message


def test_classwise_car_passes_its_options_on():
    crit = ClasswiseCAR(eval_images=300, k=4, fast=False, max_rows=512, distributed=False)
    assert (crit.eval_images, crit.k, crit.metric, crit.fast, crit.max_rows, crit.distributed) == (
        300, 4, "accuracy", False, 512, False)


class _Out(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape, self.w = shape, nn.Parameter(torch.ones(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], *self.shape)
        return (out, out) if self.shape == (0,) else out


@pytest.mark.parametrize("shape, classes", [((7,), 7), ((7, 1), None), ((0,), None)])
def test_num_classes_is_the_width_of_a_two_dim_output_only(shape, classes):
    assert _num_classes(_Out(shape), torch.zeros(2, 3)) == classes


def test_classwise_car_defaults_are_car_s():
    crit = ClasswiseCAR()
    assert (crit.eval_images, crit.k, crit.metric, crit.fast, crit.max_rows, crit.distributed) == (
        None, None, "accuracy", True, 2048, "auto")
