"""The failure path of the masked-vs-pruned check, on a subtle mis-slice that keeps every shape right.

The residual model's stem group is traced correctly, then one consumer member (``block2.conv1``'s
input) is edited so that group channel 2 points at input channel 3 and vice versa: the kind of
off-by-one a tracer makes behind a concat. Shapes stay consistent, the pruned model runs, and only
the values tell: removing channel 2 then feeds stem channel 3 into ``block2.conv1``'s column 2. The
error is ``|W[:, 2] (x_2 - x_3)|``-sized, so scaling that column moves it across the tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch

from device_probes import record_tf32, tf32_enabled, tf32_flags
from filterprune.errors import PruningError
from filterprune.graph.check import apply_plan_checked, max_abs_diff
from filterprune.graph.groups import PrunePlan
from filterprune.graph.trace import trace_groups
from models_zoo import build


def _mis_sliced(groups):
    out = []
    for g in groups:
        if g.id == "stem":
            members = []
            for m in g.members:
                if m.module == "block2.conv1":
                    idxs = list(m.idxs)
                    idxs[2], idxs[3] = idxs[3], idxs[2]
                    m = dataclasses.replace(m, idxs=tuple(idxs))
                members.append(m)
            g = dataclasses.replace(g, members=tuple(members))
        out.append(g)
    return out


def _model(column_scale: float):
    model, x = build("residual")
    with torch.no_grad():
        model.block2.conv1.weight[:, 2] *= column_scale
    return model, x


def _by_hand(model, x):
    """(masked output, pruned output, max |masked|) computed without the engine: the oracle.

    Masked as the mis-sliced group says: stem channel 2's consumers block1.conv1[:, 2] and fc[:, 2],
    and (the mis-slice) block2.conv1[:, 3] are zeroed. Pruned: the same slices removed physically.
    """
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.block1.conv1.weight[:, 2] = 0
        masked.block2.conv1.weight[:, 3] = 0
        masked.fc.weight[:, 2] = 0
        y_masked = masked(x)
    keep = [c for c in range(16) if c != 2]
    keep_b2 = [c for c in range(16) if c != 3]
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.stem.weight = torch.nn.Parameter(pruned.stem.weight[keep])
        for bn in (pruned.bn, pruned.block1.bn2, pruned.block2.bn2):
            for name in ("weight", "bias"):
                setattr(bn, name, torch.nn.Parameter(getattr(bn, name)[keep]))
            bn.running_mean, bn.running_var = bn.running_mean[keep], bn.running_var[keep]
        for conv in (pruned.block1.conv2, pruned.block2.conv2):
            conv.weight = torch.nn.Parameter(conv.weight[keep])
        pruned.block1.conv1.weight = torch.nn.Parameter(pruned.block1.conv1.weight[:, keep])
        pruned.block2.conv1.weight = torch.nn.Parameter(pruned.block2.conv1.weight[:, keep_b2])
        pruned.fc.weight = torch.nn.Parameter(pruned.fc.weight[:, keep])
        y_pruned = pruned(x)
    return y_masked, y_pruned, float(y_masked.abs().max())


def test_mis_slice_above_tolerance_is_refused_with_the_difference():
    model, x = _model(1.0)
    y_masked, y_pruned, scale = _by_hand(model, x)
    err = float((y_masked - y_pruned).abs().max())
    assert 1e-4 * scale + 1e-6 < err < 1e-2 * scale  # subtle: ~50x the tolerance, well under 1%
    with pytest.raises(PruningError) as e:
        apply_plan_checked(model, _mis_sliced(trace_groups(model, x)), PrunePlan({"stem": [2]}), x)
    found = re.fullmatch(r"pruned model differs from the masked one by (\S+) \(scale (\S+)\); "
                         r"the dependency trace missed a coupling", str(e.value))
    assert found, str(e.value)
    assert float(found[1]) == pytest.approx(err, rel=1e-2) and float(found[2]) == pytest.approx(scale, rel=1e-2)


def test_mis_slice_below_tolerance_passes_and_returns_the_exact_difference():
    model, x = _model(0.01)  # the error shrinks with the column: now ~half the tolerance
    y_masked, y_pruned, scale = _by_hand(model, x)
    err = float((y_masked - y_pruned).abs().max())
    assert 1e-6 < err < 1e-4 * scale + 1e-6
    got = apply_plan_checked(model, _mis_sliced(trace_groups(model, x)), PrunePlan({"stem": [2]}), x)
    assert got == pytest.approx(err, rel=1e-3, abs=1e-8)
    assert model.stem.out_channels == 15 and model.block2.conv1.in_channels == 15


def test_tolerance_scales_with_rtol():
    model, x = _model(0.01)
    with pytest.raises(PruningError, match="differs from the masked one"):
        apply_plan_checked(model, _mis_sliced(trace_groups(model, x)), PrunePlan({"stem": [2]}), x, rtol=1e-5)


def test_tolerance_is_relative_to_the_output_scale():
    # the same mis-slice on a model whose logits are 100x larger: the error scales with them and
    # stays under rtol * scale (an absolute or inverted tolerance would refuse it)
    model, x = _model(0.01)
    with torch.no_grad():
        model.fc.weight *= 100
        model.fc.bias *= 100
    y_masked, y_pruned, scale = _by_hand(model, x)
    err = float((y_masked - y_pruned).abs().max())
    assert 1e-4 < err < 1e-4 * scale and scale > 10
    got = apply_plan_checked(model, _mis_sliced(trace_groups(model, x)), PrunePlan({"stem": [2]}), x)
    assert got == pytest.approx(err, rel=1e-3)


def test_absolute_floor_when_rtol_is_zero():
    # a correct plan differs from the masked model by float rounding only: below the 1e-6 floor
    model, x = build("residual")
    err = apply_plan_checked(model, trace_groups(model, x), PrunePlan({"stem": [2], "block1.conv1": [0, 5]}), x, rtol=0)
    assert 0.0 <= err <= 1e-6


def test_max_abs_diff_refuses_outputs_of_another_structure():
    a = (torch.zeros(2, 3), torch.zeros(2, 4))
    for b in ((torch.zeros(2, 3),), (torch.zeros(2, 3), torch.zeros(2, 5))):  # one output fewer; a shape differs
        with pytest.raises(PruningError) as e:
            max_abs_diff(a, b)
        assert str(e.value) == "pruned model's output shapes differ from the original's"


def test_max_abs_diff_by_hand():
    a = (torch.tensor([[1.0, -4.0]]), torch.zeros(0), torch.tensor([2.0]))
    b = (torch.tensor([[1.5, -4.0]]), torch.zeros(0), torch.tensor([-1.0]))
    assert max_abs_diff(a, b) == (3.0, 4.0)  # max |a - b| over outputs, max |a|; empty outputs skipped
    assert max_abs_diff((torch.zeros(0),), (torch.zeros(0),)) == (0.0, 0.0)


def test_the_check_compares_in_full_fp32_and_restores_the_tf32_flags():
    # On a GPU, TF32 convolutions made an exact plan fail the check (2.5e-4 at scale 2.0 on ResNet-56,
    # H200): both forwards must run with TF32 off, and the caller's flags come back afterwards.
    model, x = build("residual")
    seen = record_tf32(model)
    with tf32_enabled():
        groups = trace_groups(model, x)
        seen.clear()  # the trace's own forwards
        apply_plan_checked(model, groups, PrunePlan({"stem": [2]}), x)
        assert seen and set(seen) == {(False, False)}
        assert tf32_flags() == (True, True)
        seen.clear()
        with pytest.raises(PruningError):  # restored on the failure path too
            apply_plan_checked(copy.deepcopy(build("residual")[0]), _mis_sliced(trace_groups(model, x)),
                               PrunePlan({"stem": [2]}), x, rtol=0.0)
        assert tf32_flags() == (True, True)
