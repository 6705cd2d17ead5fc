"""Verified, streaming reads of tar archives and gzip files: a truncated or damaged file is an error.

Python's ``tarfile`` in stream mode ends quietly where it finds no further header: an archive cut at a
member boundary (or inside the two zero blocks that end it) reads as a shorter archive, and its gzip
layer never checks the CRC-32 and length in the gzip trailer. Here the compressed layer is
``gzip``/``bz2``/``lzma``'s own reader, which checks the trailer (``EOFError`` when the stream ends
early, ``BadGzipFile`` on a CRC or length mismatch), and the tar layer is checked for its end-of-archive
marker (POSIX.1-1988 ustar: two 512-byte zero blocks after the last member) before the stream is read
to its end. Written here because neither module offers this check; both are used for everything else.

Every read is bounded: no member larger than ``max_member_bytes`` is read into memory, and at most
``MAX_TRAILING_BYTES`` are read after the end-of-archive marker (so a gzip bomb appended after the
archive is refused, not inflated).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK  # two zero blocks
MAX_TRAILING_BYTES = 1 << 20  # tar pads to its record size (10 KiB by default); 1 MiB is plenty
DEFAULT_MAX_MEMBER_BYTES = 256 << 20  # one image file; the largest CIFAR-10 batch is 31 MB
_WINDOW = 1 << 18  # bytes of the decompressed stream kept for the end-of-archive check (> tarfile's buffer)

# Exceptions a damaged archive raises somewhere in the stack (zlib.error and LZMAError are not OSErrors).
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


def open_decompressed(f: BinaryIO) -> BinaryIO:
    """``f`` itself, or a reader of its gzip / bzip2 / xz content (detected by magic bytes).

    The readers raise ``EOFError`` on a stream that ends early and an ``OSError`` on a CRC mismatch.
    """
    magic = f.read(6)
    f.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f, "rb")  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f, "rb")  # type: ignore[return-value]
    return f


class _Tap(io.RawIOBase):
    """A pass-through reader that counts the bytes it hands out and keeps the most recent ones."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.pos = raw, 0
        self.window, self.window_start = bytearray(), 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.pos += len(data)
        self.window += data
        if len(self.window) > _WINDOW:
            cut = len(self.window) - _WINDOW
            del self.window[:cut]
            self.window_start += cut
        return data

    def span(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the stream (reading on if needed; shorter at its end)."""
        while self.pos < start + length and self.read(1 << 16):
            pass
        if start < self.window_start:
            raise DataError("internal: end-of-archive block left the read window")
        return bytes(self.window[start - self.window_start:start - self.window_start + length])


def _fail(path: Path, problem: str, what: str = "fetch or copy it again") -> DataError:
    return DataError(f"{path}: {problem}; {what}")


def reason(e: BaseException) -> str:
    """What a read error means, as a phrase: ``truncated: ...``, ``corrupt: ...`` or ``not readable ...``."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, EOFError):
        return "truncated: the compressed stream ends before its end marker"
    if isinstance(e, gzip.BadGzipFile) or "CRC" in text or "length" in text.lower():
        return f"corrupt compressed data ({text})"
    return f"not readable ({type(e).__name__}: {text})" if text else f"not readable ({type(e).__name__})"


def iter_tar(path: Path, wanted, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
             ) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Stream the members of the tar archive at ``path`` (plain, .gz, .bz2 or .xz), verifying all of it.

    Args:
        path: the archive.
        wanted: ``wanted(member) -> bool``; the content of wanted regular files is read and yielded,
            every other member is yielded with ``None`` and skipped without being held in memory.
        max_member_bytes: refuse a wanted member larger than this (a bomb or not an image).

    Yields:
        ``(member, content or None)`` in archive order. The archive is verified only once the iterator
        is exhausted: consume it fully, and keep nothing from it if it raises.

    Raises:
        DataError: the file cannot be read, is truncated anywhere (inside a member, at a member
            boundary, inside the end-of-archive blocks or the compressed trailer), fails its CRC, or
            has a wanted member over the size limit.
    """
    try:
        with open(path, "rb") as f:
            tap = _Tap(open_decompressed(f))
            with tarfile.open(fileobj=tap, mode="r|") as tf:  # type: ignore[call-overload]
                for m in tf:
                    if m.isfile() and wanted(m):
                        if m.size > max_member_bytes:
                            raise _fail(path, f"member {m.name} is {m.size:,} bytes, over the limit of "
                                        f"{max_member_bytes:,} for one file", "remove it from the archive")
                        fobj = tf.extractfile(m)
                        data = fobj.read() if fobj is not None else b""
                        if len(data) != m.size:
                            raise _fail(path, f"member {m.name} is truncated")
                        yield m, data
                    else:
                        yield m, None
                end = tf.offset  # where the end-of-archive marker must start
            marker = tap.span(end, END_OF_ARCHIVE)
            if len(marker) < END_OF_ARCHIVE or marker.count(0) != END_OF_ARCHIVE:
                problem = ("ends at a member boundary, without the end-of-archive blocks (truncated)"
                           if not marker else f"is truncated or damaged at byte {end:,} of its tar stream")
                raise _fail(path, problem)
            # Read on to the end of the compressed stream: that is where gzip/bz2/xz check CRC and length.
            trailing = tap.pos - end - END_OF_ARCHIVE  # what tarfile read ahead past the marker
            while chunk := tap.raw.read(1 << 16):
                trailing += len(chunk)
                if trailing > MAX_TRAILING_BYTES:
                    raise _fail(path, f"holds more than {MAX_TRAILING_BYTES:,} bytes after the end of the "
                                "tar archive", "repack it")
    except DataError:
        raise
    except READ_ERRORS as e:
        raise _fail(path, reason(e).replace("not readable", "not a readable tar archive", 1)) from None


def read_gzip_capped(path: Path, f: BinaryIO, n: int, what: str) -> bytes:
    """Exactly ``n`` bytes from the (possibly decompressing) reader ``f``, refusing a short read."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 20))
        if not chunk:
            raise _fail(path, f"{what}: holds {len(buf):,} of {n:,} bytes (truncated)")
        buf += chunk
    return bytes(buf)
