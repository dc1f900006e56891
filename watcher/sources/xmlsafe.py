"""The one way untrusted XML is parsed: refuse any DTD, then the C parser (`_elementtree` on expat).

Why this is as safe as defusedxml's `forbid_dtd=True`, and about four times faster (defusedxml's
`fromstring` goes through the pure-Python `XMLParser` and its callbacks):

- Every XML attack that expat (and so ElementTree) is open to needs a DTD: entity expansion ("billion
  laughs", quadratic blow-up) needs `<!ENTITY` declarations, which may only appear in a DTD's internal
  subset; external entities and external DTDs (file or network access) need `<!DOCTYPE ... SYSTEM` or an
  `<!ENTITY ... SYSTEM`. Without a document type declaration there is nothing to expand or fetch: a
  reference to an entity that is not one of the five predefined ones is a well-formedness error
  ("undefined entity"). ElementTree does no XInclude and no XSLT of its own.
- XML is case-sensitive and allows no space after `<!`: expat reads a document type declaration only
  from the exact characters `<!DOCTYPE` (and an entity declaration only from `<!ENTITY`); `<!doctype`
  or `<! DOCTYPE` are syntax errors. So when the bytes expat reads as UTF-8 do not contain those, the
  document has no DTD. That is the check below, made before the parser sees a byte.
- The check holds only if expat reads the bytes as UTF-8 (or its ASCII subset), so that is enforced:
  the parser is created with its encoding set to UTF-8, which overrides the document's own declaration;
  a body whose declaration names another encoding is refused with a message saying so (a Latin-1 body
  read as UTF-8 would be misread, not unsafe). Expat still detects UTF-16 by itself (a byte-order mark,
  or `<` followed or preceded by a NUL byte), and in UTF-16 `<!DOCTYPE` is not the same bytes; so UTF-16
  (with a BOM, or starting with `<` as the XML spec's appendix F describes) is transcoded to UTF-8 here
  first, and any body that still contains a NUL byte is refused: NUL is never allowed in XML, and
  without one no markup can be written in UTF-16 or UTF-32. Every other encoding expat could be
  switched to by a declaration is overridden by the forced UTF-8.
- The check errs on the safe side: the characters `<!DOCTYPE` or `<!ENTITY` inside a comment or a
  CDATA section are refused too. Balance answers have neither.

Nothing else in the project parses XML; a test checks the imports.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Collection, Iterator
from typing import Any, overload
from xml.etree.ElementTree import Element

from watcher.sources.base import ParseError
from watcher.sources.body import Body, SpooledBody

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"
# The XML declaration's encoding, when there is one: it can only be at the very start of the document.
_DECLARED_ENCODING = re.compile(rb"\A(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']")
_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_UTF16_NAMES = frozenset({"utf-16", "utf16", "utf-16le", "utf-16be"})
_DECLARATIONS = ((b"<!DOCTYPE", "a document type declaration (<!DOCTYPE)"),
                 (b"<!ENTITY", "an entity declaration (<!ENTITY)"))
_NUL = b"\x00"
_MARKERS = (_NUL, *(marker for marker, _ in _DECLARATIONS))
# Bytes a chunk of a spooled body's check repeats from the one before: all of a marker but its last byte.
_OVERLAP = max(len(marker) for marker in _MARKERS) - 1
# The declared encoding is looked for in this much of the start of the body.
_HEAD_BYTES = 512
# How much of a spooled body its check reads at a time.
CHECK_CHUNK_BYTES = 1024 * 1024
# How much of the body stream_untrusted_xml gives the parser at a time: the elements of one chunk are
# what the tree holds at most (and the whole of one child of the root, if it is larger). On a listing
# of 100,000 accounts, 16 to 256 KiB measured alike, 1 MiB markedly slower.
STREAM_CHUNK_BYTES = 64 * 1024


def _utf8(body: bytes) -> tuple[bytes, frozenset[str]]:
    """The body as UTF-8 bytes, as the parser will read them, and the encoding names its declaration may
    give; ParseError when it cannot be UTF-8."""
    encoding: str | None = None
    if body.startswith(_UTF16_BOMS):
        encoding = "utf-16"  # the codec reads the byte order from the BOM and drops it
    elif body.startswith(b"<\x00"):
        encoding = "utf-16-le"
    elif body.startswith(b"\x00<"):
        encoding = "utf-16-be"
    if encoding is None:
        return body, _UTF8_NAMES
    try:
        return body.decode(encoding).encode("utf-8"), _UTF16_NAMES
    except UnicodeError as exc:  # a lone surrogate is refused on the way back to UTF-8
        raise ParseError(f"not well-formed XML: not valid UTF-16: {exc}") from None


def _refuse(found: Collection[bytes], head: bytes, allowed: frozenset[str]) -> None:
    """The ParseError of the first fault of a body (as UTF-8) whose start is `head` and which holds the
    markers `found`: a NUL byte, then a declared encoding not `allowed`, a DTD, an entity declaration."""
    if _NUL in found:
        raise ParseError("not well-formed XML: it contains a NUL byte (only UTF-8 and UTF-16 are accepted)")
    declared = _DECLARED_ENCODING.match(head, 0, _HEAD_BYTES)
    if declared is not None:
        name = declared.group(1).decode("ascii", "replace")
        if name.strip().lower() not in allowed:
            raise ParseError(
                f"XML refused: the declared encoding {name[:40]!r} is not accepted "
                f"(UTF-8, or UTF-16 with its byte-order mark)"
            )
    for marker, what in _DECLARATIONS:
        if marker in found:
            raise ParseError(f"XML refused: it contains {what}; DTDs and entities are not accepted")


@overload
def _checked(body: bytes) -> bytes: ...
@overload
def _checked(body: Body) -> Body: ...
def _checked(body: Body) -> Body:
    """The body as UTF-8 without a DTD or an entity declaration; ParseError otherwise. A spooled body
    stays spooled (unless it is UTF-16: transcoded in memory, which is rare)."""
    if isinstance(body, SpooledBody):
        if not body[:2].startswith((*_UTF16_BOMS, b"<\x00", b"\x00<")):
            _refuse(_markers_in(body), body[:_HEAD_BYTES], _UTF8_NAMES)
            return body
        body = body.whole()
    data, allowed = _utf8(body)
    _refuse([marker for marker in _MARKERS if marker in data], data, allowed)
    return data


def _markers_in(body: SpooledBody, chunk_bytes: int | None = None) -> set[bytes]:
    """Which of _MARKERS a spooled body holds, read a chunk at a time. Each chunk starts with the last
    bytes of the one before it, so that a marker split between two chunks is found whole."""
    step = CHECK_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    found: set[bytes] = set()
    at = 0
    while at < len(body) and _NUL not in found:  # a NUL byte is the first fault: no need to read on
        piece = body[max(0, at - _OVERLAP) : at + step]
        found.update(marker for marker in _MARKERS if marker in piece)
        at += step
    return found


def _not_well_formed(exc: Exception) -> ParseError:
    return ParseError(f"not well-formed XML: {exc}")


def parse_untrusted_xml(body: bytes) -> Element:
    """The root element of an untrusted XML body; ParseError for a DTD, an entity declaration, an encoding
    other than UTF-8 or UTF-16, or anything that is not well-formed. See the module's docstring."""
    data = _checked(body)
    # After the checks above there is no DTD, so nothing for expat to expand or fetch.
    parser = ET.XMLParser(encoding="utf-8")  # the C parser; the encoding overrides any declaration
    try:
        parser.feed(data)
        return parser.close()
    except ET.ParseError as exc:
        raise _not_well_formed(exc) from None
    except (ValueError, LookupError) as exc:  # defensive: expat reports everything above as ParseError
        raise _not_well_formed(exc) from None


