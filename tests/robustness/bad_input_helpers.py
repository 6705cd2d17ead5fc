"""Shared by tests/robustness/test_data.py and test_arguments.py: run the CLI in-process on a sandbox and
check the four things every bad-input case promises.

1. the exit status is 2;
2. stderr is exactly one line, ``filterprune <cmd>: error: ...``, holding the expected words;
3. stdout is empty (nothing was reported as done);
4. the sandbox (the user's files, the decode cache, the working directory) is byte-for-byte as before:
   no file changed, none added (no cache entry, no run folder, no temporary file), none removed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from filterprune.cli.main import main


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: relative path -> (kind, size, mode, sha256)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = ("dir", 0, p.stat().st_mode, "")
        for f in filenames:
            p = Path(dirpath, f)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            out[str(p.relative_to(root))] = ("file", st.st_size, st.st_mode, digest)
    return out


class Sandbox:
    """A working directory, a decode cache and a weights folder under ``root``; the CLI runs inside it."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root = root
        self.cache = root / "cache"
        monkeypatch.setenv("FILTERPRUNE_CACHE", str(self.cache))
        monkeypatch.setenv("FILTERPRUNE_DATA", str(root / "no-data"))
        monkeypatch.chdir(root)

    def cache_files(self) -> list[Path]:
        return sorted(p for p in self.cache.rglob("*") if p.is_file()) if self.cache.exists() else []

    def refuses(self, argv: list[str], capsys, *needles: str) -> str:
        """Run ``filterprune -q ARGV``; assert the four promises (module docstring); return the line."""
        capsys.readouterr()
        before = snapshot(self.root)
        try:
            rc = main(["-q", *argv])
        except SystemExit as e:  # the parser's own errors exit; they must be one line too
            rc = e.code
        captured = capsys.readouterr()
        after = snapshot(self.root)
        lines = captured.err.splitlines()
        assert rc == 2, (rc, captured.err)
        assert len(lines) == 1, captured.err
        line = lines[0]
        assert line.startswith(f"filterprune {argv[0]}: error: ") or (
            line.startswith("filterprune: error: ") and argv[0] not in ("train", "prune", "eval", "info", "demo")), line
        for needle in needles:
            assert needle in line, (needle, line)
        assert captured.out == "", captured.out
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        assert not (added or removed or changed), (added, removed, changed)
        return line

    def accepts(self, argv: list[str], capsys) -> str:
        """Run ``filterprune -q ARGV`` and assert exit 0; return stdout."""
        capsys.readouterr()
        rc = main(["-q", *argv])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        return captured.out
