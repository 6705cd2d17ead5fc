"""Bad arguments, each refused in one line before any data is loaded or any file written.

Kinds: an unknown criterion / model / dataset (the valid names listed), a criterion option key the
criterion does not take (its valid keys listed, derived from its signature), an option value it
refuses, malformed options, every ranged flag out of its range (including NaN and inf), two targets or
none, a device that does not exist or is not available, a weights file that does not exist, a model
whose input channels / classes / size the data or ``--input-size`` does not match, a bad value in a
``--config`` file, and the parser's own errors.

Every case runs the CLI in-process in a sandbox and checks the exit status, the single stderr line,
empty stdout, and that nothing in the sandbox changed (``bad_input_helpers``). ``load_data`` is made to
fail loudly in the fail-fast cases, so a check that ran only after loading the data would show.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from bad_input_helpers import Sandbox

import filterprune as fp
from filterprune.cli import _args
from filterprune.criteria import CRITERIA, list_criteria
from filterprune.methods.csgd_run import CSGDOptions

TRAIN = ["train", "--epochs", "1", "--device", "cpu", "--out", "run"]


@pytest.fixture
def box(tmp_path, monkeypatch) -> Sandbox:
    return Sandbox(tmp_path, monkeypatch)


@pytest.fixture
def no_data_loading(monkeypatch):
    """Any data loading fails the test: the argument checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    for module in ("filterprune.workflows.train_run", "filterprune.workflows.prune_run", "filterprune.workflows.info",
                   "filterprune.workflows.car_scores", "filterprune.data"):
        mod = __import__(module, fromlist=["load_data"])
        if hasattr(mod, "load_data"):
            monkeypatch.setattr(mod, "load_data", refuse)


@pytest.fixture
def cifar_ckpt(tmp_path):
    """A (randomly initialised) CIFAR ResNet-20 checkpoint: expects 3x32x32 images, 10 classes."""
    return str(fp.save(fp.create_model("resnet20"), tmp_path / "r20.safetensors",
                       example_inputs=torch.randn(1, 3, 32, 32)))


@pytest.fixture
def digits_ckpt(tmp_path):
    """A convnet_small checkpoint for digits: 1x8x8 images (its Linear fixes the size), 10 classes."""
    return str(fp.save(fp.create_model("convnet_small"), tmp_path / "small.safetensors",
                       example_inputs=torch.randn(1, 1, 8, 8)))


def prune_args(weights: str, *extra: str) -> list[str]:
    return ["prune", "--weights", weights, "--finetune-epochs", "0", "--out", "pruned", *extra]


# ---- names: criteria, models, datasets ----------------------------------------------------------------------

def test_criterion_typo_lists_every_valid_name_including_csgd(box, digits_ckpt, capsys, no_data_loading):
    line = box.refuses(prune_args(digits_ckpt, "--criterion", "l1-norm", "--target-macs", "0.5"), capsys,
                       "'l1-norm' is not a criterion")
    for name in [*list_criteria(), "csgd"]:
        assert name in line.split("valid:")[1], name


def test_demo_criterion_typo(box, capsys, no_data_loading):
    box.refuses(["demo", "--criterion", "carr"], capsys, "'carr' is not a criterion", "car-classwise")


def _signature_keys(name: str) -> list[str]:
    """The independent oracle: the keys a criterion's constructor (or C-SGD's options) accepts."""
    if name == "csgd":
        return [f.name for f in dataclasses.fields(CSGDOptions)]
    return list(inspect.signature(CRITERIA.get(name)).parameters)


@pytest.mark.parametrize("name", [*list_criteria(), "csgd"])
def test_wrong_option_key_lists_the_criterions_keys(box, digits_ckpt, name, capsys, no_data_loading):
    line = box.refuses(prune_args(digits_ckpt, "--criterion", name, "--criterion-options", "bogus_key=1",
                                  "--target-macs", "0.5"), capsys, "'bogus_key'", f"not an option of {name}")
    listed = line.split("valid: ")[1].split(", ")
    assert sorted(listed) == sorted(_signature_keys(name)) or (listed == ["none"] and not _signature_keys(name))


@pytest.mark.parametrize("criterion,options,needle", [
    ("car", "k=0", "refused by car"),
    ("car", "metric=f1", "refused by car"),
    ("l1", "include_consumers=1,p=3", "'p': not an option of l1"),
    ("csgd", "keep=median", "refused by csgd"),
])
def test_bad_option_values_other_criteria(box, digits_ckpt, criterion, options, needle, capsys, no_data_loading):
    box.refuses(prune_args(digits_ckpt, "--criterion", criterion, "--criterion-options", options,
                           "--target-macs", "0.5"), capsys, "--criterion-options", needle)