def stream_untrusted_xml(
    body: Body, chunk_bytes: int = STREAM_CHUNK_BYTES
) -> tuple[Element, Iterator[Element]]:
    """An untrusted XML body read as it is parsed: its root element, and an iterator over the root's
    child elements, each complete, as soon as its end tag is read. The same checks and the same
    ParseErrors as parse_untrusted_xml, so the same safety (see the module's docstring).

    The root comes back as soon as its start tag is read: its tag and attributes, no children yet, and
    it never gets them all: the root drops its children as the iterator goes on, so that the tree never
    holds more than the elements of one chunk of the body (and the whole of the child being read). A
    child is the caller's to keep or drop. Comments and processing instructions are not children.

    The body is checked whole before anything is parsed (a DTD, an entity declaration, the encoding,
    NUL bytes); a ParseError for a DTD, an entity declaration, an encoding, or a fault before the end
    of the root's start tag is raised by this call. A spooled body (watcher.sources.body) is checked
    a chunk at a time, then read a chunk at a time as it is parsed. A fault further on is raised by
    the iterator when the parser reaches it, after the children before it (the parse of a whole tree
    would have raised it before any); a caller that wants the document's faults to come first reads to
    the end.
    """
    data = _checked(body)
    children = _children(data, chunk_bytes)
    try:
        root = next(children)
    except StopIteration:  # defensive: expat reports "no element found" at the close
        raise ParseError("not well-formed XML: no element found") from None
    return root, children


