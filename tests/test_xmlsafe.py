"""Untrusted XML (watcher/sources/xmlsafe.py): every DTD and entity declaration is refused before the C
parser sees the body, in whatever encoding expat could be made to read it, with a message saying why;
everything else well-formed parses as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import tostring

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spooling import as_body

from watcher.sources.base import ParseError
from watcher.sources.mastercard import describe_error_body, parse_mastercard_xml
from watcher.sources.provider_errors import read_mastercard_error
from watcher.sources.xmlsafe import parse_untrusted_xml, stream_untrusted_xml

SEED = Path(__file__).resolve().parent.parent / "watcher" / "sandbox" / "seed"
KW: dict[str, Any] = {"source": "mc", "observed_at": datetime(2026, 1, 1, tzinfo=UTC), "correlation_id": "c"}
DOCTYPE_REFUSED = r"XML refused: it contains a document type declaration \(<!DOCTYPE\); DTDs and entities"
ENTITY_REFUSED = r"XML refused: it contains an entity declaration \(<!ENTITY\); DTDs and entities"

BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n<a>&lol2;</a>'
)
EXTERNAL = '<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;</a>'
EXTERNAL_DTD = '<!DOCTYPE account_balances SYSTEM "http://example.com/x.dtd"><account_balances/>'
PARAMETER = '<!DOCTYPE a [<!ENTITY % p SYSTEM "http://example.com/p.dtd"> %p;]><a/>'


@pytest.mark.parametrize("text", [BOMB, EXTERNAL, EXTERNAL_DTD, PARAMETER, "<!DOCTYPE a><a/>"])
def test_any_doctype_is_refused_with_a_clear_error(text: str) -> None:
    """Entity bombs, external entities, external DTDs, parameter entities and an empty DTD: refused,
    naming the document type declaration, before any parsing."""
    with pytest.raises(ParseError, match=DOCTYPE_REFUSED):
        parse_untrusted_xml(text.encode())


def test_an_entity_declaration_without_doctype_is_refused() -> None:
    """`<!ENTITY` anywhere is refused too (it can only mean a DTD, or an attempt at one)."""
    with pytest.raises(ParseError, match=ENTITY_REFUSED):
        parse_untrusted_xml(b'<a><!ENTITY e "x"></a>')


def test_a_declaration_inside_a_comment_is_refused_too() -> None:
    """The check errs on the safe side: the characters in a comment or CDATA are refused as well."""
    with pytest.raises(ParseError, match=DOCTYPE_REFUSED):
        parse_untrusted_xml(b"<a><!-- <!DOCTYPE a> --></a>")
    with pytest.raises(ParseError, match=ENTITY_REFUSED):
        parse_untrusted_xml(b"<a><![CDATA[<!ENTITY]]></a>")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", [BOMB, EXTERNAL, EXTERNAL_DTD])
def test_a_doctype_in_utf16_is_refused(encoding: str, text: str) -> None:
    """Expat reads UTF-16 by itself (with a byte-order mark, or from `<` next to a NUL byte), where the
    bytes of `<!DOCTYPE` differ: such bodies are transcoded first, and their DTD is refused all the same."""
    with pytest.raises(ParseError, match=DOCTYPE_REFUSED):
        parse_untrusted_xml(text.replace("1.0\"?>", "1.0\" encoding=\"UTF-16\"?>").encode(encoding))


@pytest.mark.parametrize("encoding", ["utf-32", "utf-32-le", "utf-32-be"])
def test_utf32_is_refused(encoding: str) -> None:
    """UTF-32 (and anything else with NUL bytes, which XML never allows) is refused, DTD or not."""
    with pytest.raises(ParseError, match="NUL byte"):
        parse_untrusted_xml("<a>x</a>".encode(encoding))
    with pytest.raises(ParseError):
        parse_untrusted_xml(EXTERNAL.encode(encoding))


@pytest.mark.parametrize("encoding", ["cp500", "cp037", "iso-8859-1", "windows-1252", "utf-7", "no-such"])
def test_other_declared_encodings_are_refused(encoding: str) -> None:
    """A declaration of any encoding but UTF-8 (or US-ASCII) is refused, naming it: the parser reads UTF-8
    only, so an EBCDIC or UTF-7 body cannot hide a DTD from the check, and a Latin-1 body is not misread."""
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>'.encode()
    for rest in (b"<a>x</a>", EXTERNAL.encode()):
        refused = f"XML refused: the declared encoding '{encoding}' is not accepted"
        with pytest.raises(ParseError, match=refused):
            parse_untrusted_xml(declaration + rest)


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0" encoding="UTF-8"?><a>caf\xc3\xa9</a>',
        b"<?xml version='1.0' encoding='us-ascii'?><a>caf&#233;</a>",
        b"\xef\xbb\xbf<a>caf\xc3\xa9</a>",
        '<?xml version="1.0" encoding="UTF-16"?><a>café</a>'.encode("utf-16"),
        "<a>café</a>".encode("utf-16-le"),
        "<a>café</a>".encode("utf-16-be"),
    ],
)
def test_utf8_and_utf16_bodies_parse(body: bytes) -> None:
    """UTF-8 (with or without a BOM or declaration), US-ASCII with a character reference, and UTF-16
    (with a BOM, or as the XML spec's appendix F detects it) all read the same text."""
    root = parse_untrusted_xml(body)
    assert (root.tag, root.text) == ("a", "café")


def test_predefined_entities_and_references_still_work() -> None:
    """The five predefined entities and character references need no DTD and are read as usual."""
    root = parse_untrusted_xml(b"<a>&lt;&gt;&amp;&apos;&quot;&#65;&#x42;</a>")
    assert root.text == "<>&'\"AB"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<a>&e;</a>", "not well-formed XML: undefined entity"),
        (b"<!doctype a><a/>", "not well-formed XML"),  # XML is case-sensitive: not a DTD, a syntax error
        (b"<a>", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"\xff\xfe<\x00a", "not well-formed XML"),
        (b"<a>\xff</a>", "not well-formed XML"),
        ("<a>\ud800</a>".encode("utf-16-le", "surrogatepass"), "not well-formed XML"),
    ],
)
def test_malformed_bodies_are_parse_errors(body: bytes, message: str) -> None:
    """An entity never declared, a lowercase doctype, truncation, bad UTF-8 or UTF-16: a ParseError."""
    with pytest.raises(ParseError, match=message):
        parse_untrusted_xml(body)


