"""The mutation-testing tools' own rules (benchmarks/mutation_report.py, mutmut_sample.py, mutation_merge.py):
what they call equivalent decides the reported score, so each rule is pinned against hand-made mutants."""

from __future__ import annotations

import hashlib
import json

import pytest

from shared_paths import load_benchmark_script

pytest.importorskip("mutmut")


ORIG = '''
def x_f__mutmut_orig(data, n):
    total = len(data)
    logger.info("read %d of %d",
                n, total)
    for x in progress(data, total=total, desc="features", unit="batch"):
        n += x
    return n
'''


@pytest.mark.parametrize("mutant, equivalent", [
    ('logger.info("read %d of %d",\n                None, total)', True),          # a continuation line of the call
    ('logger.info("XXread %d of %dXX",\n                n, total)', True),
    ('logger.warning("read %d of %d",\n                n, total)', False),        # warnings are behaviour
    ('print("read %d of %d",\n                n, total)', False),
])
def test_a_change_inside_a_debug_or_info_call_is_equivalent_and_nothing_else(tmp_path, mutant, equivalent):
    report = load_benchmark_script("mutation_report")
    mutated = ORIG.replace('logger.info("read %d of %d",\n                n, total)', mutant)
    mutated = mutated.replace("x_f__mutmut_orig", "x_f__mutmut_1")
    path = tmp_path / "mutants" / "src" / "pkg" / "mod.py"
    path.parent.mkdir(parents=True)
    path.write_text(ORIG + mutated)
    assert (report.tree_equivalent(tmp_path, "pkg.mod.x_f__mutmut_1") == report.DISPLAY_REASON) is equivalent


@pytest.mark.parametrize("old, new, equivalent", [
    ('desc="features"', 'desc="XXfeaturesXX"', True),
    ('unit="batch"', "unit=None", True),
    ("total=total", "total=None", True),
    ("progress(data,", "progress(data[1:],", False),                         # what is iterated is behaviour
    ("n += x", "n -= x", False),
])
def test_only_the_display_keywords_of_progress_are_dropped(tmp_path, old, new, equivalent):
    report = load_benchmark_script("mutation_report")
    mutated = ORIG.replace(old, new).replace("x_f__mutmut_orig", "x_f__mutmut_2")
    path = tmp_path / "mutants" / "src" / "pkg" / "mod.py"
    path.parent.mkdir(parents=True)
    path.write_text(ORIG + mutated)
    assert (report.tree_equivalent(tmp_path, "pkg.mod.x_f__mutmut_2") is not None) is equivalent


@pytest.mark.parametrize("lines, reason", [
    (['-logger.debug("a %s", x)', '+logger.debug(None, x)'], "LOGGING_REASON"),
    (["-y = w.to(device)", "+y = w.to(None)"], "DEVICE_REASON"),
    (["-t = torch.zeros(3, device=dev)", "+t = torch.zeros(3, device=None)"], "DEVICE_REASON"),
    (["-y = w.to(device)", "+y = w.to(torch.float16)"], None),
    (["-y = w.to(device)", "+y = None"], None),
])
def test_line_rules(lines, reason):
    report = load_benchmark_script("mutation_report")
    assert report.rule_equivalent(lines) == (getattr(report, reason) if reason else None)


def test_the_sample_is_the_hash_threshold_and_its_share_is_the_fraction():
    sample = load_benchmark_script("mutmut_sample")
    names = [f"pkg.mod.x_f__mutmut_{i}" for i in range(4000)]
    for name in names[:50]:  # the rule, recomputed independently
        frac = int(hashlib.sha256(f"7:{name}".encode()).hexdigest(), 16) / 2 ** 256
        assert sample.in_sample(name, 0.2, 7) == (frac < 0.2)
    drawn = [n for n in names if sample.in_sample(n, 0.2, 7)]
    assert abs(len(drawn) / len(names) - 0.2) < 4 * (0.2 * 0.8 / len(names)) ** 0.5  # binomial, 4 s.e.
    assert drawn != [n for n in names if sample.in_sample(n, 0.2, 8)]  # another seed, another draw
    assert all(sample.in_sample(n, 1.0, 7) for n in names[:100])


def _run(folder, verdicts, config="before"):
    meta = folder / "mutants" / "src" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": verdicts}))
    (folder / "pyproject.toml").write_text(config)
    return folder


def test_merge_keeps_before_verdicts_not_re_run_except_those_of_changed_functions(tmp_path):
    merge = load_benchmark_script("mutation_merge").merge
    before = _run(tmp_path / "b", {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 0,
                                   "pkg.mod.x_g__mutmut_1": 0, "pkg.mod.x_g__mutmut_2": 1})
    after = _run(tmp_path / "a", {"pkg.mod.x_f__mutmut_1": None, "pkg.mod.x_f__mutmut_2": 1,
                                  "pkg.mod.x_g__mutmut_1": None, "pkg.mod.x_g__mutmut_2": None,
                                  "pkg.mod.x_g__mutmut_3": 1}, config="after")
    assert merge(before, after, tmp_path / "out", ["x_g__"]) == 1
    out = json.loads((tmp_path / "out" / "mutants" / "src" / "pkg" / "mod.py.meta").read_text())
    # f: 1 not re-run keeps its before verdict, 2 re-run takes after's; g changed: after's verdicts only
    assert out["exit_code_by_key"] == {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 1,
                                       "pkg.mod.x_g__mutmut_1": None, "pkg.mod.x_g__mutmut_2": None,
                                       "pkg.mod.x_g__mutmut_3": 1}
    assert (tmp_path / "out" / "pyproject.toml").read_text() == "after"
    assert merge(before, after, tmp_path / "out", []) == 3  # its own output folder is replaced


def test_merge_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    merge = load_benchmark_script("mutation_merge").merge
    before, after = _run(tmp_path / "b", {}), _run(tmp_path / "a", {})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="was not written by mutation_merge.py"):
        merge(before, after, tmp_path / "mine", [])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
