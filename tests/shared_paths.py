"""The project's shared data folder, found from this file's location (never the working directory).

The repository is checked out with ``shared/`` beside it (``../shared`` from the repository root);
tests that need the real CIFAR-10 copy or the published weights pass these paths explicitly and skip
when they are absent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PRETRAINED_DIR = SHARED_DATA / "pretrained"
CIFAR10_DIR = SHARED_DATA / "cifar10"


def load_benchmark_script(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module, with its folder importable (as when run)."""
    folder = str(REPO_ROOT / "benchmarks")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", f"{folder}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module
