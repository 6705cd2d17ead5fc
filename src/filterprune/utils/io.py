"""Safe files and run folders: atomic writes, readable modes, one owner per output folder.

Every command that writes a run folder goes through :func:`open_run_folder` before any work (before
data loading), and every file in it is written by :func:`atomic_write` / :func:`atomic_path`:

* **Atomic writes.** Each file is written to a temporary file in the same folder, flushed, then moved
  into place with ``os.replace``: a kill or a full disk leaves the old file or the new one, never a
  truncated one, and the temporary file is removed on failure.
* **Modes.** Files get ``0o666 & ~umask`` and folders ``0o777 & ~umask`` (0644 / 0755 under the usual
  umask 022), as ``open``/``mkdir`` would; ``tempfile.mkstemp``/``mkdtemp`` alone would give 0600 / 0700.
* **Ownership.** A run folder holds a marker, ``filterprune-run.json`` (``{"command": "train", ...}``),
  written when the folder is claimed. An ``--out`` that exists, is not empty and is not the same
  command's run is refused (one line, before any work). ``resume=True`` continues the command's own run;
  ``overwrite=True`` replaces a run's files, but only the names the command declares it writes
  (``owned``) in a folder that carries the marker; a file of that name the user put in a folder without
  the marker is refused, and every other file is left alone.
* **Lock.** ``filterprune.lock`` is held with ``fcntl.flock`` for the run's lifetime: a second process on
  the same folder fails at once with one line and leaves nothing behind; the kernel drops the lock when
  the owner dies (even by SIGKILL), so a killed run can be resumed without clean-up.

Why not a library: ``filelock`` and ``atomicwrites`` cover the first and last points but not the
ownership rules, which are the point here; both are ~20 lines over the standard library.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with open_run_folder(root / "run", "train", owned=("summary.json",)) as run:
...     _ = atomic_write(run.path / "summary.json", "{}")
>>> sorted(p.name for p in (root / "run").iterdir())
['filterprune-run.json', 'summary.json']
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FilterpruneError
from ..types import PathLike

__all__ = ["MARKER", "LOCK", "RunFolder", "RunFolderError", "atomic_path", "atomic_write", "atomic_write_json",
           "check_run_folder", "file_mode", "tensors_sha256", "make_dirs", "open_run_folder", "read_marker"]

MARKER = "filterprune-run.json"
LOCK = "filterprune.lock"


class RunFolderError(FilterpruneError):
    """An output folder that cannot or must not be written (exists, in use, not a folder, not writable)."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets, ``0o666 & ~umask`` (0644 under umask 022)."""
    return 0o666 & ~_umask()


def make_dirs(path: PathLike) -> Path:
    """``mkdir -p`` with the default folder mode (0o777 & ~umask)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    For writers that want a file name (``safetensors.save_file``, ``onnx.save``). The temporary file
    is named ``.<name>.<random>.tmp`` in the same folder (a rename across file systems is not atomic)
    and is removed if the block raises.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())  # after writing: some writers (safetensors) replace the file with a 0600 one
        with open(tmp, "rb+") as f:  # data on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_path`.

    Raises:
        OSError: the folder is not writable or the disk is full (``path`` is then unchanged).
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``json.dumps(obj)`` written atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """sha256 over a state dict's tensors: name, dtype, shape and bytes, in name order.

    Compare weights with it, not with a file's sha256: safetensors writes its metadata keys in a
    per-process hash order, so two files of identical tensors and metadata can differ byte-wise.
    """
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_marker(folder: PathLike) -> dict[str, Any] | None:
    """The run marker of ``folder`` (``None`` if there is none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class RunFolder:
    """A claimed run folder: ``path``, the command that owns it, whether it is resumed, whether it was
    missing or empty when claimed (``fresh``: everything in it is then this run's), and its lock."""

    path: Path
    command: str
    resumed: bool
    fresh: bool = False
    marker: dict[str, Any] = field(default_factory=dict)
    _lock_fd: int | None = None

    def update_marker(self, **fields: Any) -> None:
        """Merge ``fields`` into the marker file (atomically)."""
        self.marker.update(fields)
        atomic_write_json(self.path / MARKER, self.marker)

    def release(self) -> None:
        """Drop the lock and remove the lock file (the folder's other files stay)."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path / LOCK)
        os.close(self._lock_fd)
        self._lock_fd = None

    @contextlib.contextmanager
    def discarded_on_refusal(self) -> Iterator[None]:
        """Remove the folder again if the body raises while the folder is ``fresh`` and holds nothing but
        the run's marker and lock: a refusal of bad input found after the folder was claimed (unreadable
        weights, an unknown layer) leaves nothing behind, and the same command can simply be run again.
        A folder holding anything else is kept as it is."""
        try:
            yield
        except Exception:
            if self.fresh and {p.name for p in self.path.iterdir()} <= {MARKER, LOCK}:
                self.release()
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _one_line(e: OSError) -> str:
    return e.strerror or str(e).splitlines()[0]


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (created if missing), or ``None`` if it is held."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:  # else the previous owner removed the file between our open and flock: take the new one
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _is_held(path: Path) -> bool:
    """Whether another process holds the lock file ``path`` (never creates it)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _owned(name: str, owned: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in owned)