def _chunk_end(data: Body, at: int, chunk_bytes: int) -> int:
    """Where the chunk from `at` ends: just after its last `>` (a whole tag, as a one-piece parse sees
    it), else not inside a UTF-8 character (expat words some faults otherwise when a character is split
    between two feeds); so that a fault is reported with the same words and position as from a whole
    tree."""
    end = at + chunk_bytes
    if end >= len(data):
        return len(data)
    cut = data.rfind(b">", at, end)
    if cut >= at:
        return cut + 1
    while end < len(data) and 0x80 <= data[end] < 0xC0:  # a continuation byte
        end += 1
    return end


def _children(data: Body, chunk_bytes: int) -> Iterator[Element]:
    """The root element first, then each child of the root at its end tag; see stream_untrusted_xml."""
    # The C parser, its encoding forced to UTF-8 as in parse_untrusted_xml, with its own event queue:
    # XMLPullParser's `_parser` is how `iterparse(..., parser=)` hands it one.
    parser = ET.XMLPullParser(("start", "end"), _parser=ET.XMLParser(encoding="utf-8"))
    # A listing of 100,000 accounts is 900,000 elements. The queue is read directly (read_events is a
    # generator step per event), and once the root is known only end events are asked for (`_setevents`,
    # what XMLPullParser itself calls): the root's children end in order, so the one that ends next is
    # `root[given]` (the events are read after the feed that queued them, the tree then holds more).
    # A feed that queued no fault is not even read event by event: its last event says how many of the
    # root's children have ended (see below), and the queue is cleared at once.
    events: deque[Any] = parser._events_queue  # type: ignore[attr-defined]
    view = memoryview(data) if isinstance(data, bytes) else data  # chunks without copies, or from the file
    root: Element | None = None
    ended = False  # the root's end tag was read
    given = 0  # the root's children given out and still held by it
    at = 0
    try:
        while True:
            last = at >= len(view)
            if last:
                parser.close()  # the faults found only at the end: no root, an unclosed element
            else:
                # After the root's end tag, only comments or faults can follow: in one piece, as the
                # parse of a whole tree reads them (the words of a fault depend on where a feed ends).
                end = len(data) if ended else _chunk_end(data, at, chunk_bytes)
                parser.feed(view[at:end])
                at = end
            if root is not None and events and not isinstance(events[-1], Exception):
                # Only end events, and no fault: the children that ended are all those but an open
                # last one. The last one has ended when the last event is its end or the root's (no
                # element starts after it without being a later child), so no event need be looked at.
                element = events[-1][1]
                if element is root:
                    ended = True
                    done = len(root)
                else:
                    done = len(root) if len(root) and root[-1] is element else len(root) - 1
                events.clear()
                while given < done:
                    given += 1
                    yield root[given - 1]
            while events:  # the root's start, the events queued before the switch, or a fault
                item = events.popleft()
                if isinstance(item, Exception):
                    raise item  # the fault feed queued, after the events before it
                event, element = item
                if root is None:
                    root = element  # the first event: the root's start
                    parser._parser._setevents(events, ("end",))  # type: ignore[attr-defined]
                    yield root
                elif event != "end":
                    continue  # queued before the switch
                elif element is root:
                    ended = True
                elif given < len(root) and root[given] is element:
                    given += 1
                    yield element
            if last:
                return
            if given and root is not None:
                # The chunk's children were given out: the root lets them go. The one still being read
                # (if any) stays; the parser goes on building it, and its end event gives it out.
                del root[:given]
                given = 0
    except ET.ParseError as exc:
        raise _not_well_formed(exc) from None
    except (ValueError, LookupError) as exc:  # defensive, as in parse_untrusted_xml
        raise _not_well_formed(exc) from None
