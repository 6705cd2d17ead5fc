"""ONNX export checked against torch with onnxruntime; atomic writes."""

from __future__ import annotations

import math

import pytest
import torch

from filterprune.errors import FilterpruneError
from filterprune.models import create_model

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from filterprune.export import export_onnx  # noqa: E402


@pytest.mark.parametrize("name, shape", [("convnet_small", (2, 1, 8, 8)), ("resnet20", (2, 3, 32, 32))])
def test_export_matches_torch(tmp_path, name, shape):
    torch.manual_seed(0)
    model = create_model(name).train()  # exported in eval mode, mode restored
    x = torch.randn(*shape)
    path = tmp_path / "sub" / f"{name}.onnx"
    diff = export_onnx(model, x, path)
    assert 0 <= diff <= 1e-4 and model.training
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    # the batch axis is dynamic (ResNet's PadShortcut index_copy included)
    x3 = torch.randn(3, *shape[1:])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x3.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x3), atol=1e-4, rtol=1e-4)


def test_failed_check_leaves_no_file(tmp_path):
    model, x = create_model("convnet_small"), torch.randn(1, 1, 8, 8)
    path = tmp_path / "m.onnx"
    with pytest.raises(FilterpruneError, match="ONNX check failed"):
        export_onnx(model, x, path, atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    assert math.isnan(export_onnx(model, x, path, check=False)) and path.is_file()


def _usernets():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("usernets", Path(__file__).parent / "fixtures" / "usernets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, names", [("tuple", ["output_0", "output_1"]), ("list", ["output_0", "output_1"]),
                                         ("dict", ["logits", "boxes"])])
def test_structured_outputs_export_with_dynamic_batch(tmp_path, kind, names):
    """Tuple, list and dict outputs (pruned first): every output checked against torch at another batch size."""
    torch.manual_seed(0)
    model, x = _usernets().TwoHeads(kind), torch.randn(2, 1, 8, 8)
    import filterprune as fp

    fp.prune(model, x, "l1", ratio=0.25)
    path = tmp_path / f"{kind}.onnx"
    assert export_onnx(model, x, path) <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    x5 = torch.randn(5, 1, 8, 8)
    got = session.run(None, {"input": x5.numpy()})
    with torch.no_grad():
        want = model.eval()(x5)
    want = list(want.values()) if isinstance(want, dict) else list(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)


def test_keyword_inputs_and_nested_outputs(tmp_path):
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(2, 4, 1)

        def forward(self, rgb, depth):
            fa, fb = self.a(rgb), self.b(depth)
            return {"sum": fa + fb, "parts": (fa, fb)}

    inputs = {"rgb": torch.randn(2, 3, 4, 4), "depth": torch.randn(2, 2, 4, 4)}
    path = tmp_path / "pair.onnx"
    assert export_onnx(Pair(), inputs, path) <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rgb", "depth"]
    assert [o.name for o in session.get_outputs()] == ["sum", "parts_0", "parts_1"]


def test_non_tensor_output_is_one_clear_error(tmp_path):
    class Named(torch.nn.Module):
        def forward(self, x):
            return {"logits": x.mean(1), "label": "cat"}

    with pytest.raises(FilterpruneError, match="returns a str under 'label'"):
        export_onnx(Named(), torch.randn(2, 3), tmp_path / "n.onnx")
    assert list(tmp_path.iterdir()) == []