def _remove_owned(folder: Path, owned: Sequence[str]) -> None:
    """Remove the previous run's files (names matching ``owned``, plus ``*.tmp`` leftovers of ours)."""
    for entry in sorted(folder.iterdir()):
        if entry.name in (MARKER, LOCK) or not (_owned(entry.name, owned) or
                                                (entry.name.startswith(".") and entry.name.endswith(".tmp"))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_target(path: Path, command: str, resume: bool, overwrite: bool, owned: Sequence[str],
                  inputs: Iterable[Path], locked: bool = False, can_resume: bool = True) -> dict[str, Any] | None:
    """Refuse an unusable ``--out`` (before anything is written); returns the existing marker if any."""
    if path.is_symlink():
        raise RunFolderError(f"--out {path} is a symbolic link; give the real folder")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--out {path} is a file, not a folder; choose another --out")
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out {path}: {parent} is not writable; choose another --out")
    if not path.exists():
        if resume:
            raise RunFolderError(f"--out {path} does not exist: nothing to resume")
        return None
    if not locked and _is_held(path / LOCK):
        raise RunFolderError(f"--out {path} is in use by another filterprune process{_lock_holder(path / LOCK)}; "
                             "wait for it or choose another --out")
    entries = [e for e in path.iterdir() if e.name != LOCK]
    marker = read_marker(path)
    if resume:
        if marker is None or marker.get("command") != command:
            what = f"a filterprune {marker.get('command')} run" if marker else "no filterprune run"
            raise RunFolderError(f"--out {path} holds {what}; --resume continues a {command} run")
        return marker
    if not entries:
        return marker
    if not overwrite:
        if marker is not None and marker.get("command") == command:
            how = "pass --resume to continue it, --overwrite to replace it" if can_resume else \
                "pass --overwrite to replace it"
            raise RunFolderError(f"--out {path} already holds a {command} run; {how}, or choose another --out")
        raise RunFolderError(f"--out {path} already exists and is not empty; choose another --out "
                             "(or --overwrite to replace a filterprune run there)")
    mine = marker is not None and marker.get("command") == command
    for e in entries:
        if _owned(e.name, owned) and not mine:
            raise RunFolderError(f"--overwrite: {e} was not written by a filterprune {command} run; "
                                 "move it away or choose another --out")
    for p in inputs:
        with contextlib.suppress(OSError):
            if p.resolve().is_relative_to(path.resolve()) and _owned(p.resolve().relative_to(path.resolve()).parts[0],
                                                                     owned):
                raise RunFolderError(f"--overwrite would replace the input {p}; copy it elsewhere first")
    return marker


def check_run_folder(path: PathLike, command: str, *, resume: bool = False, overwrite: bool = False,
                     owned: Sequence[str] = ()) -> None:
    """The checks of :func:`open_run_folder` without claiming anything (nothing is created or written):
    for callers that must read the folder (its saved config on ``--resume``) before claiming it.

    Raises:
        RunFolderError: as :func:`open_run_folder`.
    """
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one")
    _check_target(Path(path), command, resume, overwrite, owned, [])


def open_run_folder(
    path: PathLike,
    command: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    owned: Sequence[str] = (),
    inputs: Iterable[PathLike] = (),
    can_resume: bool = True,
) -> RunFolder:
    """Claim ``path`` as the run folder of ``command`` (module docstring); use as a context manager.

    Args:
        path: the ``--out`` folder; created (with its parents) if missing.
        command: ``"train"``, ``"prune"``, ``"demo"``... recorded in the marker.
        resume: continue this command's run already in ``path``.
        overwrite: replace a previous run of ``command`` in ``path``: its files named by ``owned`` are
            removed, everything else stays.
        owned: file/folder name patterns (``fnmatch``) a run of ``command`` writes at the top level.
        inputs: files the command reads; ``overwrite`` refuses to remove one of them.
        can_resume: whether the command has ``--resume`` (only changes the refusal's wording).

    Returns:
        A :class:`RunFolder` holding the folder's lock.

    Raises:
        RunFolderError: one line: ``path`` is a file or a symlink, not writable, in use by another
            process, not empty without ``resume``/``overwrite``, not this command's run on ``resume``,
            or ``overwrite`` would replace a file filterprune did not write.
    """
    path = Path(path)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one")
    _check_target(path, command, resume, overwrite, owned, [Path(p) for p in inputs], can_resume=can_resume)
    created = not path.exists()
    fresh = created or not any(path.iterdir())
    try:
        make_dirs(path)
    except OSError as e:
        raise RunFolderError(f"--out {path}: cannot create it ({_one_line(e)})") from None
    lock_existed = (path / LOCK).exists()
    try:
        fd = _try_lock(path / LOCK)
    except OSError as e:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise RunFolderError(f"--out {path}: cannot write there ({_one_line(e)})") from None
    if fd is None:  # another process won the race; the folder is its, leave it as it is
        raise RunFolderError(f"--out {path} is in use by another filterprune process{_lock_holder(path / LOCK)}; "
                             "wait for it or choose another --out")
    run = RunFolder(path, command, resume, fresh and not resume, _lock_fd=fd)
    try:
        marker = _check_target(path, command, resume, overwrite, owned, [Path(p) for p in inputs],
                               locked=True, can_resume=can_resume)  # again under the lock: another process may have started meanwhile
        if overwrite and marker is not None:
            _remove_owned(path, owned)
        if resume and marker is not None:
            run.marker = marker
        else:
            run.marker = {"command": command, "format": "filterprune.run/1", "created": time.time()}
        run.update_marker(pid=os.getpid())
    except BaseException as e:
        run.release()
        if not lock_existed and created:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EPERM):
            raise RunFolderError(f"--out {path}: cannot write there ({_one_line(e)})") from None
        raise
    return run
