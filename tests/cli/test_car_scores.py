"""``filterprune car-scores`` in one process: the scores of the seeded evaluation subset, written as JSON."""

from __future__ import annotations

import copy
import json

import torch

import filterprune as fp
from filterprune.cli.main import main
from filterprune.data import BatchLoader, load_data
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups


def test_car_scores_match_accuracy_drops_of_pruned_copies(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process, no torchrun
    torch.manual_seed(0)
    model = fp.create_model("convnet_small", in_chans=1, image_size=8).eval()
    weights = fp.save(model, tmp_path / "m.safetensors")
    out = tmp_path / "scores.json"
    assert main(["-q", "car-scores", "--weights", str(weights), "--data", "digits", "--eval-images", "48",
                 "--batch-size", "32", "--seed", "3", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["world_size"] == 1 and got["criterion"] == "car" and got["options"] == {"eval_images": 48}

    # oracle: the same 48 training images (seed 3), accuracy of physically pruned copies
    subset = load_data("digits").train.sample(48, 3)
    xs, ys = next(iter(BatchLoader(subset, 48, train=False)))
    groups = trace_groups(model, xs[:2])
    assert set(got["scores"]) == {g.id for g in groups if g.prunable}

    def acc(net):
        with torch.no_grad():
            return 100.0 * float((net(xs).argmax(1) == ys).double().mean())

    base, step = acc(model), 100.0 / 48
    group = next(g for g in groups if g.prunable)
    for c in range(3):
        net = apply_plan(copy.deepcopy(model), groups, PrunePlan({group.id: [c]}))
        drop = base - acc(net)
        assert abs(got["scores"][group.id][c] - drop) <= step / 2 + 1e-6  # CAR + a tie-break below half a step
