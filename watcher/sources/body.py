"""A large response body spooled to disk as it arrives, and read back a piece at a time.

The partner-wide Mastercard listing is 37-44 MiB: held as `bytes` while it is parsed, it was a sixth of
the daemon's peak memory. A caller that asks for it (`Spool`) gets a body over the threshold written to
an unlinked temporary file (`tempfile.TemporaryFile`: nothing is left behind, even after a crash) in a
disk-backed folder, the state database's: not /tmp, which may be tmpfs, where the body would still be
memory. The parsers read a `SpooledBody` as they read `bytes`: its length, slices, single bytes and
`rfind`, through a window of the file that moves forward as they go.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, overload

# A body larger than this is spooled; the per-account answers (a few hundred bytes) never are.
SPOOL_THRESHOLD_BYTES = 1024 * 1024
# How much of the file a read brings in at once: slices asked for inside it are served from memory.
_WINDOW_BYTES = 1024 * 1024


class SpoolError(Exception):
    """The body could not be written to the spool (disk full, no permission); the message says where."""


@dataclass(frozen=True, slots=True)
class Spool:
    """Where and from what size a caller's response bodies go to disk."""

    directory: Path
    threshold: int = SPOOL_THRESHOLD_BYTES

    def open(self) -> SpoolWriter:
        """A new, empty spool file; SpoolError when it cannot be made."""
        try:
            return SpoolWriter(tempfile.TemporaryFile(dir=self.directory), self.directory)
        except OSError as exc:
            raise _spool_error(self.directory, exc) from None


def _spool_error(directory: Path, exc: OSError) -> SpoolError:
    return SpoolError(f"could not spool the response body to {directory}: {exc.strerror or exc}")


class SpoolWriter:
    """A spool file being written. Its owner calls `finish` (the file becomes a SpooledBody) or `close`."""

    __slots__ = ("_directory", "_file", "_size")

    def __init__(self, file: IO[bytes], directory: Path) -> None:
        self._file: IO[bytes] | None = file
        self._directory = directory
        self._size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`; SpoolError when it cannot be written.

        A blocking write on the event loop, on purpose: 64 KiB into the page cache takes tens of
        microseconds, less than handing it to a thread would.
        """
        assert self._file is not None, "written after finish or close"
        try:
            self._file.write(data)
        except OSError as exc:
            raise _spool_error(self._directory, exc) from None
        self._size += len(data)

    def finish(self) -> SpooledBody:
        """The body written so far, to be read back; the writer is done with the file."""
        file, self._file = self._file, None
        assert file is not None, "finished twice or after close"
        try:
            file.flush()  # reads go to the file descriptor, past the buffer
        except OSError as exc:
            file.close()
            raise _spool_error(self._directory, exc) from None
        return SpooledBody(file, self._size)

    def close(self) -> None:
        """Drop the file (the kernel frees it: it never had a name); nothing if finished already."""
        file, self._file = self._file, None
        if file is not None:
            file.close()


class SpooledBody:
    """A response body in a spool file, read like `bytes`: `len`, slices, single bytes and `rfind`.

    Reads go through one window of the file (a megabyte, or the slice asked for if larger), so that a
    parser walking the body forward reads each byte from the file about once. The owner closes it.
    """

    __slots__ = ("_fd", "_file", "_size", "_window", "_window_at")

    def __init__(self, file: IO[bytes], size: int) -> None:
        self._file = file
        self._fd = file.fileno()
        self._size = size
        self._window = b""
        self._window_at = 0

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Give the file back (it is deleted then); reads after this fail."""
        self._window = b""
        self._file.close()

    def __enter__(self) -> SpooledBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the body (stop within the body), from the window when it has them."""
        at = self._window_at
        if at <= start and stop <= at + len(self._window):
            return self._window[start - at : stop - at]
        if self._file.closed:  # its descriptor's number may belong to another file by now
            raise ValueError("read of a spooled body after it was closed")
        want = max(stop - start, _WINDOW_BYTES)
        window = _pread(self._fd, start, min(start + want, self._size))
        self._window, self._window_at = window, start
        return window[: stop - start]

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytes: ...
    def __getitem__(self, index: int | slice) -> int | bytes:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._size)
            if step != 1:
                raise ValueError("a SpooledBody is read in plain slices only")
            return self._read(start, stop) if start < stop else b""
        if not -self._size <= index < self._size:
            raise IndexError("SpooledBody index out of range")
        at = index % self._size
        return self._read(at, at + 1)[0]

    def rfind(self, sub: bytes, start: int, end: int) -> int:
        """The highest index of `sub` (not empty) within [start, end), or -1: as bytes.rfind."""
        assert sub, "rfind of an empty string"
        start, end, _ = slice(start, end).indices(self._size)
        if end - start < len(sub):
            return -1
        found = self._read(start, end).rfind(sub)
        return found + start if found >= 0 else -1

    def whole(self) -> bytes:
        """The whole body in memory: for the rare readers that need it all at once."""
        return self[:]


def _pread(fd: int, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the file, however many reads it takes."""
    parts: list[bytes] = []
    while start < stop:
        part = os.pread(fd, stop - start, start)
        if not part:
            raise OSError(f"the spool file ended at {start} bytes, before {stop}")
        parts.append(part)
        start += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# What a response body may be: in memory, or spooled.
Body = bytes | SpooledBody


def whole(body: Body) -> bytes:
    """The body as bytes: itself, or the spooled one read back whole."""
    return body if isinstance(body, bytes) else body.whole()
