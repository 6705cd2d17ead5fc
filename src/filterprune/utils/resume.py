"""Resuming a run with the flags it was started with: what may change, and the one line when not.

A resumed run must end where an uninterrupted run of the *same* config would, so a resume with a
config that differs from the one saved in the run folder (``config.yaml``) is refused, naming the first
flag that differs, unless the difference only extends the run: a key listed in ``extends`` with the rule
``"increase"`` (more epochs) or ``"any"`` (how many checkpoints are kept, forcing a refused C-SGD trim).
``criterion_options``/``options`` strings are compared option by option (``prune.criterion_options.force``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..errors import FilterpruneError
from ..types import PathLike

C = TypeVar("C")

__all__ = ["ResumeError", "check_resume", "config_diff", "dump_yaml_text", "flag_name", "saved_config"]

_OPTION_STRINGS = ("prune.criterion_options", "csgd.options")
#: nested configs whose fields are flags without a prefix (``--epochs``, ``--criterion``), as cli/_args.py
_FLAT = ("train", "prune")


class ResumeError(FilterpruneError):
    """``--resume`` with flags that differ from the saved run, or a folder that cannot be resumed."""


def dump_yaml_text(cfg: Any) -> str:
    """The YAML text of a config dataclass (what ``config.yaml`` holds)."""
    from ..config import to_dict

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def saved_config(cls: type[C], folder: PathLike) -> C:
    """The config saved in a run folder's ``config.yaml``.

    Raises:
        ResumeError: the file is missing (the run was killed before it started) or invalid.
    """
    from ..config import load_yaml

    path = Path(folder) / "config.yaml"
    if not Path(folder).is_dir():
        raise ResumeError(f"--out {folder} does not exist: nothing to resume")
    if not path.is_file():
        raise ResumeError(f"{path} is missing: the run never started; run it again with --overwrite")
    try:
        return load_yaml(cls, path)
    except ValueError as e:
        raise ResumeError(f"{path}: {e}") from None


def flag_name(key: str) -> str:
    """The CLI flag of a dotted config key: ``train.epochs`` -> ``--epochs``,
    ``finetune.epochs`` -> ``--finetune-epochs``, ``prune.criterion_options.force`` ->
    ``--criterion-options force``."""
    for opt in _OPTION_STRINGS:
        if key.startswith(opt + "."):
            return f"{flag_name(opt)} {key[len(opt) + 1:]}"
    parts = key.split(".")
    if len(parts) > 1 and parts[0] in _FLAT:
        parts = parts[1:]
    return "--" + "-".join(p.replace("_", "-") for p in parts)


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    from ..config import parse_options

    out: dict[str, Any] = {}
    for k, v in data.items():
        key = prefix + k
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        elif key in _OPTION_STRINGS:
            try:
                opts = parse_options(v or "")
            except ValueError:
                opts = {"": v}
            out.update({f"{key}.{o}": x for o, x in opts.items()})
        else:
            out[key] = v
    return out


def config_diff(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs (``out`` excluded)."""
    from ..config import to_dict

    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k != "out" and a.get(k) != b.get(k)}


def check_resume(saved: Any, new: Any, extends: Mapping[str, str] | None = None) -> dict[str, tuple[Any, Any]]:
    """Refuse ``new`` unless it equals ``saved`` up to the allowed extensions; return those extensions.

    Args:
        saved: the config the run was started with.
        new: the config of the resumed invocation (saved config plus the flags typed now).
        extends: ``{dotted key: "increase" | "any"}``.

    Raises:
        ResumeError: one line naming the first flag that differs and both values.
    """
    allowed = dict(extends or {})
    changes = config_diff(saved, new)
    for key, (was, now) in changes.items():
        rule = allowed.get(key)
        ok = rule == "any" or (rule == "increase" and isinstance(was, (int, float)) and isinstance(now, (int, float))
                               and now >= was)
        if not ok:
            hint = " (it may only grow)" if rule == "increase" else ""
            raise ResumeError(f"--resume: {flag_name(key)} is {now!r} but the run was started with {was!r}{hint}; "
                              f"drop the flag to continue the run, or start a new run in another --out")
    return changes
