#!/usr/bin/env bash
# Mutation testing of the engine core (selection.py, graph/, criteria/, methods/) with mutmut 3.
# Slow (hours for the whole set on 2 cores); not part of the default suite or .ci/run.
#
#   benchmarks/mutation.sh                                 # every configured module ([tool.mutmut])
#   benchmarks/mutation.sh src/filterprune/selection.py    # one module (a path glob under src/)
#   benchmarks/mutation.sh src/filterprune/selection.py 'filterprune.selection.x__candidates__mutmut_*'
#                                                          # ... only some mutants (mutmut name globs)
#   MUTMUT_TESTS="tests/test_selection.py tests/test_selection_oracles.py" \
#       benchmarks/mutation.sh src/filterprune/selection.py   # ... against a focused set of tests
#   MUTMUT_PYTEST_ARGS="--deselect=tests/test_selection.py::test_resnet56_selection_is_fast" ...
#                                                          # ... extra pytest arguments (whitespace-split)
#   MUTMUT_WITHOUT="tests/graph/test_surgery_oracles.py" ...
#                                                          # ... "before" a test file: it is emptied in the
#                                                          # snapshot (the test selection stays the same, so a
#                                                          # later run with it re-tests only the survivors named)
#   MUTMUT_SAMPLE=0.25 MUTMUT_SEED=0 benchmarks/mutation.sh src/filterprune/graph/*.py
#                                                          # ... a fixed random quarter of the mutants
#                                                          # (benchmarks/mutmut_sample.py), the rest "not checked"
#   MUTMUT_REV=c62bf42 benchmarks/mutation.sh ...           # ... the tree of a commit, not the working tree
#                                                          # (a "before" run while tests are being written)
#   python benchmarks/mutation_report.py                   # -> benchmarks/results/mutation_report.{json,md}
#
# It runs in a snapshot of the working tree (tracked and untracked, not ignored files) under
# $MUTMUT_DIR (default /tmp/filterprune-mutation/<module>), so editing the tree meanwhile is safe and
# the repository stays clean. The snapshot's mutants/ folder caches results: an interrupted run
# continues where it stopped, and `cd $MUTMUT_DIR && mutmut results` lists the survivors,
# `mutmut show NAME` prints one. One worker by default (MUTMUT_CHILDREN to change).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
only=${1:-}
shift || true
name=$(printf '%s' "${only:-all}" | sed 's#^src/filterprune/##; s#[/*.]#_#g')
work=${MUTMUT_DIR:-/tmp/filterprune-mutation/$name}
mkdir -p "$work"
old_sums=$( (cd "$work" && find src -name '*.py' -exec md5sum {} + 2>/dev/null || true) | sort)
if [ -n "${MUTMUT_REV:-}" ]; then  # a committed revision, e.g. the suite as it was before new tests
    rm -rf "$work/src" "$work/tests" "$work/mutants/tests"
    (cd "$repo" && git archive "$MUTMUT_REV") | tar -xf - -C "$work"
else
    (cd "$repo" && git ls-files -co --exclude-standard) | (cd "$repo" && tar -cf - -T -) | tar -xf - -C "$work"
fi
# mutmut regenerates a module's mutants only when the source is newer than them: a file copied with an
# older mtime (an edit made before the last run, or an older revision) is touched when its content changed
new_sums=$( (cd "$work" && find src -name '*.py' -exec md5sum {} +) | sort)
comm -13 <(echo "$old_sums") <(echo "$new_sums") | awk '{print $2}' | (cd "$work" && xargs -r touch)
for f in ${MUTMUT_WITHOUT:-}; do
    printf '"""Emptied by benchmarks/mutation.sh (MUTMUT_WITHOUT): the run measures the suite before it."""\n' > "$work/$f"
done
python - "$work/pyproject.toml" "$only" "${MUTMUT_TESTS:-}" "${MUTMUT_PYTEST_ARGS:-}" <<'PY'
import re, sys
path, only, tests, extra = sys.argv[1:]
text = open(path).read()
def replace(key, values):
    global text
    items = ", ".join(f'"{v}"' for v in values)
    text, n = re.subn(rf"^{key} = \[.*?\]$", f"{key} = [{items}]", text, count=1, flags=re.M | re.S)
    assert n == 1, key
if only:
    replace("only_mutate", [only])
if tests:
    replace("pytest_add_cli_args_test_selection", tests.split())
if extra:
    replace("pytest_add_cli_args", ["-p", "no:cacheprovider", *extra.split()])
open(path, "w").write(text)
PY
echo "mutation testing ${only:-the configured modules} in $work" >&2
cd "$work"
unset PYTHONPATH          # the tests must import the mutated copy in mutants/src
export OMP_NUM_THREADS=1
if [ -n "${MUTMUT_SAMPLE:-}" ]; then
    exec python "$repo/benchmarks/mutmut_sample.py" run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
fi
exec mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
