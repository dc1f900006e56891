"""Spooled response bodies (watcher/sources/body.py): a body written to an unlinked file reads back as
the same bytes through every way the parsers read it, leaves nothing in its folder, fails with an error
naming the folder when it cannot be written, and the XML safety checks read it a chunk at a time without
missing a declaration split between two chunks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spooling import spooled

from watcher.sources import body as body_module
from watcher.sources import xmlsafe
from watcher.sources.base import ParseError
from watcher.sources.body import Spool, SpooledBody, SpoolError, whole


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200),
    st.lists(st.tuples(st.integers(-250, 250), st.integers(-250, 250)), max_size=12),
    st.integers(1, 64),
)
def test_a_spooled_body_reads_as_its_bytes(data: bytes, ranges: list[tuple[int, int]], window: int) -> None:
    """Whatever the window and in whatever order they are asked for, slices, single bytes and rfind of a
    spooled body are those of the very bytes written; `whole` gives them all."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(body_module, "_WINDOW_BYTES", window)
        with spooled(data) as body:
            assert len(body) == len(data)
            for start, stop in ranges:
                assert body[start:stop] == data[start:stop]
                assert body.rfind(b">", start, stop) == data.rfind(b">", start, stop)
                assert body.rfind(b"<!", start, stop) == data.rfind(b"<!", start, stop)
                if -len(data) <= start < len(data):
                    assert body[start] == data[start]
                else:
                    with pytest.raises(IndexError):
                        body[start]
            assert whole(body) == data
            assert body[:] == data


def test_a_spool_file_has_no_name_and_is_closed(tmp_path: Path) -> None:
    """The spool file never appears in its folder (unlinked from the start: nothing is left after a
    crash); closing it gives its descriptor back; reads after that fail."""
    before = set(os.listdir("/proc/self/fd"))
    body = spooled(b"x" * 100_000, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert body[99_999:] == b"x"
    body.close()
    assert body.closed
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ValueError, match="after it was closed"):
        body[:10]


def test_a_folder_that_cannot_be_written_is_a_clear_spool_error(tmp_path: Path) -> None:
    """A missing folder is a SpoolError naming the folder and why, not an OSError."""
    missing = tmp_path / "gone"
    with pytest.raises(SpoolError, match=f"could not spool the response body to {missing}: No such file"):
        Spool(missing).open()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_a_clear_spool_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A write the disk refuses (ENOSPC, from /dev/full) is a SpoolError naming the folder and the
    reason; the writer then closes its file."""
    opened: list[object] = []

    def full(dir: Path) -> object:
        file = open("/dev/full", "w+b")  # noqa: SIM115 (the writer owns and closes it)
        opened.append(file)
        return file

    monkeypatch.setattr(body_module.tempfile, "TemporaryFile", full)
    writer = Spool(tmp_path).open()
    with pytest.raises(SpoolError, match=f"to {tmp_path}: No space left on device"):
        writer.write(b"x" * 65536)
    writer.close()
    assert getattr(opened[0], "closed", False)


# --- the XML checks on a spooled body ----------------------------------------------------------------


def _verdict(body: bytes | SpooledBody) -> str:
    """The ParseError of the XML checks of `body`, or "ok"."""
    try:
        xmlsafe.stream_untrusted_xml(body)
    except ParseError as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("marker", [b"<!DOCTYPE a>", b'<!ENTITY e "x">', b"\x00"])
def test_a_declaration_split_between_check_chunks_is_refused(
    monkeypatch: pytest.MonkeyPatch, marker: bytes
) -> None:
    """A `<!DOCTYPE`, an `<!ENTITY` or a NUL byte is refused in a spooled body wherever the chunks of
    its check end: at every split point of the marker, for several chunk sizes, with the same message
    as for the body in memory."""
    for step in (1, 2, 5, 8, 9, 16):
        monkeypatch.setattr(xmlsafe, "CHECK_CHUNK_BYTES", step)
        for pad in range(2 * step + 2):
            data = b"<a>" + b"y" * pad + marker + b"</a>"
            expected = _verdict(data)
            assert expected.startswith(("XML refused", "not well-formed XML: it contains a NUL"))
            with spooled(data) as body:
                assert _verdict(body) == expected, (step, pad)


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0" encoding="latin-1"?><a/>',
        b'<?xml version="1.0" encoding="latin-1"?><a><!DOCTYPE a></a>',
        b"<a>\x00<!DOCTYPE a></a>",
        b'<a><!ENTITY e "x"><!DOCTYPE a></a>',
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a><a/>'.encode("utf-16"),
        "<a>\x00</a>".encode("utf-16-le"),
        "<a>café</a>".encode("utf-16-be"),
        b"\xef\xbb\xbf<a>caf\xc3\xa9</a>",
        b"<a>ok</a>",
    ],
)
def test_spooled_checks_give_the_first_fault_as_in_memory(
    monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    """Several faults in one body: the spooled check reports the one the in-memory check reports (a NUL
    byte, then the declared encoding, then a DTD, then an entity declaration), UTF-16 included."""
    monkeypatch.setattr(xmlsafe, "CHECK_CHUNK_BYTES", 4)
    with spooled(data) as body:
        assert _verdict(body) == _verdict(data)