def test_mastercard_parser_and_error_reader_refuse_dtds() -> None:
    """The balance parser says why it refused the body; the error-body reader finds no error in it."""
    body = (SEED / "mc_account_balance.xml").read_bytes()
    assert parse_mastercard_xml(body, **KW).observations  # the sample itself parses
    with pytest.raises(ParseError, match=DOCTYPE_REFUSED):
        parse_mastercard_xml(b"<!DOCTYPE account_balances>" + body.split(b"?>", 1)[-1], **KW)
    error = (b'<!DOCTYPE Errors [<!ENTITY c "BOOM">]>'
             b"<Errors><Error><ReasonCode>&c;</ReasonCode></Error></Errors>")
    assert read_mastercard_error(error) is None
    assert describe_error_body(error) == ""
    assert read_mastercard_error(b"<Errors><Error><ReasonCode>X</ReasonCode></Error></Errors>") is not None


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.sampled_from(["<!DOCTYPE a>", '<!ENTITY e "x">', "<!DOCTYPE a [<!ENTITY e 'x'>]>"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)
def test_no_encoding_smuggles_a_declaration(encoding: str, before: str, declaration: str, after: str) -> None:
    """Whatever the encoding and whatever surrounds it, a body holding a DTD or entity declaration never
    parses: it is a ParseError (refused, or not well-formed)."""
    body = f"{before}{declaration}<a>{after}</a>".encode(encoding, "replace")
    with pytest.raises(ParseError):
        parse_untrusted_xml(body)


# --- streaming ------------------------------------------------------------------------------------------


def _streamed_or_error(body: bytes, chunk_bytes: int, spool: bool = False) -> object:
    """The root's tag and each child as (tag, text, [grandchild tags]), or the ParseError's message."""
    try:
        with as_body(body, spool) as given:
            root, children = stream_untrusted_xml(given, chunk_bytes)
            return root.tag, [(c.tag, c.text, [g.tag for g in c]) for c in children]
    except ParseError as exc:
        return str(exc)


def _whole_or_error(body: bytes) -> object:
    try:
        root = parse_untrusted_xml(body)
        return root.tag, [(c.tag, c.text, [g.tag for g in c]) for c in root]
    except ParseError as exc:
        return str(exc)


STREAM_BODIES = [
    b"<r><a>1</a><!-- c --><b><x/><y>2</y></b><?pi z?><c/></r>",
    b'<?xml version="1.0"?>\n<r xmlns="urn:q">\n <a>caf\xc3\xa9</a>\n <a>\xe2\x82\xac</a>\n</r>\n<!-- . -->',
    "<r><a>é</a></r>".encode("utf-16"),
    b"<r/>",
    b"",
    b"<r><a>",
    b"<r><a>1</a></r><junk>",
    b"<r><a>1</a></r>\xc3\xa9\xc3\xa9<?pi?>",
    b"<r><a>&bogus;</a></r>",
    b"<r><a>1</a><b>\xff</b></r>",
    b"<!DOCTYPE r><r/>",
    b'<r><a>&#0;</a></r>',
    b'<?xml version="1.0" encoding="latin-1"?><r/>',
]


@pytest.mark.parametrize("body", STREAM_BODIES)
@pytest.mark.parametrize("chunk_bytes", [1, 3, 8, 64 * 1024])
@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
def test_stream_reads_as_the_whole_tree(body: bytes, chunk_bytes: int, spool: bool) -> None:
    """Streamed in any chunk size, from memory or from a spool file, a body gives the root and its
    children as the whole tree has them (comments and processing instructions are not children), and
    the same ParseError, word for word."""
    assert _streamed_or_error(body, chunk_bytes, spool) == _whole_or_error(body)


@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
def test_stream_refuses_before_parsing(spool: bool) -> None:
    """A DTD, an entity declaration, a NUL or a foreign encoding is refused by the call itself, from
    memory or from a spool file."""
    for body, message in [(BOMB.encode(), DOCTYPE_REFUSED), (b'<a><!ENTITY e "x"></a>', ENTITY_REFUSED),
                          (b"<a>\x00</a>", "NUL byte"), (b"<a/", "not well-formed XML")]:
        with pytest.raises(ParseError, match=message), as_body(body, spool) as given:
            stream_untrusted_xml(given)


def test_stream_holds_no_more_than_a_chunk() -> None:
    """The root lets its children go as the iterator goes on: with small chunks it never holds more
    than a few, however many the body has; each child comes complete."""
    child = b"<account_balance><balance><amount>1</amount></balance><x>y</x></account_balance>"
    body = b"<r>" + child * 5000 + b"</r>"
    root, children = stream_untrusted_xml(body, 256)
    held = count = 0
    for element in children:
        count += 1
        held = max(held, len(root))
        assert [e.tag for e in element.iter()] == ["account_balance", "balance", "amount", "x"]
    assert count == 5000
    assert held <= 4
    assert len(root) == 0


@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
def test_stream_gives_each_child_complete_at_every_chunk_size(spool: bool) -> None:
    """Wherever a chunk ends (inside a child, right after its end tag, with the root's end tag in the same
    chunk or not), each child the stream gives is already complete, all its descendants and texts as the
    whole tree has them, and every child is given once, in order; from memory or from a spool file."""
    child = "<a i='{i}'><b><c>{i}</c><d/>t</b>x<e><f><g>{i}</g></f></e></a>"
    body = ("<r>" + "".join(child.format(i=i) for i in range(12)) + "<z/></r>\n<!-- end -->").encode()
    whole = [tostring(c) for c in parse_untrusted_xml(body)]
    for chunk_bytes in range(1, len(body) + 2):
        with as_body(body, spool, read_bytes=chunk_bytes + 3) as given:
            _, children = stream_untrusted_xml(given, chunk_bytes)
            assert [tostring(c) for c in children] == whole, chunk_bytes
