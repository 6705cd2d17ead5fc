"""ImageNet ResNet-18/50: torchvision's published counts and key layout, MACs, loading that layout, pruning."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from filterprune.errors import CheckpointError
from filterprune.graph.check import apply_plan_checked
from filterprune.graph.trace import trace_groups
from filterprune.metrics.macs import count
from filterprune.models import PRETRAINED, create_model
from filterprune.selection import SelectOptions, select

# torchvision's published figures (ResNet18_Weights / ResNet50_Weights.IMAGENET1K_V1 meta: num_params,
# "GFLOPS", which are conv + fc multiply-accumulates at 224 x 224), and the usually quoted GMACs
# (1.82, 4.11: ptflops-style, also counting one op per BatchNorm, ReLU and pooling input element)
PUBLISHED = {"resnet18": (11_689_512, 1.814, 1.82), "resnet50": (25_557_032, 4.089, 4.11)}
SLOW = pytest.mark.slow  # ResNet-50 at 224 x 224: ~5-10 s on the shared 2-core machine

# (key, shape) pairs of torchvision's state dicts: stem, the v1.5 stride on the 3x3, projections, fc
KEYS = {
    "resnet18": [("conv1.weight", (64, 3, 7, 7)), ("layer1.0.conv2.weight", (64, 64, 3, 3)),
                 ("layer2.0.conv1.weight", (128, 64, 3, 3)), ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
                 ("layer2.0.downsample.1.running_var", (128,)), ("layer4.1.bn2.num_batches_tracked", ()),
                 ("fc.weight", (1000, 512))],
    "resnet50": [("layer1.0.conv1.weight", (64, 64, 1, 1)), ("layer1.0.conv3.weight", (256, 64, 1, 1)),
                 ("layer1.0.downsample.0.weight", (256, 64, 1, 1)), ("layer3.5.conv2.weight", (256, 256, 3, 3)),
                 ("layer4.2.bn3.bias", (2048,)), ("fc.weight", (1000, 2048))],
}
NUM_KEYS = {"resnet18": 122, "resnet50": 320}  # tensors in torchvision's state_dict(), buffers included


def _elementwise_ops(model, x) -> int:
    """One op per output element of BatchNorm and ReLU and per input element of a pooling layer."""
    total = [0]

    def hook(mod, inputs, out):
        pooled = isinstance(mod, (torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d))
        total[0] += (inputs[0] if pooled else out).numel()

    kinds = (torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total[0]


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=SLOW)])
def test_params_macs_and_key_layout_match_torchvision(name):
    model = create_model(name)
    params, gmacs, quoted = PUBLISHED[name]
    x = torch.zeros(1, 3, 224, 224)
    macs, counted = count(model, x)
    assert counted == params
    assert macs / 1e9 == pytest.approx(gmacs, abs=0.0005)  # conv + fc
    assert (macs + _elementwise_ops(model, x)) / 1e9 == pytest.approx(quoted, abs=0.005)
    state = model.state_dict()
    assert len(state) == NUM_KEYS[name]
    for key, shape in KEYS[name]:
        assert tuple(state[key].shape) == shape, key
    assert model.layer2[0].conv2.stride == ((1, 1) if name == "resnet18" else (2, 2))  # v1.5: 3x3 strides


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_in_torchvision_layout_load_every_key(tmp_path, suffix):
    torch.manual_seed(1)
    source = create_model("resnet18", width_mult=0.25)  # the published key names, a quarter of the widths
    for m in source.modules():  # non-default BN statistics, so that loading them is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    state = source.state_dict()  # a bare dict of tensors, as torchvision's files hold
    path = tmp_path / f"random18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(2)
    model = create_model("resnet18", width_mult=0.25, pretrained=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), source.eval()(x))


def test_a_file_named_like_a_published_one_must_have_its_sha256(tmp_path):
    path = tmp_path / PRETRAINED["resnet18"].file
    torch.save(create_model("resnet18", width_mult=0.25).state_dict(), path)
    with pytest.raises(CheckpointError, match="sha256 does not match the published resnet18-f37072fd.pth"):
        create_model("resnet18", width_mult=0.25, pretrained=str(path))
    assert PRETRAINED["resnet50"].sha256.startswith("0676ba61") and len(PRETRAINED["resnet50"].sha256) == 64


@pytest.mark.parametrize("name,width", [("resnet18", 0.5), pytest.param("resnet50", 1.0, marks=SLOW)])
def test_pruned_equals_masked(name, width):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width_mult=width).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)  # 2 x 2 before the average pool
    groups = trace_groups(model, x)
    prunable = [g for g in groups if g.prunable]
    assert {g.id for g in prunable} >= {"layer1.0.conv1", "layer4.1.conv1" if name == "resnet18" else "layer4.2.conv2"}
    g = torch.Generator().manual_seed(0)
    scores = {gr.id: torch.rand(gr.size, generator=g) for gr in prunable}
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.3))
    before = count(model, x)[0]
    err = apply_plan_checked(model, groups, plan, x)  # raises if pruned != masked
    assert err < 1e-4
    assert count(model, x)[0] < 0.8 * before
