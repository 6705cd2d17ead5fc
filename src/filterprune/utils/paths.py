"""Where filterprune keeps files it fetched or derived: one cache root, never the working directory.

``$FILTERPRUNE_CACHE`` if set, else ``~/.cache/filterprune`` (the layout of timm's ``get_cache_dir``:
an environment variable first, then a per-user folder). Results never depend on the folder a command
or a test starts from.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache root (``$FILTERPRUNE_CACHE``, else ``~/.cache/filterprune``), joined with ``parts``.

    Nothing is created; callers make the folders they write.

    >>> cache_dir("weights").name
    'weights'
    """
    env = os.environ.get("FILTERPRUNE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "filterprune"
    return root.joinpath(*parts)
