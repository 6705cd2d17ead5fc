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
