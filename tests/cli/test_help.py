"""Help that is true: every default ``--help`` shows is the one a run uses, every name it points to exists.

Oracles: the defaults are read back from the ``--help`` text a user sees and compared with the config
a run resolves when no flag is typed (``resolve_config``: the dataclass defaults, nested factories
included) or, for hand-written flags, with the parser's own default; the criterion and model names
listed are compared with the registries.
"""

import argparse
import re
from pathlib import Path

import pytest

from filterprune.cli._args import _dotted_fields, criterion_options, overrides, show_default
from filterprune.cli.main import build_parser, main
from filterprune.config import PruneRunConfig, RunConfig, from_dict, merge
from filterprune.criteria import list_criteria
from filterprune.models import list_models
from filterprune.workflows.info import DESCRIPTIONS, criterion_option_rows
from filterprune.workflows.methods import METHODS

REPO = Path(__file__).resolve().parents[2]
GENERATED = {"train": RunConfig, "prune": PruneRunConfig}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def help_text(command: str, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, *extra, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def shown_defaults(text: str) -> dict[str, str]:
    """``{flag: default shown}`` for every option entry of a ``--help`` text that shows a default."""
    body = text[text.index("options:"):]
    entries = re.split(r"\n  (?=-)", body)
    out = {}
    for entry in entries[1:]:
        flag = re.findall(r"--[\w-]+", entry.split("  ")[0]) or re.findall(r"--[\w-]+", entry)
        m = re.search(r"\(default: (.*?)\)\s*$", " ".join(entry.split()))
        if m and flag:
            out[flag[-1]] = m.group(1)
    return out


def resolved(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("command", sorted(GENERATED))
def test_generated_flags_show_the_defaults_a_run_uses(command, capsys):
    cls = GENERATED[command]
    parser = subcommands()[command]
    shown = shown_defaults(help_text(command, capsys))
    # what a run resolves with no flag typed and no --config: resolve_config's path, without the checks
    # that need --weights and files
    args = parser.parse_args([])
    run_cfg = merge(from_dict(cls, {}), overrides(args, cls))
    fields = set(_dotted_fields(cls))
    checked = 0
    for action in parser._actions:
        if action.dest not in fields:
            continue
        flag = action.option_strings[-1]
        expected = show_default(resolved(run_cfg, action.dest))
        assert flag in shown, f"{flag} shows no default"
        assert shown[flag] == expected, f"{flag}: help says {shown[flag]}, a run uses {expected}"
        checked += 1
    assert checked == len(fields)


def test_finetune_lr_help_is_the_fine_tune_recipe(capsys):
    """The bug: --finetune-lr showed TrainConfig's 0.05 while runs used the fine-tune factory's 0.01."""
    shown = shown_defaults(help_text("prune", capsys))
    assert float(shown["--finetune-lr"]) == PruneRunConfig().finetune.lr == 0.01
    assert float(shown_defaults(help_text("train", capsys))["--lr"]) == RunConfig().train.lr == 0.05


@pytest.mark.parametrize("command", sorted(set(subcommands()) - set(GENERATED)))
def test_hand_written_flags_show_their_parser_default(command, capsys):
    parser = subcommands()[command]
    shown = shown_defaults(help_text(command, capsys))
    for action in parser._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        # a None default is described in words ("the one the checkpoint records..."): nothing to compare
        if flag in shown and action.default not in (argparse.SUPPRESS, None):
            assert shown[flag] in (str(action.default), show_default(action.default)), flag


def test_criterion_help_lists_every_criterion(capsys):
    text = " ".join(help_text("prune", capsys).split())
    text = text[text.index("options:"):]
    entry = text[text.index("--criterion PRUNE.CRITERION "):text.index("--target-macs PRUNE")]
    listed = entry.split("one of: ")[1].split(" (default")[0].split(", ")
    assert listed == sorted([*list_criteria(), "csgd"]) == sorted(criterion_options())


def test_help_names_only_commands_that_exist(capsys):
    """Every ``filterprune WORD`` in any help text is a subcommand (``train --help`` once pointed to a
    ``list-models`` command that never existed)."""
    commands = set(subcommands())
    for command in commands:
        text = " ".join(help_text(command, capsys).split())
        # a command as typed: filterprune WORD --flag, or ``filterprune WORD`` in backticks
        for word in re.findall(r"filterprune (?:-q )?([a-z][\w-]*)(?= --?[a-z]|``)", text):
            assert word in commands, f"{command} --help mentions filterprune {word}"
        assert "list-models" not in text


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_configs_refer_only_to_files_in_the_repository(path):
    missing = [ref for ref in re.findall(r"[\w./-]+\.(?:md|py|yaml|json)\b", path.read_text())
               if not (REPO / ref).exists()]
    assert not missing, f"{path.name} refers to {missing[0]}, which is not in the repository"


def test_info_list_has_one_line_per_model_criterion_and_method(capsys, monkeypatch):
    from filterprune.criteria import CRITERIA
    from filterprune.models._registry import MODELS

    def my_net(num_classes: int = 10):
        """A user's net, registered here. Second sentence not shown."""

    monkeypatch.setitem(MODELS._factories, "zz_user_net", my_net)  # a user registration, undone after the test
    assert main(["info", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    entries = {line.split()[0]: line for line in lines if line.startswith("  ")}
    methods = [n for n in METHODS.names() if n not in list_criteria()]
    assert "csgd" in methods
    assert sorted(entries) == sorted({*list_models(), *list_criteria(), *methods})
    assert entries["zz_user_net"].split(None, 1)[1] == "A user's net, registered here"  # its docstring
    builtin = {n for n in list_models() if MODELS.get(n).__module__.startswith("filterprune.")}
    builtin |= {n for n in list_criteria() if CRITERIA.get(n).__module__.startswith("filterprune.")} | set(methods)
    for name in builtin:  # built-ins come from the table (what it is + its source), never a fallback
        assert any(name in DESCRIPTIONS[k] for k in ("model", "criterion", "method")), name
        assert len(entries[name].split(None, 1)[1]) > 20


@pytest.mark.parametrize("name", sorted(criterion_options()))
def test_info_criterion_lists_each_option_key(name, capsys):
    assert main(["info", "--criterion", name]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = [line.split(":")[0].strip() for line in out[2:]]
    assert keys == list(criterion_options()[name]) or sorted(keys) == sorted(criterion_options()[name])
    for row in criterion_option_rows(name):
        assert row["meaning"], f"{name} option {row['key']} is undocumented"


def test_prune_criterion_help_lists_its_option_keys(capsys):
    text = help_text("prune", capsys, "--criterion", "car")
    tail = text[text.index("--criterion car\n"):]
    for key in criterion_options()["car"]:
        assert f"\n  {key}: " in tail


def test_prune_help_for_an_unknown_criterion_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--criterion", "nope", "--help"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "'nope' is not a criterion" in err and "csgd" in err and "\n" not in err
