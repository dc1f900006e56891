"""Fuzzing every parser of untrusted bytes: arbitrary bytes, and mutations of the documented samples
(byte flips, truncations, hostile insertions, field deletions, value swaps and replacements).

Guarantee: no exception escapes a parser other than our own ParseError (the error-body readers and the
Retry-After reader never raise at all), and whatever parses is sane money.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import defusedxml.ElementTree as SafeET
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spooling import as_body

import watcher.sources.json_listing as json_listing
import watcher.sources.mastercard_json as mastercard_json
import watcher.sources.mastercard_xml as mastercard_xml
from watcher.sources import xmlsafe
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.mastercard import parse_mastercard_json, parse_mastercard_xml
from watcher.sources.mypos import parse_mypos_json
from watcher.sources.oauth2 import parse_token_response
from watcher.sources.provider_errors import read_berlin_group_error, read_mastercard_error
from watcher.sources.retry import parse_retry_after

SEED_DIR = Path(__file__).resolve().parent.parent / "watcher" / "sandbox" / "seed"
SEEDS = {path.name: path.read_bytes() for path in sorted(SEED_DIR.iterdir()) if path.is_file()}
JSON_SEEDS = [body for name, body in SEEDS.items() if name.endswith(".json")]
XML_SEEDS = [body for name, body in SEEDS.items() if name.endswith(".xml")]
T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BalanceParser = Callable[[bytes], ParsedBalances]
BALANCE_PARSERS: dict[str, BalanceParser] = {
    "mastercard-json": lambda b: parse_mastercard_json(b, source="mc", observed_at=T0, correlation_id="c"),
    "mastercard-xml": lambda b: parse_mastercard_xml(b, source="mc", observed_at=T0, correlation_id="c"),
    "mypos": lambda b: parse_mypos_json(b, source="cards", account_number="1", observed_at=T0,
                                        correlation_id="c"),
}
# Values a hostile or broken server might put anywhere.
HOSTILE_VALUES: list[Any] = [
    None, True, 0, -1, 1e308, "NaN", "Infinity", "-0", "1e400", "1" * 30, "0.0000000000000000001", "",
    " ", "IN_LIMBO", "in_credit", "GBP", "gbp", "€", "\u202e", "\x00", [], {}, [[[]]], {"amount": "1"},
    "2018-05-18T10:19:80Z", "non_card_token:x",
]
HOSTILE_SNIPPETS = [
    b"NaN", b"1e400", b"-Infinity", b"\x00", b'"', b"{", b"}", b"[", b"<", b">", b"&", b"&lol;", b"\xff\xfe",
    b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>", b"\\u0000", b"1" * 40,
]


def check_all(body: bytes) -> None:
    """Run every parser on `body`: each either raises ParseError or returns sane observations."""
    for parse in BALANCE_PARSERS.values():
        try:
            parsed = parse(body)
        except ParseError:
            continue
        for item in parsed.observations:
            amount = item.balance.amount
            assert isinstance(amount, Decimal)
            assert amount.is_finite()
            assert len(amount.as_tuple().digits) <= 36
            assert re.fullmatch("[A-Z]{3}", item.balance.currency)
            assert item.key.account
        assert all(isinstance(reason, str) and reason for reason in parsed.rejected)
    for read in (read_mastercard_error, read_berlin_group_error):
        error = read(body)
        assert error is None or ("\n" not in error.text and len(error.text) <= 503)
    with contextlib.suppress(ParseError):
        parse_token_response(body)
    text = body.decode("latin-1")[:200]
    seconds = parse_retry_after(text, T0)
    assert seconds is None or 0 <= seconds <= 86_400


# --- arbitrary bytes -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(body: bytes) -> None:
    """Any byte string at all."""
    check_all(body)


@FUZZ
@given(st.sampled_from([b"{", b"[", b"<a>", b'{"account_balances": ', b'{"balances": [',
                        b'{"Errors": {"Error": ']), st.binary(max_size=2048))
def test_arbitrary_bytes_after_a_plausible_start(start: bytes, rest: bytes) -> None:
    """Bytes that start like one of the answers, so the parsers get past their first check."""
    check_all(start + rest)


# --- byte-level mutations of the samples ---------------------------------------------------------------


@FUZZ
@given(st.sampled_from(list(SEEDS.values())), st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                                       min_size=1, max_size=8))
def test_byte_flips(seed: bytes, flips: list[tuple[int, int]]) -> None:
    """A sample with a few bytes XOR-ed."""
    body = bytearray(seed)
    for position, mask in flips:
        body[position % len(body)] ^= mask
    check_all(bytes(body))


@FUZZ
@given(st.sampled_from(list(SEEDS.values())), st.integers(0, 10_000), st.integers(0, 10_000))
def test_truncations(seed: bytes, start: int, end: int) -> None:
    """Any slice of a sample: a body cut short, or starting in the middle."""
    start, end = sorted((start % (len(seed) + 1), end % (len(seed) + 1)))
    check_all(seed[:end])
    check_all(seed[start:end])


@FUZZ
@given(st.sampled_from(list(SEEDS.values())), st.lists(st.tuples(st.integers(0, 10_000),
                                                                 st.sampled_from(HOSTILE_SNIPPETS)),
                                                       min_size=1, max_size=4))
def test_hostile_insertions(seed: bytes, insertions: list[tuple[int, bytes]]) -> None:
    """A sample with hostile snippets (NaN, huge numbers, entities, NULs, stray brackets) inserted."""
    body = seed
    for position, snippet in insertions:
        at = position % (len(body) + 1)
        body = body[:at] + snippet + body[at:]
    check_all(body)


# --- structural mutations: JSON ------------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, (*prefix, index)))
    return found


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _delete(doc: Any, path: tuple[Any, ...]) -> None:
    parent = _get(doc, path[:-1])
    del parent[path[-1]]


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """A JSON sample with a few fields deleted, values swapped between fields, or replaced by hostile ones."""
    doc = json.loads(draw(st.sampled_from(JSON_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "replace", "swap", "duplicate"]))
        if action == "delete":
            _delete(doc, path)
        elif action == "replace":
            _set(doc, path, copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES))))
        elif action == "swap":
            other = draw(st.sampled_from(paths))
            if other[: len(path)] != path and path[: len(other)] != other:  # neither inside the other
                first, second = _get(doc, path), _get(doc, other)
                _set(doc, path, copy.deepcopy(second))
                _set(doc, other, copy.deepcopy(first))
        else:
            parent = _get(doc, path[:-1])
            if isinstance(parent, list):
                parent.append(copy.deepcopy(parent[path[-1]]))
    return json.dumps(doc).encode()


@FUZZ
@given(mutated_json())
def test_json_field_mutations(body: bytes) -> None:
    """JSON samples with fields deleted, swapped, duplicated or replaced by hostile values."""
    check_all(body)


# --- structural mutations: XML -------------------------------------------------------------------------


@st.composite
def mutated_xml(draw: st.DrawFn) -> bytes:
    """An XML sample with elements deleted or duplicated, texts swapped, or replaced by hostile ones."""
    root = SafeET.fromstring(draw(st.sampled_from(XML_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        parents = {child: parent for parent in root.iter() for child in parent}
        elements = list(parents)
        if not elements:
            break
        element = draw(st.sampled_from(elements))
        action = draw(st.sampled_from(["delete", "replace", "swap", "duplicate", "rename"]))
        if action == "delete":
            parents[element].remove(element)
        elif action == "replace":
            element.text = str(draw(st.sampled_from(HOSTILE_VALUES)))
        elif action == "swap":
            other = draw(st.sampled_from(elements))
            element.text, other.text = other.text, element.text
        elif action == "duplicate":
            parents[element].append(copy.deepcopy(element))
        else:
            element.tag = draw(st.sampled_from(["account_balance", "balance", "amount", "x", "Errors"]))
    return bytes(SafeET.tostring(root))


@FUZZ
@given(mutated_xml())
def test_xml_element_mutations(body: bytes) -> None:
    """XML samples with elements deleted, duplicated or renamed and texts swapped or made hostile."""
    check_all(body)


# --- the streamed XML listing reads as the whole tree ----------------------------------------------------


STREAM_SNIPPETS = [*HOSTILE_SNIPPETS, b"<x/>", b"<balance/>", b"<account_balance/>", b"<!-- c -->"]


def _xml_outcome(body: bytes, chunk_bytes: int | None, spool: bool = False) -> object:
    """What parse_mastercard_xml makes of `body`, streamed in chunks of `chunk_bytes` (from a spool file
    when `spool`), or (None) through the whole-tree reader: the result, or the ParseError's message."""
    kw: dict[str, Any] = {"source": "mc", "observed_at": T0, "correlation_id": "c"}
    try:
        if chunk_bytes is None:
            return mastercard_xml._read_xml_tree(body, **kw)
        streamed = functools.partial(xmlsafe.stream_untrusted_xml, chunk_bytes=chunk_bytes)
        with mock.patch.object(mastercard_xml, "stream_untrusted_xml", streamed), \
                as_body(body, spool) as read:
            return parse_mastercard_xml(read, **kw)
    except ParseError as exc:
        return str(exc)


