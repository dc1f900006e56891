"""The pattern that reads a Mastercard XML answer in exactly the documented layout (xml_pattern): it reads
what the XML parser reads, or leaves the whole body to it. Its table of variations is in
test_parse_mastercard.py, beside the direct path's; here, what the table does not reach: window edges,
declarations, what follows the root, encodings, long accounts, a layout broken midway."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pattern_reads import read_xml
from spooling import as_body

from watcher.sandbox.mastercard import AccountBalanceView, render_xml
from watcher.sources import xml_pattern
from watcher.sources.mastercard_accounts import ListingKeys
from watcher.sources.xml_pattern import NotPlain, plain_listing

KW: dict[str, Any] = {"source": "mc", "observed_at": datetime(2026, 12, 4, 6, 0, tzinfo=UTC),
                      "correlation_id": "corr-1"}


def _view(i: int, **fields: str) -> AccountBalanceView:
    plain = {"account_description": "Main prefunding", "amount": f"{i}.{i % 100:02d}", "currency": "GBP",
             "state": "IN_CREDIT", "balance_timestamp": "2026-12-02T12:00:00Z",
             "created_date": "2018-01-10T09:30:00Z", "non_card_token": f"non_card_token:sbx-P-{i:04d}"}
    return AccountBalanceView(**{**plain, **fields})


def _listing(count: int, **fields: str) -> bytes:
    return render_xml([_view(i, **fields) for i in range(count)], listing=True)


def _same_as_the_parser(body: bytes, *, took: bool) -> None:
    """The pattern allowed or not, the same outcome; and the pattern read the body iff `took`."""
    expected, _ = read_xml(body, pattern=False, **KW)
    outcome, pattern_took = read_xml(body, pattern=True, **KW)
    assert outcome == expected
    assert pattern_took == took, outcome


@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
@pytest.mark.parametrize("window", [1, 2, 3, 5, 7, 64])
def test_every_window_edge_reads_the_same(window: int, spool: bool) -> None:
    """Characters of two, three and four bytes, cut by every window size, are read whole: the same
    observations as the parser's, for a body in memory and for one spooled and read a few bytes at a time."""
    body = render_xml([_view(i, account_description=f"Compte \u00e9tranger \u20ac{i} \u6f22\u5b57 \U0001f4b6")
                       for i in range(12)], listing=True)
    expected, _ = read_xml(body, pattern=False, **KW)
    with as_body(body, spool) as data, pytest.MonkeyPatch.context() as patch:
        patch.setattr(xml_pattern, "WINDOW_BYTES", window)
        assert read_xml(data, pattern=True, **KW) == (expected, True)


@pytest.mark.parametrize(("declaration", "took"), [
    ('<?xml version="1.0"?>', True),
    ('<?xml version="1.0" encoding="UTF-8"?>\n', True),
    ('\ufeff<?xml version="1.0" encoding="utf-8" standalone="yes"?>\n\n', True),
    ("\ufeff", True),
    ('<?xml version="1.1"?>', False),
    ("<?xml version='1.0'?>", False),
    ('<?xml version="1.0" encoding="ISO-8859-1"?>', False),  # refused by the parser's checks
    ('<?xml version="1.0" encoding="UTF-16"?>', False),
    (' <?xml version="1.0"?>', False),  # nothing may come before the declaration
    ("<!-- a comment -->", False),
    ("<!DOCTYPE account-balances>", False),
])
def test_declarations(declaration: str, took: bool) -> None:
    """The plain declarations (version 1.0, UTF-8, standalone, a byte-order mark) are read by the pattern;
    any other start goes to the parser, which accepts or refuses it as before."""
    _same_as_the_parser(declaration.encode() + _listing(3), took=took)


@pytest.mark.parametrize(("after", "took"), [
    ("", True),
    ("\n\n  \t", True),
    ("<!-- done -->", False),
    ("<?pi x?>", False),
    ("junk", False),
    ("<account-balances/>", False),
])
def test_what_follows_the_root(after: str, took: bool) -> None:
    """Only whitespace may follow the root for the pattern; a comment after it is the parser's to accept,
    junk its to refuse."""
    _same_as_the_parser(_listing(3) + after.encode(), took=took)


