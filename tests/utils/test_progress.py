"""The progress wrapper's switch (set_progress, FILTERPRUNE_PROGRESS, auto) and the CLI's --quiet."""

from __future__ import annotations

import logging

import pytest

from filterprune.cli.main import main
from filterprune.utils import progress as prog


@pytest.fixture(autouse=True)
def _auto(monkeypatch):
    monkeypatch.delenv(prog.ENV_VAR, raising=False)
    monkeypatch.setattr(prog, "DELAY_S", 0.0)  # show bars at once, so a bar that should not appear would
    previous = prog.set_progress(None)
    yield
    prog.set_progress(previous)


def _bar_output(capsys) -> str:
    capsys.readouterr()
    assert list(prog.progress(range(5), desc="phase-x", unit="thing")) == [0, 1, 2, 3, 4]
    return capsys.readouterr().err


def test_forced_on_draws_a_bar_on_stderr(capsys, monkeypatch):
    monkeypatch.setenv(prog.ENV_VAR, "1")
    err = _bar_output(capsys)
    assert "phase-x" in err and "/5" in err and "thing" in err  # what "nothing shown" below would miss if broken


@pytest.mark.parametrize("how", ["set_progress", "env"])
def test_opt_out_shows_nothing_and_yields_everything(capsys, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(prog.ENV_VAR, "0")
    else:
        monkeypatch.setenv(prog.ENV_VAR, "1")  # set_progress wins over the environment
        prog.set_progress(False)
    assert not prog.progress_enabled()
    assert _bar_output(capsys) == ""


def test_auto_hides_bars_when_stderr_is_not_a_terminal(capsys):
    assert not prog.progress_enabled()  # pytest captures stderr: not a TTY
    assert _bar_output(capsys) == ""


def test_set_progress_refuses_non_bools():
    with pytest.raises(TypeError):
        prog.set_progress("no")  # type: ignore[arg-type]


def test_cli_quiet_prints_no_progress_and_no_info(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(prog.ENV_VAR, "1")  # bars forced on: only --quiet can hide them
    cmd = ["train", "--model", "convnet_small", "--data", "digits", "--epochs", "1", "--device", "cpu"]
    assert main([*cmd, "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "batch" in err and "\r" in err  # the bars are there without --quiet
    for n, argv in enumerate((["-q", *cmd], [*cmd, "--quiet"])):  # before or after the command
        assert main([*argv, "--out", str(tmp_path / f"quiet{n}")]) == 0
        err = capsys.readouterr().err
        assert "batch" not in err and "\r" not in err and "INFO" not in err
    assert prog.progress_enabled()  # main() put the caller's setting back


def test_cli_quiet_still_shows_errors(tmp_path, capsys):
    rc = main(["prune", "--quiet", "--weights", str(tmp_path / "missing.safetensors"), "--data", "digits",
               "--target-macs", "0.5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no such file" in err


def test_log_lines_go_through_tqdm_write(capsys):
    handler = prog.TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    handler.stream = __import__("sys").stderr
    handler.emit(record)
    assert capsys.readouterr().err == "hello there\n"
