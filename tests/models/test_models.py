import pytest
import torch
from torch import nn

from filterprune.errors import CheckpointError
from filterprune.models import PRETRAINED, create_model, list_models
from filterprune.models.cifar_resnet import PadShortcut
from filterprune.models.weights import read_foreign_state_dict
from shared_paths import PRETRAINED_DIR


def test_registry_lists_and_filters():
    names = list_models()
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16_bn", "convnet_small"):
        assert name in names
    assert list_models("resnet*") == ["resnet110", "resnet18", "resnet20", "resnet32", "resnet44", "resnet50", "resnet56"]
    with pytest.raises(ValueError, match="unknown model 'resnet7'"):
        create_model("resnet7")


def _resnet_params_by_hand(n: int) -> int:
    """Closed form: stem + 3 stages of n basic blocks (2 convs + 2 BNs each) + linear 64->10."""
    total = 3 * 16 * 9 + 2 * 16
    cin = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += cin * c * 9 + c * c * 9 + 4 * c
            cin = c
    return total + 64 * 10 + 10


@pytest.mark.parametrize("name,n", [("resnet20", 3), ("resnet56", 9)])
def test_cifar_resnet_structure(name, n):
    net = create_model(name)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 6 * n + 1
    assert sum(p.numel() for p in net.parameters()) == _resnet_params_by_hand(n)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_bn_has_13_convs_64_to_512():
    net = create_model("vgg16_bn", num_classes=100)
    widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_small_convnet_on_digits_shape_and_width_mult():
    net = create_model("convnet_small", width_mult=2.0)
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert net.features[0].out_channels == 32


def test_pad_shortcut_centres_the_input_channels():
    sc = PadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    # output channel j carries input channel j - C/4 (C = 32): inputs land on 8..23, zeros elsewhere
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_pad_shortcut_matches_the_reference_pad():
    sc = PadShortcut(32, 64, stride=2)
    x = torch.randn(3, 32, 8, 8)
    ref = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 16, 16))
    assert torch.equal(sc(x), ref)


@pytest.mark.skipif(not PRETRAINED_DIR.is_dir(), reason="shared pretrained weights not present")
@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_pretrained_loads_every_key(name):
    path = PRETRAINED_DIR / PRETRAINED[name].file
    state = read_foreign_state_dict(path)
    net = create_model(name, pretrained=str(path))
    own = net.state_dict()
    assert set(state) <= set(own)  # every checkpoint key is used
    assert {k for k in own if k not in state} == {
        k for k in own if k.endswith(("num_batches_tracked", "out_index"))
    }
    for k, v in state.items():
        assert torch.equal(own[k], v)


def test_foreign_checkpoint_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="bad.th") as e:
        create_model("resnet20", pretrained=str(bad))
    assert "\n" not in str(e.value)
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Boom()}, evil)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_foreign_state_dict(evil)


def test_shape_mismatch_names_the_file(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(create_model("resnet20", num_classes=100).state_dict(), path)
    with pytest.raises(CheckpointError, match="r20.pt"):
        create_model("resnet20", pretrained=str(path))
