"""The command line a benchmark records in its results file, rebuilt from its parsed arguments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def command_line(prefix: str, flags: Mapping[str, object], skip: Iterable[str] = ()) -> str:
    """``prefix`` followed by ``--flag value`` for every argument not in ``skip`` and set (not ``None``,
    ``False`` or ``""``): ``True`` gives the bare flag, a list its items separated by spaces."""
    skip = set(skip)
    parts = [prefix]
    for key, value in flags.items():
        if key in skip or value is None or value is False or value == "":
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(parts)
