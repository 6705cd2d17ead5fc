"""``fp.save`` / ``fp.load(path, model=...)`` for users' own models, across processes.

Oracle: the loaded model gives exactly the outputs of the model that was saved (``torch.equal``), in
this process and in a new one that only imports the user's module and builds a fresh, unpruned instance.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import filterprune as fp
from filterprune.errors import CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "usernets.py"


@pytest.fixture(scope="module")
def usernets():
    spec = importlib.util.spec_from_file_location("usernets", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pruned(cls, x, criterion="l1", ratio=0.4, **kw):
    torch.manual_seed(0)
    model = cls()
    fp.prune(model, x, criterion, ratio=ratio, **kw)
    return model.eval()


@pytest.mark.parametrize("name, criterion", [("TinyResNet", "l1"), ("FlatNet", "l1"), ("FlatNet", "random")])
def test_pruned_user_model_round_trip(tmp_path, usernets, name, criterion):
    cls, x = getattr(usernets, name), torch.randn(2, 1, 8, 8)
    model = _pruned(cls, x, criterion)
    assert any(m.weight.shape[0] < cls().state_dict()[f"{n}.weight"].shape[0]
               for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))  # really pruned
    path = fp.save(model, tmp_path / "m.safetensors", example_inputs=x)
    loaded = fp.load(path, model=cls())
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert fp.count(loaded, x) == fp.count(model, x)


def test_every_resizable_layer_kind_round_trips(tmp_path, usernets):
    """GroupNorm, grouped conv, PReLU(C), InstanceNorm with running stats, LayerNorm: a narrow model
    (built with width=8) loads into a fresh default one (width=16)."""
    torch.manual_seed(0)
    narrow, x = usernets.NormZoo(width=8).eval(), torch.randn(2, 3, 8, 8)
    narrow.inorm.running_mean.uniform_()
    loaded = fp.load(fp.save(narrow, tmp_path / "n.safetensors", example_inputs=x), model=usernets.NormZoo())
    assert (loaded.gn.num_channels, loaded.c2.groups, loaded.act.num_parameters, loaded.ln.normalized_shape) == (
        8, 4, 8, (4,))
    with torch.no_grad():
        assert torch.equal(loaded(x), narrow(x))


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_pruned_norm_zoo_round_trips(tmp_path, usernets, criterion):
    """Pruned by the engine through GroupNorm, a grouped conv, PReLU(C), InstanceNorm and LayerNorm."""
    torch.manual_seed(0)
    model, x = usernets.NormZoo().eval(), torch.randn(4, 3, 8, 8)
    fp.prune(model, x, criterion, target_macs=0.3)
    assert model.act.num_parameters < 16  # the PReLU followed its conv
    loaded = fp.load(fp.save(model, tmp_path / "z.safetensors", example_inputs=x), model=usernets.NormZoo())
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_new_process_loads_into_a_fresh_instance(tmp_path, usernets):
    """prune -> save here; a new process imports the user's file, builds TinyResNet() and loads."""
    x = torch.randn(3, 1, 8, 8)
    model = _pruned(usernets.TinyResNet, x)
    path = fp.save(model, tmp_path / "m.safetensors", example_inputs=x)
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    shutil.copy(FIXTURE, tmp_path / "usernets.py")
    script = (
        "import sys, torch, filterprune as fp\n"
        "from usernets import TinyResNet\n"
        "io = torch.load(sys.argv[2], weights_only=True)\n"
        "model = fp.load(sys.argv[1], model=TinyResNet())\n"
        "with torch.no_grad():\n"
        "    sys.exit(0 if torch.equal(model(io['x']), io['y']) else 3)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "io.pt")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_user_model_needs_an_instance_and_the_right_class(tmp_path, usernets):
    x = torch.randn(2, 1, 8, 8)
    path = fp.save(_pruned(usernets.TinyResNet, x), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"holds a .*TinyResNet, not a registered model; .*model="):
        fp.load(path)
    with pytest.raises(CheckpointError, match="got a FlatNet"):
        fp.load(path, model=usernets.FlatNet())


def test_registered_user_model_loads_by_name(tmp_path, monkeypatch):
    """``@fp.register_model`` + ``fp.create_model``: the checkpoint rebuilds it by name."""
    from filterprune.models._registry import MODELS

    # the registration ends with the test (a second run in one process, as mutmut's, registers it again)
    monkeypatch.setattr(MODELS, "_factories", dict(MODELS._factories))

    @fp.register_model
    def s11_test_chain(num_classes: int = 10, width: int = 8):
        return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(width * 36, num_classes))

    model, x = fp.create_model("s11_test_chain", width=12), torch.randn(2, 1, 8, 8)
    fp.prune(model, x, "l1", ratio=0.5)
    loaded = fp.load(fp.save(model.eval(), tmp_path / "m.safetensors", example_inputs=x))
    assert loaded[0].out_channels == 6 and loaded.filterprune_cfg == model.filterprune_cfg
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_user_layer_registered_as_a_layer_op_round_trips(tmp_path, usernets):
    """A custom layer declares ``num_in`` through ``fp.register_layer_op``: saved and restored with it."""
    from filterprune.graph.check import apply_plan_checked
    from filterprune.graph.groups import PrunePlan
    from filterprune.graph.trace import trace_groups

    torch.manual_seed(0)
    model, x = usernets.RouteNet().eval(), torch.randn(2, 3, 6, 6)
    # stem channels 1, 2, 4, 6 are read by no output of the router; route output 1 is removed too
    apply_plan_checked(model, trace_groups(model, x), PrunePlan({"stem": [1, 2, 4, 6], "route": [1]}), x)
    assert model.route.num_in == 4
    path = fp.save(model, tmp_path / "r.safetensors", example_inputs=x)
    loaded = fp.load(path, model=usernets.RouteNet())
    assert loaded.route.num_in == 4 and torch.equal(loaded.route.index, model.route.index)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
