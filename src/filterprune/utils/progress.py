"""One progress-bar wrapper over tqdm, with a single global switch (the CLI turns it on)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_enabled = False


def set_progress(enabled: bool) -> None:
    """Turn all progress bars on or off (``filterprune -q`` turns them off)."""
    global _enabled
    _enabled = enabled


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar (throughput and ETA) when progress is enabled."""
    if not _enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    with tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield from bar
