"""What a run ran on: versions, device, git commit. Written to each run folder as ``env.json``."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> str:
    """The installed filterprune version (the one in pyproject.toml), or ``"unknown"``."""
    try:
        return version("filterprune")
    except PackageNotFoundError:
        return "unknown"


def environment() -> dict[str, Any]:
    """What a run folder's ``env.json`` records: filterprune, torch and Python versions, platform, git
    commit and dirty flag (``None`` outside a checkout), CPU threads, CUDA version and GPU name.
    """
    sha = _git("rev-parse", "HEAD")
    return {
        "filterprune": code_version(),
        "git_sha": sha,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if sha else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
