"""Summarise mutation-testing runs (benchmarks/mutation.sh) into benchmarks/results/mutation_report.{json,md}.

    python benchmarks/mutation_report.py [--runs /tmp/filterprune-mutation] [--label after]

Reads every run folder under ``--runs`` (one per module, see mutation.sh), counts mutmut's verdicts per
mutated module, and marks the survivors listed in ``benchmarks/mutation_equivalent.json`` as
equivalent (that file gives the reason for each; ``mutmut show NAME`` in the run folder prints the
mutant). Runs are recorded under ``--label`` (e.g. ``before`` = the suite before the oracle tests of
issue 14, ``after`` = with them), so one report holds both.

Score = killed / (generated - equivalent - not checked), killed including timeouts (a mutant that
makes the tests hang is detected).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import functools
import json
import math
import re
import subprocess
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code
from mutmut_sample import in_sample

HERE = Path(__file__).resolve().parent
OUT_JSON = HERE / "results" / "mutation_report.json"
OUT_MD = HERE / "results" / "mutation_report.md"
EQUIVALENT = HERE / "mutation_equivalent.json"


def read_run(run: Path, patterns: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{module path: {mutant name: status}} of one run folder (only names matching ``patterns``)."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((run / "mutants" / "src").rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if patterns:
            codes = {n: c for n, c in codes.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
        if codes:
            module = str(meta.relative_to(run / "mutants")).removesuffix(".meta")
            out[module] = {name: status_by_exit_code[code] for name, code in codes.items()}
    return out


@functools.cache
def _functions(path: Path) -> dict[str, list[str]]:
    """Source lines (without the ``def`` line) of every function in a mutated module, by name."""
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = lines[node.body[0].lineno - 1:node.end_lineno]
    return out


#: survivors equivalent by rule: every changed line is a logging call at debug/info level (its
#: arguments or text; logging reports its own formatting errors and the level hides them by default)
_LOG_CALL = re.compile(r"^[-+]\s*logger\.(debug|info)\(")
LOGGING_REASON = "argument or text of a logger.debug/info call: no behaviour (by rule, mutation_report.py)"


#: ... or the only change is a device argument set to None (``.to(device)`` -> ``.to(None)``,
#: ``device=dev`` -> ``device=None``): a no-op where every tensor is on the CPU, as in this suite
_DEVICE_ARG = re.compile(r"(\.to\(|device=)([\w.]*device\w*|dev)(?=[,)])")
DEVICE_REASON = ("a device argument set to None: a no-op with every tensor on the CPU, as in this suite "
                 "(by rule, mutation_report.py)")


def rule_equivalent(lines: list[str]) -> str | None:
    """The reason a mutant is equivalent by rule (``_LOG_CALL``, ``_DEVICE_ARG``), else ``None``."""
    if lines and all(_LOG_CALL.match(ln) for ln in lines):
        return LOGGING_REASON
    old = [ln[1:] for ln in lines if ln.startswith("-")]
    new = [ln[1:] for ln in lines if ln.startswith("+")]
    if len(old) == len(new) == 1:
        variants = {old[0][:m.start(2)] + "None" + old[0][m.end(2):] for m in _DEVICE_ARG.finditer(old[0])}
        if new[0] in variants:
            return DEVICE_REASON
    return None


#: ... or, compared as syntax trees, the mutant's function equals the original once every logger.debug/info
#: statement is dropped (a change inside a call spanning several lines) and the display-only keywords of
#: ``progress(...)`` (``desc``, ``unit``, ``total``: the bar's text and length, not what is iterated) are dropped
_DISPLAY_KEYWORDS = {"desc", "unit", "total"}
DISPLAY_REASON = ("only a logger.debug/info call or a display-only progress() keyword (desc, unit, total) differs, "
                  "compared as syntax trees (by rule, mutation_report.py)")


class _DropDisplay(ast.NodeTransformer):
    """Removes logger.debug/info statements and progress()'s display-only keywords from a function's tree."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        call = node.value
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in ("debug", "info")
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "logger"):
            return None
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == "progress":
            node.keywords = [k for k in node.keywords if k.arg not in _DISPLAY_KEYWORDS]
        return self.generic_visit(node)


@functools.cache
def _trees(path: Path) -> dict[str, str]:
    """Every function of a mutated module as the dump of its body with :class:`_DropDisplay` applied, by name."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = ast.Module(body=[_DropDisplay().visit(s) or ast.Pass() for s in node.body], type_ignores=[])
            out[node.name] = ast.dump(body)
    return out


def _mutated(run: Path, name: str) -> tuple[Path, str]:
    """The mutated module holding mutant ``name`` in ``run``'s mutants/, and the mutant's function name there."""
    module, _, func = name.rpartition(".")
    return run / "mutants" / "src" / Path(*module.split(".")).with_suffix(".py"), func


def tree_equivalent(run: Path, name: str) -> str | None:
    """:data:`DISPLAY_REASON` if the mutant and its original differ only in what :class:`_DropDisplay` drops."""
    path, func = _mutated(run, name)
    trees = _trees(path) if path.exists() else {}
    orig = trees.get(func.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    return DISPLAY_REASON if orig is not None and trees.get(func) == orig else None


def diff_of(lines: list[str]) -> str:
    """A mutant's diff for the report: its :func:`diff_lines` joined, at most 300 characters."""
    return " / ".join(lines)[:300]


