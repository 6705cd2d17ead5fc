"""The project's shared data folder, found from this file's location (never the working directory).

The repository is checked out with ``shared/`` beside it (``../shared`` from the repository root);
tests that need the real CIFAR-10 copy or the published weights pass these paths explicitly and skip
when they are absent.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PRETRAINED_DIR = SHARED_DATA / "pretrained"
CIFAR10_DIR = SHARED_DATA / "cifar10"
