"""A test hook to stop a run at an exact place: ``FILTERPRUNE_TEST_KILL_AT=<point>[:<SIGNAL>]``.

When the process reaches ``<point>`` (a stage name of :mod:`filterprune.workflows.runner`, or
``<fit folder name>/epoch_NNN`` right after that epoch's checkpoint is written) it sends itself
``SIGNAL`` (``KILL`` by default; ``INT`` behaves like Ctrl-C, ``TERM`` like ``kill``). Unset, it does
nothing. The kill-and-resume tests and ``benchmarks/kill_resume.py`` use it; a real kill anywhere
else is handled the same way, this only makes the place reproducible.
"""

from __future__ import annotations

import os
import signal

ENV = "FILTERPRUNE_TEST_KILL_AT"


def kill_point(point: str) -> None:
    """Send the configured signal to this process if ``point`` is the one named in the environment."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, sig = spec.rpartition(":") if ":" in spec else (spec, "", "KILL")
    if where == point:
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))
