"""mutmut 3 on a fixed random sample of the mutants (``MUTMUT_SAMPLE`` in benchmarks/mutation.sh).

    MUTMUT_SAMPLE=0.25 MUTMUT_SEED=0 python benchmarks/mutmut_sample.py run --max-children 1

Every mutant is still generated; only those in the sample are tested, the others stay "not checked".
A mutant is in the sample when the SHA-256 of ``"{seed}:{name}"``, read as a fraction of 2**256, is
below ``MUTMUT_SAMPLE``: each mutant is drawn independently with that probability (random mutant
sampling: Wong & Mathur 1995; an unbiased estimate of the mutation score, its standard error
sqrt(s (1 - s) / n) over n sampled non-equivalent mutants), and the draw depends only on the seed and
the mutant's name, so a later run with the same seed re-tests the same mutants. mutmut has no sampling
option; this wraps its one function that lists the mutants to run (``collect_source_file_mutation_data``)
and leaves the rest of mutmut as it is.
"""

from __future__ import annotations

import hashlib
import os
import sys


def in_sample(name: str, fraction: float, seed: int) -> bool:
    """Whether mutant ``name`` is drawn: ``sha256(f"{seed}:{name}") / 2**256 < fraction``."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 256


def main() -> None:
    fraction = float(os.environ.get("MUTMUT_SAMPLE", "1"))
    seed = int(os.environ.get("MUTMUT_SEED", "0"))
    if not 0 < fraction <= 1:
        sys.exit(f"MUTMUT_SAMPLE must be a fraction in (0, 1], got {fraction}")
    import mutmut.__main__ as mm

    collect = mm.collect_source_file_mutation_data

    def sampled(*, mutant_names):
        mutants, by_path = collect(mutant_names=mutant_names)
        return [m for m in mutants if in_sample(m[1], fraction, seed)], by_path

    mm.collect_source_file_mutation_data = sampled
    sys.argv[0] = "mutmut"
    mm.cli()


if __name__ == "__main__":
    main()