@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
@FUZZ
@given(st.one_of(mutated_xml(), st.sampled_from(XML_SEEDS)),
       st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(STREAM_SNIPPETS)), max_size=2),
       st.integers(0, 10_000), st.sampled_from([1, 2, 5, 16, 64, 1024]))
def test_xml_streamed_reads_as_the_whole_tree(spool: bool, body: bytes, insertions: list[tuple[int, bytes]],
                                              cut: int, chunk_bytes: int) -> None:
    """Whatever the body and wherever the chunks end, the streamed listing parse gives the same
    observations, rejections and ParseError messages as reading the whole tree; from memory, and from
    a spool file read back a few bytes at a time."""
    for position, snippet in insertions:
        at = position % (len(body) + 1)
        body = body[:at] + snippet + body[at:]
    for candidate in (body, body[:cut % (len(body) + 1)]):
        assert _xml_outcome(candidate, chunk_bytes, spool) == _xml_outcome(candidate, None)


# --- the streamed JSON listing reads as the whole body ---------------------------------------------------


def _json_outcome(body: bytes, chunk_bytes: int | None, spool: bool = False) -> object:
    """What parse_mastercard_json makes of `body`, streamed in chunks of `chunk_bytes` whatever its size
    (from a spool file when `spool`), or (None) read whole: the result, or the ParseError's message."""
    kw: dict[str, Any] = {"source": "mc", "observed_at": T0, "correlation_id": "c"}
    threshold = 0 if chunk_bytes is not None else 1 << 62
    with mock.patch.object(mastercard_json, "_STREAM_JSON_BYTES", threshold), \
            mock.patch.object(json_listing, "CHUNK_BYTES", chunk_bytes or 1), as_body(body, spool) as read:
        try:
            return parse_mastercard_json(read, **kw)
        except ParseError as exc:
            return str(exc)