@pytest.mark.parametrize("options,needle", [
    ("pooling=bogus", "refused by pls-vip"),
    ("n_components=0", "refused by pls-vip"),
    ("n_components", "is not key=value"),
    ("n_components=2,n_components=3", "twice"),
])
def test_bad_option_values(box, digits_ckpt, options, needle, capsys, no_data_loading):
    box.refuses(prune_args(digits_ckpt, "--criterion", "pls-vip", "--criterion-options", options,
                           "--target-macs", "0.5"), capsys, "--criterion-options", needle)


def test_csgd_option_value_in_train(box, capsys, no_data_loading):
    box.refuses([*TRAIN, "--width-mult", "1.5", "--csgd-squeeze-to", "1", "--csgd-options", "clustering=magic"],
                capsys, "--csgd-options", "refused by csgd")


@pytest.mark.parametrize("argv", [
    [*TRAIN, "--model", "resnet7"],
    ["eval", "--model", "resnet7", "--weights", "auto"],
    ["info", "--model", "resnet7"],
    ["prune", "--model", "resnet7", "--target-macs", "0.5"],
])
def test_model_typo_lists_the_models(box, argv, capsys, no_data_loading):
    box.refuses(argv, capsys, "'resnet7' is not a registered model", "resnet20")


@pytest.mark.parametrize("data,needle", [
    ("no/such/folder", "neither a path that exists nor a dataset"),
    ("cifar-10", "digits, fashion-mnist"),
    ("digits:extra", "digits takes no argument"),
    ("fashion-mnist:/no/such/folder", "does not exist"),
])
def test_bad_data_spec(box, data, needle, capsys, no_data_loading):
    box.refuses([*TRAIN, "--data", data], capsys, "--data", needle)


@pytest.mark.parametrize("argv", [
    [*TRAIN, "--pretrained", "missing.th"],
    ["prune", "--weights", "missing.safetensors", "--target-macs", "0.5"],
    ["eval", "--weights", "missing.safetensors"],
    ["info", "--weights", "missing.safetensors"],
])
def test_missing_weights_file(box, argv, capsys, no_data_loading):
    box.refuses(argv, capsys, "missing.", "no such file")


# ---- ranges ----------------------------------------------------------------------------------------------------

TRAIN_RANGES = [
    ("--label-smoothing", "2"), ("--label-smoothing", "-0.1"), ("--label-smoothing", "1"),
    ("--width-mult", "0"), ("--width-mult", "-1"), ("--width-mult", "400"), ("--width-mult", "nan"),
    ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--lr", "inf"),
    ("--momentum", "1"), ("--weight-decay", "-1e-4"), ("--weight-decay", "inf"),
    ("--epochs", "-1"), ("--batch-size", "0"), ("--eval-batch-size", "0"),
    ("--warmup-epochs", "-1"), ("--gamma", "0"), ("--gamma", "2"),
    ("--seed", "-1"), ("--keep-checkpoints", "-1"), ("--val-fraction", "1"), ("--val-fraction", "0"),
    ("--csgd-squeeze-to", "2"), ("--csgd-squeeze-to", "-1"),
]


def _as_printed(value: str) -> str:
    """How the message prints the parsed value (``got -0.0001``, ``got nan``, ``got 0``)."""
    try:
        return str(int(value))
    except ValueError:
        return repr(float(value))


@pytest.mark.parametrize("flag,value", TRAIN_RANGES)
def test_train_flag_out_of_range(box, flag, value, capsys, no_data_loading):
    box.refuses([*TRAIN, f"{flag}={value}"], capsys, flag, "must", f"got {_as_printed(value)}")


@pytest.mark.parametrize("flag,value", [("--schedule", "linear"), ("--amp", "fp8"), ("--finetune-schedule", "exp")])
def test_choice_fields(box, flag, value, capsys, no_data_loading):
    argv = [*TRAIN] if not flag.startswith("--finetune") else ["prune", "--model", "convnet_small",
                                                              "--target-macs", "0.5"]
    box.refuses([*argv, flag, value], capsys, flag, repr(value))


def test_milestones_must_increase(box, capsys, no_data_loading):
    box.refuses([*TRAIN, "--schedule", "step", "--milestones", "5", "3"], capsys, "--milestones", "[5, 3]")


