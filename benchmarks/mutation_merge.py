"""Merge a mutmut run's "before" verdicts with a later re-run of its survivors (the "after" of the report).

    python benchmarks/mutation_merge.py BEFORE AFTER OUT [CHANGED ...]

OUT gets AFTER's config, sources and verdicts; every mutant AFTER did not re-run takes BEFORE's verdict,
except the mutants of functions changed between the two runs (named by substrings of the mutant names,
e.g. ``x_tie_channels``): their numbering refers to the new code, so they count only as AFTER tested
them. Used when the re-run needs a wider test selection than the first run, which mutmut cannot change
in place (a new selection resets every verdict). Then ``mutation_report.py --runs <parent of OUT>``.
OUT is replaced only if it is a folder this script wrote (it holds ``.mutation_merge``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

MARK = ".mutation_merge"


def merge(before: Path, after: Path, out: Path, changed: list[str]) -> int:
    """Write the merged run to ``out``; returns how many verdicts were taken from ``before``."""
    if out.exists():
        if not (out / MARK).exists():
            raise SystemExit(f"{out} exists and was not written by mutation_merge.py: choose another OUT")
        shutil.rmtree(out)
    (out / "mutants").mkdir(parents=True)
    (out / MARK).write_text(f"{before} + {after}\n")
    shutil.copy(after / "pyproject.toml", out / "pyproject.toml")
    shutil.copytree(after / "mutants" / "src", out / "mutants" / "src")
    filled = 0
    for meta in (out / "mutants" / "src").rglob("*.meta"):
        src = before / "mutants" / meta.relative_to(out / "mutants")
        if not src.exists():
            continue
        merged, old = json.loads(meta.read_text()), json.loads(src.read_text())["exit_code_by_key"]
        for name, code in merged["exit_code_by_key"].items():
            if code is None and name in old and not any(c in name for c in changed):
                merged["exit_code_by_key"][name] = old[name]
                filled += 1
        meta.write_text(json.dumps(merged))
    return filled


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    before, after, out = map(Path, sys.argv[1:4])
    for run in (before, after):
        if not (run / "mutants" / "src").is_dir():
            raise SystemExit(f"{run} is not a mutmut run folder (no mutants/src): pass the MUTMUT_DIR of a run")
    print(f"{merge(before, after, out, sys.argv[4:])} verdicts taken from {before}")


if __name__ == "__main__":
    main()
