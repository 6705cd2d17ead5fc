"""``fp.prune`` and ``filterprune prune`` agree: same options, same kept channels, same steps.

Oracles: the CLI's pruned checkpoint and the API's pruned model hold bit-identical tensors (so the same
channels were kept, in the same order); the step fine-tune callback is called once per step, on the
model at that step's counted MACs; and what it trains is what the next step scores.
"""

import dataclasses
import json

import pytest
import torch

import filterprune as fp
from filterprune.api import conv_widths
from filterprune.cli.main import main
from filterprune.config import PruneConfig, PruneRunConfig
from filterprune.criteria.car_greedy import steps_for_k
from filterprune.data import load_data
from filterprune.metrics import count
from filterprune.selection import SelectOptions
from filterprune.workflows._scored import car_eval_loader
from filterprune.workflows.prune_run import example_batch


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    torch.manual_seed(0)
    return str(fp.save(fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8), path))


@pytest.fixture(scope="module")
def splits():
    return load_data("digits")


def cli_prune(weights: str, out, *flags: str) -> dict:
    # fp.prune re-calibrates no BatchNorm by itself (fp.recalibrate_bn is its own call): the CLI's
    # default --bn-recalibrate 256 is turned off to compare the pruning alone; and the API's default
    # allocation (global) is asked for: the CLI's auto would measure sensitivity curves
    argv = ["-q", "prune", "--weights", weights, "--data", "digits", "--finetune-device", "cpu",
            "--finetune-epochs", "0", "--bn-recalibrate", "0", "--allocation", "global", "--out", str(out), *flags]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CASES = {
    # CAR greedy, about k filters per step: fp.prune read k only since this session (it pruned in one step)
    "car-k": (["--criterion", "car", "--criterion-options", "k=6,eval_images=60", "--target-macs", "0.4"],
              dict(criterion="car", target_macs=0.4, criterion_kwargs={"k": 6, "eval_images": 60})),
    # several steps, linear schedule, a per-layer ratio, a max ratio
    "l1-steps": (["--criterion", "l1", "--ratio", "0.3", "--steps", "2", "--schedule", "linear",
                  "--layer-ratio", "features.0=0.25", "--max-ratio", "0.6"],
                 dict(criterion="l1", ratio=0.3, steps=2, schedule="linear", layer_ratios={"features.0": 0.25},
                      max_ratio=0.6)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_and_cli_keep_the_same_channels(weights, splits, tmp_path, case):
    flags, kwargs = CASES[case]
    summary = cli_prune(weights, tmp_path / "cli", *flags)
    model = fp.load(weights)
    x = example_batch(splits.train)
    data = None
    if kwargs["criterion"] == "car":  # the CLI's CAR evaluation set: fixed, seeded, un-augmented
        cfg = PruneRunConfig(prune=PruneConfig(criterion="car", criterion_options="k=6,eval_images=60"))
        data = car_eval_loader(splits, cfg, "cpu")
    report = fp.prune(model, x, data=data, **kwargs)
    assert same_tensors(model, fp.load(tmp_path / "cli" / "model.safetensors"))
    assert [s["macs"] for s in summary["report"]["steps"]] == [s.macs for s in report.steps]
    assert len(report.steps) > 1


def test_car_k_sets_the_number_of_steps_in_the_api(splits):
    model = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    x = example_batch(splits.train)
    expected = steps_for_k(model, x, 5, options=SelectOptions(target_macs=0.4, normalize="none"))
    data = [(torch.randn(30, 1, 8, 8), torch.arange(30) % 10)]
    calls = []

    def finetune(net, step):
        calls.append((step, count(net, x)[0]))

    report = fp.prune(model, x, "car", target_macs=0.4, data=data, criterion_kwargs={"k": 5}, finetune=finetune)
    assert expected > 1 and len(report.steps) == expected
    # called once per step, with the model at exactly the MACs that step recorded
    assert calls == [(s.step, s.macs) for s in report.steps]


def test_step_finetune_trains_what_the_next_step_scores():
    """The callback's changes are seen by the next step: a filter it zeroes after step 1 is removed in
    step 2 (l1, the same fraction of every group)."""
    torch.manual_seed(0)
    model = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    marker = {}

    def finetune(net, step):
        conv = net.features[3]
        if step == 1:  # the filter of largest norm, zeroed: l1 must now rank it last in its group
            j = int(conv.weight.abs().sum((1, 2, 3)).argmax())
            with torch.no_grad():
                conv.weight[j] = 0
                net.features[4].bias[j] = 1234.5
        marker[step] = conv.out_channels

    fp.prune(model, x, "l1", ratio=0.4, steps=2, global_ranking=False, finetune=finetune)
    assert marker[2] < marker[1]
    assert 1234.5 not in model.features[4].bias.tolist()  # the zeroed filter (marked by its BN bias) is gone


def test_car_k_step_finetune_runs_after_every_step(weights, tmp_path):
    """``--step-finetune-epochs`` on CAR's ``k=`` path: one fine-tune stage per greedy step, and each
    changes the weights (before the fix the k path ran no fine-tune: it tested ``--steps``, which k left at 1)."""
    out = tmp_path / "car"
    summary = cli_prune(weights, out, "--criterion", "car", "--criterion-options", "k=6,eval_images=60",
                        "--target-macs", "0.4", "--step-finetune-epochs", "1", "--finetune-batch-size", "256")
    stages = json.loads((out / "run_state.json").read_text())["stages"]
    names = [s["name"] for s in stages]
    steps = len(summary["report"]["steps"])
    assert steps > 1
    assert [n for n in names if n.endswith(".finetune")] == [f"step{i}.finetune" for i in range(1, steps + 1)]
    for i in range(1, steps + 1):  # the fine-tune changed the model the next step scores
        applied = fp.load(out / "stages" / next(s["model"] for s in stages if s["name"] == f"step{i}.apply"))
        tuned = fp.load(out / "stages" / next(s["model"] for s in stages if s["name"] == f"step{i}.finetune"))
        assert not same_tensors(applied, tuned)
        assert conv_widths(applied) == conv_widths(tuned)


def test_csgd_through_prune_says_to_use_csgd():
    model = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    with pytest.raises(ValueError, match=r"fp\.csgd\(") as e:
        fp.prune(model, torch.randn(2, 1, 8, 8), "csgd", target_macs=0.5)
    assert "\n" not in str(e.value)


def test_unknown_criterion_lists_csgd_too():
    model = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    with pytest.raises(ValueError, match="unknown criterion 'nope'") as e:
        fp.prune(model, torch.randn(2, 1, 8, 8), "nope", target_macs=0.5)
    for name in [*fp.list_criteria(), "csgd"]:
        assert name in str(e.value)


def test_export_onnx_is_public():
    assert "export_onnx" in fp.__all__ and callable(fp.export_onnx)


@pytest.mark.slow
def test_fp_csgd_and_the_cli_end_with_the_same_model(weights, splits, tmp_path):
    """``fp.csgd`` and ``filterprune prune --criterion csgd`` run the same function: same widths, same
    clusters, same training, same trimmed weights."""
    from filterprune.config import PruneRunConfig
    from filterprune.workflows.train_run import loaders

    opts = {"centripetal": 49.9995, "vector_ratio": 1.0}
    summary = cli_prune(weights, tmp_path / "cli", "--criterion", "csgd", "--criterion-options",
                        "centripetal=49.9995,vector_ratio=1.0", "--target-macs", "0.5", "--finetune-epochs", "2",
                        "--finetune-momentum", "0", "--finetune-batch-size", "32")
    recipe = dataclasses.replace(PruneRunConfig().finetune, momentum=0.0, batch_size=32, device="cpu")
    train, val, _ = loaders(splits, recipe.batch_size, recipe.eval_batch_size, "cpu", recipe.seed)
    model = fp.load(weights)
    result = fp.csgd(model, example_batch(splits.train), train, target_macs=0.5, epochs=2, train=recipe,
                     val_data=val, options=opts)
    cli_model = fp.load(tmp_path / "cli" / "model.safetensors")
    assert conv_widths(model) == conv_widths(cli_model) != result.report.widths_before
    assert result.clusters == json.loads((tmp_path / "cli" / "centripetal" / "clusters.json").read_text())
    assert [r["val_acc"] for r in result.history] == [
        json.loads(line)["val_acc"] for line in (tmp_path / "cli" / "centripetal" / "metrics.jsonl").read_text().splitlines()]
    assert same_tensors(model, cli_model)
    assert summary["report"]["macs_after"] == result.report.macs_after


def test_fp_csgd_recipe_defaults_are_the_cli_fine_tune_recipe(monkeypatch):
    """``fp.csgd``'s recipe is the CLI's fine-tune recipe with ``epochs``/``lr`` overriding it, and dict
    options are the ``--criterion-options`` keys (fast: the training itself is the slow test above)."""
    from filterprune.config import PruneRunConfig
    from filterprune.methods import csgd_run

    seen = {}
    monkeypatch.setattr(csgd_run, "csgd_prune", lambda *a, **k: seen.update(cfg=a[4], val=a[3], **k))
    model = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    fp.csgd(model, torch.randn(2, 1, 8, 8), [], target_macs=0.3, epochs=3, options={"centripetal": 0.5})
    assert seen["cfg"] == dataclasses.replace(PruneRunConfig().finetune, epochs=3)
    assert seen["options"] == fp.CSGDOptions(centripetal=0.5) and seen["target_macs"] == 0.3
    fp.csgd(model, torch.randn(2, 1, 8, 8), [], ratio=0.3, lr=0.2, train=fp.TrainConfig(epochs=4))
    assert (seen["cfg"].epochs, seen["cfg"].lr, seen["options"]) == (4, 0.2, fp.CSGDOptions())
    with pytest.raises(ValueError, match="unknown C-SGD option"):
        fp.csgd(model, torch.randn(2, 1, 8, 8), [], ratio=0.3, options={"centripetl": 0.5})


def car_data(splits, options: str):
    cfg = PruneRunConfig(prune=PruneConfig(criterion="car", criterion_options=options))
    return car_eval_loader(splits, cfg, "cpu")


def test_car_scope_layer_equals_the_masked_greedy_reference(weights, splits):
    """``scope=layer`` through ``fp.prune`` (surgery after every greedy step, a callback between them)
    keeps exactly the filters one masked greedy run of ``car_prune_layer`` with the same k keeps."""
    from filterprune.criteria.car_greedy import car_prune_layer

    data = car_data(splits, "eval_images=60")
    x = example_batch(splits.train)
    reference = fp.load(weights)
    car_prune_layer(reference, x, data, "features.3", 16, k=3, eval_images=60)
    model = fp.load(weights)
    widths = []
    report = fp.prune(model, x, "car", layer_ratios={"features.3": 0.5}, data=data,
                      criterion_kwargs={"scope": "layer", "k": 3, "eval_images": 60},
                      finetune=lambda net, step: widths.append((step, net.features[3].out_channels)))
    assert same_tensors(model, reference)
    assert widths == [(1, 29), (2, 26), (3, 23), (4, 20), (5, 17), (6, 16)]  # 16 filters, 3 per step
    assert [s.removed_channels for s in report.steps] == [3, 3, 3, 3, 3, 1]
    assert report.widths_after["features.3"] == 16 and report.widths_after["features.7"] == 32


def test_car_scope_layer_from_the_cli_with_step_finetune(weights, splits, tmp_path):
    """``--criterion-options scope=layer,k=N --layer-ratio NAME=R``: one recorded greedy step per N filters,
    a fine-tune after each; the first step (before any fine-tune) removes what the API's first step does."""
    from filterprune.criteria.car_greedy import car_prune_layers

    out = tmp_path / "car"
    summary = cli_prune(weights, out, "--criterion", "car", "--criterion-options", "scope=layer,k=6,eval_images=60",
                        "--layer-ratio", "features.0=0.5", "--step-finetune-epochs", "1",
                        "--finetune-batch-size", "256")
    stages = json.loads((out / "run_state.json").read_text())["stages"]
    names = [s["name"] for s in stages]
    assert names[1:-2] == ["step1.car_layer", "step1.finetune", "step2.car_layer", "step2.finetune"]
    assert summary["report"]["widths_after"]["features.0"] == 8
    api = car_prune_layers(fp.load(weights), example_batch(splits.train), car_data(splits, "eval_images=60"),
                           {"features.0": 0.5}, k=6, eval_images=60)
    assert [r["removed"] for r in api][0] == stages[1]["result"]["removed"]
    assert [r["removed_channels"] for r in api] == [6, 2]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(target_macs=0.3, layer_ratios={"features.0": 0.5}), "drop target_macs"),
    (dict(), "needs the layers"),
    (dict(layer_ratios={"features.0": 0.5}, steps=2), "leave steps at 1"),
    (dict(layer_ratios={"nothing*": 0.5}), "no prunable group"),
])
def test_car_scope_layer_refusals_are_one_line(kwargs, needle):
    model = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    data = [(torch.randn(20, 1, 8, 8), torch.arange(20) % 10)]
    with pytest.raises(ValueError, match=needle) as e:
        fp.prune(model, torch.randn(2, 1, 8, 8), "car", data=data, criterion_kwargs={"scope": "layer"}, **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("flags,needle", [
    (["--criterion-options", "scope=layer", "--target-macs", "0.3", "--layer-ratio", "features.0=0.5"], "drop target_macs"),
    (["--criterion-options", "scope=layer"], "needs the layers"),
    (["--criterion-options", "scope=area", "--layer-ratio", "features.0=0.5"], "scope must be one of"),
])
def test_car_scope_layer_cli_refusals_before_any_work(weights, tmp_path, flags, needle, capsys):
    argv = ["-q", "prune", "--weights", weights, "--data", "digits", "--criterion", "car", "--out",
            str(tmp_path / "x"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and not (tmp_path / "x").exists()