PRUNE_RANGES = [
    ("--target-macs", "1"), ("--target-macs", "-0.1"), ("--target-macs", "nan"),
    ("--target-params", "1.5"), ("--ratio", "1"), ("--step-ratio", "0"), ("--step-ratio", "1"),
    ("--steps", "0"), ("--min-channels", "0"), ("--round-to", "-1"), ("--num-batches", "0"),
    ("--step-finetune-epochs", "-1"), ("--finetune-lr", "0"), ("--finetune-epochs", "-2"),
    ("--finetune-label-smoothing", "2"), ("--finetune-batch-size", "0"), ("--val-fraction", "1.5"),
    ("--eval-images", "-1"), ("--train-images", "-5"), ("--eval-every", "0"), ("--bn-recalibrate", "-1"),
]


@pytest.mark.parametrize("flag,value", PRUNE_RANGES)
def test_prune_flag_out_of_range(box, digits_ckpt, flag, value, capsys, no_data_loading):
    target = [] if flag in ("--target-macs", "--target-params", "--ratio") else ["--target-macs", "0.5"]
    box.refuses([*prune_args(digits_ckpt), *target, f"{flag}={value}"], capsys, flag, "must")


def test_two_targets(box, digits_ckpt, capsys, no_data_loading):
    box.refuses(prune_args(digits_ckpt, "--target-macs", "0.5", "--ratio", "0.3"), capsys,
                "--ratio", "cannot be combined with --target-macs")


def test_no_target(box, digits_ckpt, capsys, no_data_loading):
    box.refuses(prune_args(digits_ckpt), capsys, "--target-macs", "is required")


@pytest.mark.parametrize("extra,needle", [
    (["--step-ratio", "0.1", "--ratio", "0.5"], "--ratio and --target-params do not apply"),
    (["--step-ratio", "0.1"], "nothing would stop it"),
    (["--criterion", "csgd", "--target-macs", "0.5", "--steps", "3"], "prunes in one round"),
    (["--criterion", "csgd", "--target-macs", "0.5", "--step-ratio", "0.1"], "prunes in one round"),
])
def test_schedule_combinations(box, digits_ckpt, extra, needle, capsys, no_data_loading):
    box.refuses(prune_args(digits_ckpt, *extra), capsys, needle)


def test_demo_target_out_of_range(box, capsys, no_data_loading):
    box.refuses(["demo", "--target-macs", "1.2"], capsys, "--target-macs", "[0, 1)")


@pytest.mark.parametrize("extra,needle", [
    (["--batch", "0"], "--batch must be an integer >= 1"),
    (["--atol=-1"], "--atol must be a finite number > 0"),
    (["--atol", "nan"], "--atol must be a finite number > 0"),
    (["--input-size", "1", "8", "0"], "--input-size must be three sizes >= 1"),
])
def test_export_flags(box, digits_ckpt, extra, needle, capsys, no_data_loading):
    box.refuses(["export", "--weights", digits_ckpt, "--out", "m.onnx", *extra], capsys, needle)


@pytest.mark.parametrize("extra,needle", [
    (["--eval-images", "0"], "--eval-images must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--options", "kk=3"], "--options 'kk': not an option of car"),
    (["--options", "k=0"], "--options refused by car"),
    (["--data", "nowhere"], "--data 'nowhere' is neither a path"),
])
def test_car_scores_flags(box, digits_ckpt, extra, needle, capsys, no_data_loading):
    argv = ["car-scores", "--weights", digits_ckpt, "--data", "digits", "--out", "s.json"]
    box.refuses([*argv, *extra], capsys, needle)


def test_car_scores_cifar_checkpoint_with_digits(box, cifar_ckpt, capsys, no_data_loading):
    box.refuses(["car-scores", "--weights", cifar_ckpt, "--data", "digits", "--out", "s.json"], capsys,
                "expects 3x32x32", "gives 1x8x8")


def test_eval_batch_size(box, digits_ckpt, capsys, no_data_loading):
    box.refuses(["eval", "--weights", digits_ckpt, "--batch-size", "0"], capsys, "--batch-size", ">= 1")


def test_bad_value_in_config_file(box, capsys, no_data_loading):
    (box.root / "c.yaml").write_text("model: convnet_small\ntrain:\n  lr: .nan\n  device: cpu\n")
    box.refuses(["train", "--config", "c.yaml", "--out", "run"], capsys, "--lr (train.lr)", "nan")


