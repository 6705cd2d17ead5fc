"""The layer-operation registry: a user's layer declares its channels and the engine prunes through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import filterprune as fp
from filterprune.graph.check import apply_plan_checked
from filterprune.graph.groups import PrunePlan
from filterprune.graph.ops import LayerOp, channel_attrs, layer_op, register_layer_op, set_channel_attrs
from filterprune.graph.trace import trace_groups
from filterprune.models.cifar_resnet import PadShortcut, PadShortcutOp

ENGINE = Path(fp.__file__).parent


class Gather(nn.Module):
    """A user's weightless router: output j is input ``index[j]`` scaled by ``gain[j]`` (its own parameter)."""

    def __init__(self, index: list[int]) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor(index))
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, len(index)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index] * self.gain[:, None, None]


class GatherOp(LayerOp):
    def out_channels(self, m):
        return m.index.numel()

    def in_channels(self, m):
        return m.num_in

    def prune_out(self, m, keep_idxs):
        m.index = m.index[keep_idxs]
        m.gain = nn.Parameter(m.gain.detach()[keep_idxs])

    def prune_in(self, m, keep_idxs):
        new_pos = torch.full((m.num_in,), -1, dtype=torch.long)
        new_pos[keep_idxs] = torch.arange(len(keep_idxs))
        if (new_pos[m.index] < 0).any():
            raise fp.PruningError("an input that an output reads was removed")
        m.index, m.num_in = new_pos[m.index], len(keep_idxs)

    def mask_in(self, m, idxs):
        return []  # never asked: every input this router reads feeds an output of the same group

    def channel_attrs(self, m):
        return {"num_in": m.num_in}


class RouterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.route = Gather([7, 0, 3, 3, 5])
        self.route.num_in = 8
        self.head = nn.Conv2d(5, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.head(F.relu(self.route(F.relu(self.stem(x)))))).mean((2, 3)))


def test_engine_imports_no_model_class():
    for sub in ("graph", "methods"):
        for path in (ENGINE / sub).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and "models" in (node.module or "").split("."):
                    # the model registry (create_model) is fine; a model module or class is not
                    assert (node.module or "").split(".")[-1] in ("models", "_registry"), f"{path.name}: {node.module}"
                    assert all(a.name[0].islower() for a in node.names), f"{path.name} imports a model class"
    for path in [*(ENGINE / "selection").glob("*.py"), *(ENGINE / "graph").glob("*.py")]:
        assert "PadShortcut" not in path.read_text() or path.name == "ops.py", path.name


def test_pad_shortcut_is_registered_like_a_user_layer():
    assert isinstance(layer_op(PadShortcut(4, 8, 2)), PadShortcutOp)
    assert "register_layer_op" in fp.__all__ and "LayerOp" in fp.__all__
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_layer_op(int, GatherOp())
    with pytest.raises(TypeError, match="LayerOp"):
        register_layer_op(Gather, object())


def test_user_layer_op_prunes_through_its_router():
    register_layer_op(Gather, GatherOp())
    torch.manual_seed(0)
    model, x = RouterNet().eval(), torch.randn(2, 3, 6, 6)
    groups = {g.id: g for g in trace_groups(model, x)}
    assert groups["stem"].prunable and groups["route"].prunable
    route_in = next(m for m in groups["stem"].members if m.module == "route")
    assert route_in.kind == "in" and route_in.idxs[3] == (3,)
    # stem channels 1, 2, 4, 6 are read by no output of the router: removing them is exact
    err = apply_plan_checked(model, list(groups.values()), PrunePlan({"stem": [1, 2, 4, 6], "route": [1]}), x)
    assert err < 1e-5
    assert model.route.index.tolist() == [3, 1, 1, 2] and model.stem.out_channels == 4
    assert model.head.in_channels == 4 and model.route.gain.shape == (4,)


def test_channel_attrs_cover_builtins_and_registered_layers():
    sc = PadShortcut(4, 8, 2)
    assert channel_attrs(sc) == {"out_planes": 8}
    assert channel_attrs(nn.Conv2d(4, 8, 3, groups=2)) == {"in_channels": 4, "out_channels": 8, "groups": 2}
    assert channel_attrs(nn.LayerNorm(6)) == {"normalized_shape": [6]}
    assert channel_attrs(nn.ReLU()) is None
    ln, gn = nn.LayerNorm(6), nn.GroupNorm(4, 8)
    set_channel_attrs(ln, {"normalized_shape": [3]})
    set_channel_attrs(gn, {"num_groups": 2, "num_channels": 4})
    assert ln.normalized_shape == (3,) and (gn.num_groups, gn.num_channels) == (2, 4)
    with pytest.raises(TypeError, match="cannot resize"):
        set_channel_attrs(nn.ReLU(), {"x": 1})


def test_register_layer_op_as_a_class_decorator_registers_an_instance_and_replaces_an_earlier_op(monkeypatch):
    # issue 14: the decorator form ran in no test; and the refusal names the op's type
    import filterprune.graph.ops as ops

    monkeypatch.setattr(ops, "_OPS", dict(ops._OPS))  # the registry as it was, after the test

    class Widget(nn.Module):
        pass

    @register_layer_op(Widget)
    class WidgetOp(GatherOp):
        pass

    assert WidgetOp.__name__ == "WidgetOp" and type(layer_op(Widget())) is WidgetOp
    replacement = GatherOp()
    assert register_layer_op(Widget, replacement) is replacement and layer_op(Widget()) is replacement
    with pytest.raises(TypeError, match=r"^op for Widget must be a LayerOp, got dict$"):
        register_layer_op(Widget, {})
