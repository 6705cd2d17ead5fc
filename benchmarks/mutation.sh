#!/usr/bin/env bash
# Mutation testing of the engine core (selection.py, graph/, criteria/, methods/) with mutmut 3.
# Slow (hours for the whole set on 2 cores); not part of the default suite or .ci/run.
#
#   benchmarks/mutation.sh                                   # every mutant of the configured modules
#   benchmarks/mutation.sh 'filterprune.selection.*'         # one module (mutmut name globs)
#   python benchmarks/mutation_report.py                     # -> benchmarks/results/mutation_report.{json,md}
#
# Configuration: [tool.mutmut] in pyproject.toml (modules mutated, tests run). Results are cached in
# mutants/ (git-ignored), so an interrupted run continues where it stopped; `mutmut results` lists
# survivors, `mutmut show NAME` prints one. One worker by default (MUTMUT_CHILDREN to change).
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONPATH          # the tests must import the mutated copy in mutants/src
export OMP_NUM_THREADS=1
exec mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