# ---- devices ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["bogus", "gpu", "cuda:x", "meta"])
def test_device_name(box, device, capsys, no_data_loading):
    box.refuses([*TRAIN[:-4], "--out", "run", "--device", device], capsys, "--device", repr(device))


@pytest.fixture
def cpu_only_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "1", "--out", "run", "--device", "cuda"],
    ["prune", "--model", "convnet_small", "--target-macs", "0.5", "--finetune-device", "cuda:0"],
    ["eval", "--model", "convnet_small", "--device", "cuda"],
])
def test_cuda_on_a_cpu_only_torch(box, argv, capsys, cpu_only_torch, no_data_loading):
    box.refuses(argv, capsys, "asks for cuda", "--device cpu")


def test_cuda_index_beyond_the_visible_gpus(box, capsys, monkeypatch, no_data_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    box.refuses([*TRAIN[:-4], "--out", "run", "--device", "cuda:3"], capsys, "cuda:3", "only 1 GPU")


# ---- input size vs model ----------------------------------------------------------------------------------------

def test_cifar_checkpoint_with_default_digits(box, cifar_ckpt, capsys, no_data_loading):
    """Issue 10 item 13: was a 44-line traceback."""
    for argv in (["eval", "--weights", cifar_ckpt], prune_args(cifar_ckpt, "--target-macs", "0.5")):
        box.refuses(argv, capsys, cifar_ckpt, "expects 3x32x32 images and 10 classes", "--data digits gives 1x8x8")


def test_auto_weights_with_default_digits(box, capsys, no_data_loading):
    box.refuses(["eval", "--model", "resnet20", "--weights", "auto"], capsys, "resnet20", "expects 3x32x32",
                "gives 1x8x8")


def test_foreign_weights_with_default_digits(box, capsys, no_data_loading):
    """A .th state dict (read weights-only) tells its input channels and classes before the data loads."""
    torch.save({"state_dict": fp.create_model("resnet20", num_classes=100).state_dict()}, box.root / "r20.th")
    box.refuses(["eval", "--model", "resnet20", "--weights", "r20.th"], capsys, "r20.th",
                "expects 3x32x32 images and 100 classes", "gives 1x8x8")


def test_checkpoint_against_loaded_data_of_other_channels(box, digits_ckpt, capsys):
    """A path's shape is known only once it is read: still refused before the model is evaluated."""
    from PIL import Image

    for split, n in (("train", 3), ("test", 1)):
        for cls in "ab":
            (box.root / "rgb" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(box.root / "rgb" / split / cls / f"{i}.png")
    box.cache.mkdir()
    (box.cache / "keep").write_text("")  # the data itself is fine: its cache entry may be written
    capsys.readouterr()
    assert fp.cli.main.main(["-q", "eval", "--weights", digits_ckpt, "--data", "rgb"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "expects 1x8x8 images and 10 classes" in err[0] and "gives 3x8x8 images and 2" in err[0]


@pytest.mark.parametrize("size,needle", [
    (["1", "32", "32"], "takes 3 channels; pass --input-size 3 32 32"),
    (["3", "0", "32"], "must be three sizes >= 1"),
])
def test_info_input_size_against_a_cifar_model(box, cifar_ckpt, size, needle, capsys):
    box.refuses(["info", "--weights", cifar_ckpt, "--input-size", *size], capsys, needle)


def test_info_input_size_against_a_fixed_size_model(box, digits_ckpt, capsys):
    box.refuses(["info", "--weights", digits_ckpt, "--input-size", "1", "16", "16"], capsys,
                "takes 1x8x8; pass --input-size 1 8 8")


# ---- the parser's own errors are one line too -------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    ([*TRAIN, "--epochs", "abc"], "invalid int value: 'abc'"),
    ([*TRAIN, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ([*TRAIN, "--weight-decay", "-1e-4"], "expected one argument"),
    (["eval", "--split", "validation"], "invalid choice"),
    (["nosuchcommand"], "invalid choice"),
])
def test_parser_errors_are_one_line(box, argv, needle, capsys):
    line = box.refuses(argv, capsys, needle)
    assert line.endswith("--help")


def test_every_check_is_reachable_from_the_cli_module():
    """The checks are exported where the commands import them (a rename would break the CLI quietly)."""
    for name in ("validate_config", "check_eval_args", "check_info_args", "check_demo_args", "criterion_options"):
        assert callable(getattr(_args, name)), name
