"""One progress-bar wrapper over tqdm (throughput and ETA), with one switch for the CLI and the API.

Every phase that can take more than a couple of seconds iterates through :func:`progress`: data
decoding, evaluation, CAR scoring, PLS feature collection, training epochs. A bar appears only once
its phase has run for :data:`DELAY_S` seconds (tqdm's ``delay``), so short phases print nothing, and
it is removed when the phase ends (``leave=False``): the log keeps its lines, the bars do not pile up.
Bars go to stderr; results go to stdout.

Whether bars are shown, first match wins:

1. :func:`set_progress` ``(True/False)`` (``filterprune --quiet`` sets ``False``; the API's opt-out);
2. the environment variable ``FILTERPRUNE_PROGRESS`` (``0``/``off``/``false`` hides, ``1``/``on``/
   ``true`` shows, also into a pipe or a file);
3. otherwise ("auto"): shown when stderr is a terminal or the code runs in a Jupyter kernel, hidden
   when stderr is piped or redirected, so a log file never collects carriage-return garbage.

Why not tqdm's own ``disable=None``: it also hides bars in Jupyter (no TTY there) and cannot be forced
on or off from the environment; this wrapper keeps one rule for the whole package (accelerate's
``utils/tqdm.py`` does the same).

>>> previous = set_progress(False)
>>> list(progress(range(3), desc="quiet"))
[0, 1, 2]
>>> _ = set_progress(previous)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["DELAY_S", "ENV_VAR", "TqdmLoggingHandler", "progress", "progress_enabled", "set_progress"]

#: Seconds a phase runs before its bar appears (shorter phases show nothing).
DELAY_S = 2.0
#: Environment variable that forces bars on (``1``) or off (``0``) when :func:`set_progress` was not called.
ENV_VAR = "FILTERPRUNE_PROGRESS"
_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")
_enabled: bool | None = None


def set_progress(enabled: bool | None) -> bool | None:
    """Show (``True``) or hide (``False``) every progress bar; ``None`` goes back to the automatic
    choice (module docstring). ``filterprune --quiet`` calls ``set_progress(False)``.

    Returns:
        the previous setting, to put back afterwards.

    Raises:
        TypeError: ``enabled`` is not a bool or ``None``.
    """
    global _enabled
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_progress takes True, False or None, got {enabled!r}")
    previous, _enabled = _enabled, enabled
    return previous


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def progress_enabled() -> bool:
    """Whether a bar started now would be shown (the switch, then ``FILTERPRUNE_PROGRESS``, then auto)."""
    if _enabled is not None:
        return _enabled
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    stream = sys.stderr
    try:
        tty = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        tty = False
    return tty or _in_notebook()


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Yield from ``iterable``, with a tqdm bar (count, rate, ETA when ``total`` is known) on stderr if
    :func:`progress_enabled`; the bar shows only after :data:`DELAY_S` seconds.

    Args:
        iterable: what to iterate.
        total: number of items (``len(iterable)`` is tried when ``None``); without it tqdm shows no ETA.
        desc: the phase, e.g. ``"evaluate val"``.
        unit: what one item is (``"batch"``, ``"image"``, ``"filter"``).
    """
    if not progress_enabled():
        yield from iterable
        return
    from tqdm.auto import tqdm

    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, delay=DELAY_S,
              file=sys.stderr) as bar:
        yield from bar


class TqdmLoggingHandler(logging.StreamHandler):
    """A stderr log handler that writes through ``tqdm.write``, so a log line printed while a bar is on
    screen does not tear it (the CLI installs it)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` above any active bar."""
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
