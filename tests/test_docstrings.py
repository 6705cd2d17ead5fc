"""Every public function, method and class of the package has a docstring (tools/missing_docstrings.py)."""

from __future__ import annotations

import importlib.util

from shared_paths import REPO_ROOT


def test_every_public_name_has_a_docstring():
    spec = importlib.util.spec_from_file_location("missing_docstrings", REPO_ROOT / "tools" / "missing_docstrings.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.missing() == []
