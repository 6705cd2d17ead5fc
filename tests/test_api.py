"""The public API: prune / score end to end over the tiny topologies and the criteria registry."""

from __future__ import annotations

import json

import pytest
import torch

from filterprune.api import prune, score
from filterprune.criteria import list_criteria
from filterprune.errors import PruningError
from filterprune.graph.trace import trace_groups
from filterprune.metrics import count
from filterprune.models import create_model
from filterprune.models.weights import PRETRAINED
from models_zoo import PRUNABLE, build
from shared_paths import PRETRAINED_DIR


def _batches(x, n=2, classes=10):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, *x.shape[1:], generator=g), torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("criterion", list_criteria())
@pytest.mark.parametrize("name", PRUNABLE)
def test_prune_every_criterion_on_every_topology(name, criterion):
    model, x = build(name)
    macs0, _ = count(model, x)
    if criterion == "bn" and name == "concat":  # branch_b has no BatchNorm to read
        with pytest.raises(ValueError, match="BatchNorm"):
            prune(model, x, criterion, target_macs=0.3)
        return
    report = prune(model, x, criterion, target_macs=0.3, data=_batches(x))
    assert abs(report.macs_reduction - 0.3) <= 0.01
    assert abs(1 - count(model, x)[0] / macs0 - 0.3) <= 0.01
    assert report.max_error is not None and report.max_error < 1e-4
    assert model(x).shape == (2, 10)
    assert any(report.widths_after[k] < v for k, v in report.widths_before.items())


@pytest.mark.parametrize("pretrained", [False, True])
def test_resnet20_half_macs_pruned_equals_masked(pretrained):
    torch.manual_seed(0)
    weights = PRETRAINED_DIR / PRETRAINED["resnet20"].file  # passed explicitly: no lookup, no cwd
    if pretrained and not weights.is_file():
        pytest.skip(f"published ResNet-20 weights not in {PRETRAINED_DIR}")
    model = create_model("resnet20", pretrained=str(weights) if pretrained else False)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        scale = float(model.eval()(x).abs().max())
    report = prune(model, x, "l1", target_macs=0.5)
    assert abs(report.macs_reduction - 0.5) <= 0.01
    assert report.max_error <= 1e-4 * scale + 1e-6
    assert report.widths_after["layer1.0.conv2"] == report.widths_after["layer1.2.conv2"]  # tied by the adds


@pytest.mark.parametrize("kwargs", [{"ratio": 0.3}, {"target_params": 0.4}])
def test_other_targets(kwargs):
    torch.manual_seed(0)
    model = create_model("resnet20")
    x = torch.randn(2, 3, 32, 32)
    report = prune(model, x, "l2", **kwargs)
    if "target_params" in kwargs:
        assert abs(report.params_reduction - 0.4) <= 0.01
    else:
        groups = [g for g in trace_groups(create_model("resnet20"), x) if g.prunable]
        removed = sum(s.removed_channels for s in report.steps)
        assert abs(removed / sum(g.size for g in groups) - 0.3) <= 0.01


@pytest.mark.parametrize("schedule, expected", [("geometric", [1 - 0.6 ** (1 / 3), 1 - 0.6 ** (2 / 3), 0.4]),
                                                ("linear", [0.4 / 3, 0.8 / 3, 0.4])])
def test_iterative_schedule_with_finetune(schedule, expected):
    model, x = build("residual")
    macs0, _ = count(model, x)
    calls = []

    def finetune(m, step):
        assert m is model
        calls.append((step, count(m, x)[0]))

    report = prune(model, x, "l1", target_macs=0.4, steps=3, schedule=schedule, finetune=finetune)
    assert [c[0] for c in calls] == [1, 2, 3]
    assert [s.target for s in report.steps] == pytest.approx(expected)
    for (_, macs), goal in zip(calls, expected, strict=True):
        assert abs(1 - macs / macs0 - goal) <= 0.01