def diff_lines(run: Path, name: str) -> list[str]:
    """The mutant's changed lines (``-old``, ``+new``): its function against the original in the run's
    mutants/ (what ``mutmut show`` prints, without a process per mutant; ``mutmut show`` is the fallback)."""
    path, func = _mutated(run, name)
    funcs = _functions(path) if path.exists() else {}
    orig = funcs.get(func.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    if func in funcs and orig is not None:
        lines = [ln for ln in difflib.ndiff(orig, funcs[func]) if ln.startswith(("+ ", "- "))]
    else:
        res = subprocess.run(["mutmut", "show", name], cwd=run, capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return [ln[0] + ln[1:].strip() if ln[1:2] == " " else ln.strip() for ln in lines]


def summarise(run: Path, equivalent: dict[str, str], tests: str, patterns: list[str] | None = None,
              sample: float | None = None, seed: int = 0) -> dict[str, dict]:
    """Per module of ``run``: counts, score and the surviving mutants (with diff and, if any, the reason).

    ``sample``: the run tested a random fraction of the mutants (``MUTMUT_SAMPLE``, mutmut_sample.py); the
    score then estimates the module's, with standard error ``sqrt(s (1 - s) / n)`` over the n considered.
    Only the mutants drawn at ``sample`` with ``seed`` count (:func:`mutmut_sample.in_sample`; a run may have
    tested more of them, e.g. at a larger fraction before it was narrowed), so the estimate stays unbiased."""
    rows = {}
    for module, verdicts in read_run(run, patterns).items():
        if sample:  # only the drawn mutants count: one drawn at a larger fraction, outside this one, is left out
            verdicts = {n: s if in_sample(n, sample, seed) else "not checked" for n, s in verdicts.items()}
        c = Counter(verdicts.values())
        survivors = sorted(n for n, s in verdicts.items() if s in ("survived", "no tests"))
        diffs = {n: diff_lines(run, n) for n in survivors}
        reasons = {n: equivalent.get(n) or rule_equivalent(diffs[n]) or tree_equivalent(run, n) for n in survivors}
        eq = [n for n in survivors if reasons[n]]
        killed = c["killed"] + c["timeout"]
        unchecked = c["not checked"] + c["check was interrupted by user"]
        considered = len(verdicts) - len(eq) - unchecked
        rows[module] = {
            "run": run.name, "tests": tests, "mutants": " ".join(patterns) if patterns else "all", "generated": len(verdicts), "killed": killed, "timeout": c["timeout"],
            "survived": c["survived"], "equivalent": len(eq), "no_tests": c["no tests"], "not_checked": unchecked,
            "score": round(killed / considered, 4) if considered else None,
            **({"sample": sample, "score_se": round(math.sqrt(killed * (considered - killed) / considered ** 3), 4)
                if considered else None} if sample else {}),
            "survivors": [{"name": n, "diff": diff_of(diffs[n]), "equivalent": reasons[n],
                           "no_tests": verdicts[n] == "no tests"} for n in survivors],
        }
    return rows


def to_markdown(report: dict) -> str:
    lines = ["# Mutation testing of the engine core", "",
             "Produced by `benchmarks/mutation.sh` (mutmut 3, one worker) and `benchmarks/mutation_report.py`.",
             "Score = killed / (generated - equivalent - not checked); timeouts count as killed.", ""]
    notes = HERE / "mutation_notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    for label, rows in report["runs"].items():
        lines += [f"## {label}", "", "| module | mutants | tests run | generated | killed | survived | equivalent "
                  "| no tests | not checked | score |", "|---|---|---|---|---|---|---|---|---|---|"]
        for module, r in sorted(rows.items()):
            score = f"{100 * r['score']:.1f}%" if r["score"] is not None else "-"
            if r.get("score_se") is not None:
                score += f" ± {100 * r['score_se']:.1f}"
            mutants = r.get("mutants", "all") + (f" ({100 * r['sample']:.0f}% sample)" if r.get("sample") else "")
            lines.append(f"| `{module}` | {mutants} | {r['tests']} | {r['generated']} | {r['killed']} | {r['survived']} | "
                         f"{r['equivalent']} | {r['no_tests']} | {r['not_checked']} | {score} |")
        lines.append("")
        for module, r in sorted(rows.items()):
            if r["survivors"]:
                lines += [f"### {label}: survivors in `{module}`", ""]
                for s in r["survivors"]:
                    why = (f"equivalent: {s['equivalent']}" if s["equivalent"]
                           else "**no test runs it**" if s.get("no_tests") else "**not killed**")
                    lines.append(f"- `{s['name']}` ({why}): `{s['diff']}`")
                lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("/tmp/filterprune-mutation"))
    ap.add_argument("--only", nargs="*", help="run folder names to read (default: all)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--mutants", nargs="*", help="mutant name globs to count (default: all in the run)")
    ap.add_argument("--sample", type=float, help="count only the mutants drawn at this fraction (MUTMUT_SAMPLE)")
    ap.add_argument("--seed", type=int, default=0, help="the draw's seed (MUTMUT_SEED)")
    args = ap.parse_args()
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    report = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"runs": {}}
    rows = report["runs"].setdefault(args.label, {})
    for run in sorted(p for p in args.runs.iterdir() if (p / "mutants").is_dir()):
        if args.only and run.name not in args.only:
            continue
        cfg = (run / "pyproject.toml").read_text()
        tests = cfg.split("pytest_add_cli_args_test_selection = [", 1)[1].split("]", 1)[0].replace('"', "").strip()
        rows.update(summarise(run, equivalent, tests, args.mutants, args.sample, args.seed))
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(report, indent=1) + "\n")
    OUT_MD.write_text(to_markdown(report) + "\n")
    print(OUT_MD.read_text())


if __name__ == "__main__":
    main()