JSON_SNIPPETS = [*HOSTILE_SNIPPETS, b",", b"]", b"[]", b" ", b"\n", b"1", b"\xc3\xa9", b"\xe2\x82\xac",
                 b'"x":1,', b'{"account-balances":[]}', b"\xef\xbb\xbf"]


@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
@FUZZ
@given(st.one_of(mutated_json(), st.sampled_from(JSON_SEEDS)),
       st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(JSON_SNIPPETS)), max_size=2),
       st.integers(0, 10_000), st.sampled_from([1, 2, 3, 5, 16, 64, 1024]))
def test_json_streamed_reads_as_the_whole_body(spool: bool, body: bytes, insertions: list[tuple[int, bytes]],
                                               cut: int, chunk_bytes: int) -> None:
    """Whatever the body and wherever the chunks end (inside a number, a string, a UTF-8 character),
    the streamed listing parse gives the same observations, rejections and ParseError messages as the
    whole body read at once; from memory, and from a spool file read back a few bytes at a time."""
    for position, snippet in insertions:
        at = position % (len(body) + 1)
        body = body[:at] + snippet + body[at:]
    for candidate in (body, body[:cut % (len(body) + 1)]):
        assert _json_outcome(candidate, chunk_bytes, spool) == _json_outcome(candidate, None)
