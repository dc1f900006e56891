"""Test helper: a body as the transport spools it, so that a parser test can run on both kinds of body."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from watcher.sources import body as body_module
from watcher.sources import xmlsafe
from watcher.sources.body import Body, Spool, SpooledBody


def spooled(data: bytes, directory: Path | None = None) -> SpooledBody:
    """`data` written to a spool file, as the transport writes a large body; the caller closes it."""
    writer = Spool(directory or Path(tempfile.gettempdir())).open()
    try:
        writer.write(data)
        return writer.finish()
    finally:
        writer.close()


@contextmanager
def as_body(data: bytes, spool: bool, read_bytes: int = 7) -> Iterator[Body]:
    """`data` itself, or (`spool`) spooled and read back `read_bytes` at a time (the file's window and
    the XML check's chunks), so that every read of the parsers crosses many window edges."""
    if not spool:
        yield data
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(body_module, "_WINDOW_BYTES", read_bytes)
        patch.setattr(xmlsafe, "CHECK_CHUNK_BYTES", read_bytes)
        with spooled(data) as body:
            yield body