def test_constraints_through_prune():
    torch.manual_seed(0)
    model = create_model("resnet20")
    report = prune(model, torch.randn(2, 3, 32, 32), "l1", target_macs=0.4, min_channels=4, round_to=4)
    assert all(w >= 4 and w % 4 == 0 for w in report.widths_after.values() if w != 3)


def test_report_is_json_and_a_table():
    model, x = build("concat")
    report = prune(model, x, "l1", ratio=0.25)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["target_name"] == "ratio" and len(d["steps"]) == 1 and d["macs_after"] < d["macs_before"]
    table = report.table()
    assert "MACs" in table and "branch_b" in table


def test_score_is_pure_and_keyed_by_root_layer():
    torch.manual_seed(0)
    model = create_model("resnet20").train()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = score(model, x, "taylor", data=_batches(x))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "layer1.0.conv1" in scores and "conv1" in scores and "linear" not in scores
    assert scores["layer2.0.conv2"].shape == (32,)
    assert set(score(model, x, "l1", ignored_layers=["layer3.0.conv1"])) == set(scores) - {"layer3.0.conv1"}


@pytest.mark.parametrize("kwargs, match", [
    ({"criterion": "nope", "target_macs": 0.5}, "unknown criterion 'nope'; known: .*l1"),
    ({"criterion": "taylor", "target_macs": 0.5}, "needs data"),
    ({"target_macs": 0.5, "ratio": 0.5}, "exactly one"),
    ({}, "exactly one"),
    ({"target_macs": 1.0}, r"target_macs must be a fraction in \[0, 1\)"),
    ({"ratio": -0.2}, "ratio must be a fraction"),
    ({"target_macs": 0.5, "steps": 0}, "steps"),
])
def test_user_errors_are_one_line_value_errors(kwargs, match):
    model, x = build("conv_chain")
    with pytest.raises(ValueError, match=match) as e:
        prune(model, x, **kwargs)
    assert "\n" not in str(e.value)


def test_input_the_model_rejects():
    model, _ = build("conv_chain")
    with pytest.raises(ValueError, match=r"rejects example_inputs of shape \(2, 5, 8, 8\)") as e:
        prune(model, torch.randn(2, 5, 8, 8), "l1", target_macs=0.3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="rejects"):
        score(model, torch.randn(2, 5, 8, 8))


def test_channel_shuffle_is_refused_by_prune():
    model, x = build("shuffle")
    with pytest.raises(PruningError, match="shuffle"):
        prune(model, x, "l1", target_macs=0.3)


def test_unreachable_target():
    model, x = build("conv_chain")
    with pytest.raises(PruningError, match="cannot reach"):
        prune(model, x, "l1", target_macs=0.95, min_channels=8)


def test_transposed_conv_decoder():
    class EncoderDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.bn1 = torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.BatchNorm2d(16)
            self.up, self.bn2 = torch.nn.ConvTranspose2d(16, 12, 2, 2), torch.nn.BatchNorm2d(12)
            self.head, self.fc = torch.nn.Conv2d(12, 8, 3, padding=1), torch.nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.bn2(self.up(torch.relu(self.bn1(self.down(x))))))
            return self.fc(self.head(x).mean((2, 3)))

    torch.manual_seed(0)
    model, x = EncoderDecoder().eval(), torch.randn(2, 3, 16, 16)
    report = prune(model, x, "l1", target_macs=0.3)
    assert abs(report.macs_reduction - 0.3) <= 0.01 and report.max_error < 1e-5
    assert model.up.weight.shape[:2] == (model.up.in_channels, model.up.out_channels)


def test_inplace_relu_without_bn_and_a_model_that_edits_its_input():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            nn = torch.nn
            self.f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 24, 3, padding=1),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(24, 32, 3, padding=1),
                                   nn.ReLU(inplace=True))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.f(x.sub_(0.5)).mean((2, 3)))

    torch.manual_seed(0)
    model = Plain().eval()
    report = prune(model, torch.randn(2, 3, 8, 8), "l1", target_macs=0.4)
    assert abs(report.macs_reduction - 0.4) <= 0.01 and report.max_error < 1e-5