@pytest.mark.parametrize("cut", [2, 20, 200, 500])
def test_a_body_cut_short_is_the_parsers_fault_to_report(cut: int) -> None:
    """A body that ends early is not the documented layout: the parser reports where it breaks."""
    _same_as_the_parser(_listing(3)[:-cut], took=False)


@pytest.mark.parametrize(("description", "took"), [
    ("tab\tand\nline feed", True),
    ("greater > than", False),  # allowed in XML, not by the pattern: the parser reads it
    ("carriage\rreturn", False),  # a parser turns it into a line feed
    ("control\x01character", False),  # not an XML character: the parser refuses the body
    ("not a character \ufffe", False),
])
def test_texts_the_pattern_leaves_to_the_parser(description: str, took: bool) -> None:
    """Texts a parser would change or refuse (or that no account of the layout holds) leave the body to
    it; a tab and a line feed are read as the parser reads them."""
    body = _listing(2).replace(b"Main prefunding", description.encode(), 1)
    _same_as_the_parser(body, took=took)


@pytest.mark.parametrize(("window", "took"), [(1024, False), (256 * 1024, True)])
def test_a_long_account(window: int, took: bool) -> None:
    """An account of 20,000 characters is read by the pattern when one window holds it; when it spans
    windows, the pattern gives up once 16 KiB have not matched (it keeps no more than that), and the parser
    reads it. The same outcome either way."""
    body = _listing(2).replace(b"Main prefunding", b"x" * 20_000, 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(xml_pattern, "WINDOW_BYTES", window)
        _same_as_the_parser(body, took=took)


def test_invalid_utf8_is_the_parsers_fault_to_report() -> None:
    """Bytes that are not UTF-8 leave the body to the parser, which refuses it."""
    _same_as_the_parser(_listing(2).replace(b"Main prefunding", b"Main \xff prefunding", 1), took=False)


def test_a_layout_broken_midway_is_parsed_whole_from_the_start() -> None:
    """Thirty accounts read by the pattern, then one with an attribute: the whole body is parsed by the
    parser instead, with the same result, and the source's keys are those of that one parse."""
    body = _listing(40).replace(b"<account_balance>", b'<account_balance id="x">', 31)
    body = body.replace(b'<account_balance id="x">', b"<account_balance>", 30)
    assert body.count(b'id="x"') == 1
    parser_keys, pattern_keys = ListingKeys(), ListingKeys()
    expected, _ = read_xml(body, pattern=False, keys=parser_keys, **KW)
    assert read_xml(body, pattern=True, keys=pattern_keys, **KW) == (expected, False)
    assert pattern_keys.latest == parser_keys.latest
    assert len(pattern_keys.latest) == 40


def test_empty_listing_and_single_account_roots() -> None:
    """A listing of no account, and the single-account endpoint's root, read as the parser reads them."""
    _same_as_the_parser(b"<account-balances>\n</account-balances>\n", took=True)
    _same_as_the_parser(render_xml([_view(1)], listing=False), took=True)


def test_plain_listing_gives_the_texts_stripped() -> None:
    """The iterator gives each account's seven texts, stripped, in the layout's order, and the root's
    name; a body that does not start like the layout is NotPlain at once."""
    root, accounts = plain_listing(_listing(2, currency=" EUR\n"))
    assert root == "account-balances"
    assert list(accounts) == [
        ("Main prefunding", f"{i}.{i:02d}", "EUR", "IN_CREDIT", "2026-12-02T12:00:00Z",
         "2018-01-10T09:30:00Z", f"non_card_token:sbx-P-{i:04d}")
        for i in range(2)
    ]
    with pytest.raises(NotPlain):
        plain_listing(b'<account-balances xmlns="urn:x">')
    with pytest.raises(NotPlain):
        plain_listing(b"")
