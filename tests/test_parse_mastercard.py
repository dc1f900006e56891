"""Mastercard Send account-balance bodies, JSON and XML: the documented samples byte for byte, both key
spellings, partial listings, and a wide table of malformed bodies that must each be a clean ParseError.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pattern_reads import count_direct_reads, read_xml
from sandbox_accounts import AMOUNT_TEXTS, sandbox_account, varied_accounts
from spooling import as_body

import watcher.sources.json_listing as json_listing
import watcher.sources.mastercard_accounts as mastercard_accounts
import watcher.sources.mastercard_json as mastercard_json
import watcher.sources.mastercard_xml as mastercard_xml
from rules.types import Balance, BalanceKey, KnownBalance, Observation
from watcher.sandbox.mastercard import AccountBalanceView, render_xml
from watcher.sources import values, xml_pattern
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.mastercard import describe_error_body, parse_mastercard_json, parse_mastercard_xml
from watcher.sources.provider_errors import read_mastercard_error
from watcher.sources.values import collector_paused, read_amount

SEED = Path(__file__).resolve().parent.parent / "watcher" / "sandbox" / "seed"
T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
KW: dict[str, Any] = {"source": "mc", "observed_at": T0, "correlation_id": "corr-1"}
TOKEN = "non_card_token:suZz18lhAFvx9LQa6U2VMxs0BJLAD_TXVzYvaqTsjcG_AImuzmv"
PARSERS = [parse_mastercard_json, parse_mastercard_xml]


def seed(name: str) -> bytes:
    return (SEED / name).read_bytes()


def single_json(**balance: object) -> bytes:
    """The single-account sample with balance fields replaced (None removes a field)."""
    doc = json.loads(seed("mc_account_balance.json"))
    target = doc["account_balances"]["account_balance"]["balance"]
    for name, value in balance.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return json.dumps(doc).encode()


def obs(token_tail: str, amount: str, stamp: str, created: str, description: str) -> Observation:
    return Observation(
        key=BalanceKey("mc", TOKEN + token_tail, ""),
        provider="mastercard-send",
        balance=Balance(Decimal(amount), "GBP", "IN_CREDIT"),
        observed_at=T0,
        correlation_id="corr-1",
        description=description,
        provider_timestamp=datetime.fromisoformat(stamp),
        provider_timestamp_text=stamp.replace("+00:00", "Z"),
        extra=(("created_date", created),),
    )


LISTING = (
    obs("NXQ", "1000", "2012-05-18T10:19:22+00:00", "2012-06-05T11:47:51Z", "This is our main account"),
    obs("abc", "13000", "2013-05-18T10:19:22+00:00", "2013-06-05T11:47:44Z", "This is one of the account"),
    obs("def", "5000", "2014-05-18T10:19:22+00:00", "2014-06-05T11:47:36Z", "This is one of the account"),
)


@pytest.mark.parametrize("name", ["mc_account_balance.json", "mc_account_balance.xml"])
def test_single_account_sample(name: str) -> None:
    """The documented single-account sample, JSON or XML, is one exact observation; the invalid
    created_date (80 seconds) is kept as text, the valid balance_timestamp is parsed to aware UTC."""
    parse = parse_mastercard_json if name.endswith(".json") else parse_mastercard_xml
    result = parse(seed(name), **KW)
    assert result == ParsedBalances(
        (obs("NXQ", "1000", "2018-05-18T10:19:22+00:00", "2017-06-05T11:47:80Z", "This is our main account"),)
    )
    (only,) = result.observations
    assert only.balance.amount == Decimal("1000")
    assert str(only.balance.amount) == "1000"
    assert only.provider_timestamp is not None
    assert only.provider_timestamp.tzinfo is UTC
    assert dict(only.extra)["created_date"] == "2017-06-05T11:47:80Z"


@pytest.mark.parametrize("name", ["mc_account_balances.json", "mc_account_balances.xml"])
def test_listing_sample(name: str) -> None:
    """The documented partner listing, JSON or XML, is the same three observations in order."""
    parse = parse_mastercard_json if name.endswith(".json") else parse_mastercard_xml
    assert parse(seed(name), **KW) == ParsedBalances(LISTING)


def test_json_and_xml_samples_agree() -> None:
    """For each endpoint, the JSON and XML samples normalize to equal observations."""
    for stem in ("mc_account_balance", "mc_account_balances"):
        from_json = parse_mastercard_json(seed(f"{stem}.json"), **KW)
        assert from_json == parse_mastercard_xml(seed(f"{stem}.xml"), **KW)


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("mc_account_balance.json", b'"account_balances"', b'"account-balances"'),
        ("mc_account_balances.json", b'"account-balances"', b'"account_balances"'),
        ("mc_account_balance.xml", b"account_balances>", b"account-balances>"),
        ("mc_account_balances.xml", b"account-balances>", b"account_balances>"),
    ],
)
def test_other_spelling_of_the_top_level_key(name: str, old: bytes, new: bytes) -> None:
    """Either spelling of the top-level key (or XML root) reads the same as the sample's own."""
    parse = parse_mastercard_json if name.endswith(".json") else parse_mastercard_xml
    body = seed(name)
    assert body.count(old) >= 1
    assert parse(body.replace(old, new), **KW) == parse(body, **KW)


def test_listing_shapes_are_interchangeable() -> None:
    """A listing holding one object instead of an array, or account_balance holding an array,
    reads like the plain shapes."""
    listing = json.loads(seed("mc_account_balances.json"))["account-balances"]
    one = json.loads(seed("mc_account_balance.json"))["account_balances"]["account_balance"]
    expected_one = parse_mastercard_json(seed("mc_account_balance.json"), **KW)
    as_object = json.dumps({"account-balances": one}).encode()
    assert parse_mastercard_json(as_object, **KW) == expected_one
    nested = json.dumps({"account_balances": {"account_balance": listing}}).encode()
    assert parse_mastercard_json(nested, **KW) == ParsedBalances(LISTING)
    # XML: the account's fields directly under the root.
    inner = seed("mc_account_balance.xml").replace(b"<account_balance>", b"")
    inner = inner.replace(b"</account_balance>", b"")
    assert parse_mastercard_xml(inner, **KW) == expected_one


def test_in_debit_is_a_negative_balance() -> None:
    """IN_DEBIT keeps the magnitude in amount and the sign in state."""
    for parse, body in [
        (parse_mastercard_json, single_json(state="IN_DEBIT", amount="250.75")),
        (parse_mastercard_xml, seed("mc_account_balance.xml")
            .replace(b"IN_CREDIT", b"IN_DEBIT").replace(b">1000<", b">250.75<")),
    ]:
        (only,) = parse(body, **KW).observations
        assert only.balance.state == "IN_DEBIT"
        assert only.balance.amount == Decimal("250.75")
        assert only.balance.signed_amount == Decimal("-250.75")


@pytest.mark.parametrize("amount", ["1000.50", "0", "0.00", "123456789012345678.123456789012345678"])
def test_amounts_are_exact(amount: str) -> None:
    """Amount strings become Decimals with their exact digits and scale."""
    (only,) = parse_mastercard_json(single_json(amount=amount), **KW).observations
    assert str(only.balance.amount) == amount


@pytest.mark.parametrize(
    ("stamp", "parsed"),
    [
        ("2018-05-18T10:19:22Z", datetime(2018, 5, 18, 10, 19, 22, tzinfo=UTC)),
        ("2018-05-18T12:19:22.5+02:00", datetime(2018, 5, 18, 10, 19, 22, 500000, tzinfo=UTC)),
        ("2018-05-18T10:19:80Z", None),
        ("2018-05-18T10:19:22", None),  # no offset: not RFC 3339, the moment is unknown
        ("2018-13-18T10:19:22Z", None),
        ("yesterday", None),
    ],
)
def test_balance_timestamp_parsed_or_kept_as_text(stamp: str, parsed: datetime | None) -> None:
    """A valid RFC 3339 balance_timestamp is parsed to UTC; any other is kept as text, never fatal."""
    doc = json.loads(seed("mc_account_balance.json"))
    doc["account_balances"]["account_balance"]["balance_timestamp"] = stamp
    (only,) = parse_mastercard_json(json.dumps(doc).encode(), **KW).observations
    assert only.provider_timestamp == parsed
    assert only.provider_timestamp_text == stamp


def test_optional_fields_may_be_absent() -> None:
    """Without description, balance_timestamp and created_date the account still parses."""
    doc = {"account_balances": {"account_balance": {
        "balance": {"amount": "1", "currency": "EUR", "state": "IN_CREDIT"}, "non_card_token": "t:1"}}}
    (only,) = parse_mastercard_json(json.dumps(doc).encode(), **KW).observations
    assert (only.description, only.provider_timestamp, only.provider_timestamp_text, only.extra) == (
        None, None, None, ())


@pytest.mark.parametrize(
    "body",
    [b'{"account-balances": []}', b'{"account_balances": null}', b"<account-balances/>",
     b"<account_balances>\n</account_balances>"],
)
def test_empty_listing_is_zero_observations(body: bytes) -> None:
    """A partner without accounts is an empty, valid answer."""
    parse = parse_mastercard_xml if body.startswith(b"<") else parse_mastercard_json
    assert parse(body, **KW) == ParsedBalances(())


def _listing_with_bad_second(bad: dict[str, Any]) -> bytes:
    doc = json.loads(seed("mc_account_balances.json"))
    doc["account-balances"][1] = bad
    return json.dumps(doc).encode()


def test_partial_listing_keeps_the_good_accounts() -> None:
    """One bad account in a listing is reported by path and token; the others are kept."""
    doc = json.loads(seed("mc_account_balances.json"))
    doc["account-balances"][1]["balance"]["amount"] = "abc"
    result = parse_mastercard_json(json.dumps(doc).encode(), **KW)
    assert result.observations == (LISTING[0], LISTING[2])
    (reason,) = result.rejected
    assert reason.startswith("account-balances[1] (" + TOKEN + "abc).balance.amount: 'abc'")


def test_partial_xml_listing_keeps_the_good_accounts() -> None:
    """In XML too: a bad state in the second account loses only that account."""
    body = seed("mc_account_balances.xml")
    at = body.index(b"IN_CREDIT", body.index(b"13000"))
    result = parse_mastercard_xml(body[:at] + b"SIDEWAYS" + body[at + 9:], **KW)
    assert result.observations == (LISTING[0], LISTING[2])
    (reason,) = result.rejected
    assert "account-balances.account_balance[1]" in reason
    assert "balance.state: expected IN_CREDIT or IN_DEBIT, found 'SIDEWAYS'" in reason


def test_duplicate_token_keeps_the_first() -> None:
    """A token listed twice: the first entry is kept, the second reported as a duplicate."""
    doc = json.loads(seed("mc_account_balances.json"))
    doc["account-balances"][2]["non_card_token"] = doc["account-balances"][0]["non_card_token"]
    result = parse_mastercard_json(json.dumps(doc).encode(), **KW)
    assert result.observations == LISTING[:2]
    (reason,) = result.rejected
    assert reason.startswith("account-balances[2]: account")
    assert "first at account-balances[0]" in reason


def test_listing_with_no_usable_account_is_a_parse_error() -> None:
    """When every account is bad the body is a ParseError naming each reason, not an empty success."""
    doc = {"account-balances": [{"non_card_token": "a"}, {"non_card_token": "b", "balance": {}}]}
    with pytest.raises(ParseError, match=r"no usable balance: account-balances\[0\] \(a\)\.balance: .*"
                                         r"account-balances\[1\] \(b\)\.balance\.amount: missing"):
        parse_mastercard_json(json.dumps(doc).encode(), **KW)


MALFORMED_JSON = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"<account_balances/>", "not valid JSON"),
    (b"[]", "top level: expected a JSON object, found an array"),
    (b"null", "top level: expected a JSON object, found null"),
    (b'{"balances": []}', "expected account_balances or account-balances, found 'balances'"),
    (b"{}", "expected account_balances or account-balances, found nothing"),
    (b'{"account_balances": {}, "account-balances": []}', "both account_balances and account-balances"),
    (b'{"account_balances": "1000"}', "account_balances: expected an array or an object, found '1000'"),
    (b'{"account-balances": [1]}', r"account-balances\[0\]: expected an account object, found 1"),
    (b'{"account_balances": {"account_balance": {"balance": {}}}}', "non_card_token: missing or empty"),
    (b'{"account_balances": {"account_balance": {"non_card_token": ""}}}',
     "non_card_token: missing or empty"),
    (b'{"account_balances": {"account_balance": {"non_card_token": "t"}}}',
     r"\(t\)\.balance: expected an object"),
    (single_json(amount=None), r"balance\.amount: missing"),
    (single_json(amount="abc"), r"balance\.amount: 'abc' is not a plain decimal amount"),
    (single_json(amount="NaN"), r"balance\.amount: 'NaN' is not a plain decimal amount"),
    (single_json(amount="Infinity"), r"balance\.amount: 'Infinity'"),
    (single_json(amount="1e400"), r"balance\.amount: '1e400' is not a plain decimal amount"),
    (single_json(amount=""), r"balance\.amount: is empty"),
    (single_json(amount="  "), r"balance\.amount: is empty"),
    (single_json(amount="-5"), r"balance\.amount: '-5' is negative; the sign is carried by state"),
    (single_json(amount="1,000"), r"balance\.amount: '1,000' is not"),
    (single_json(amount="1_000"), r"balance\.amount: '1_000' is not"),
    (single_json(amount="0x10"), r"balance\.amount: '0x10' is not"),
    (single_json(amount="1" * 19), r"balance\.amount: '1111111111111111111' is not"),
    (single_json(amount="1." + "1" * 19), r"balance\.amount: '1\.1111111111111111111' is not"),
    (single_json(amount=True), r"balance\.amount: expected an amount, found true"),
    (single_json(amount=[]), r"balance\.amount: expected an amount, found an array"),
    (seed("mc_account_balance.json").replace(b'"1000"', b"NaN"), "NaN is not a number JSON allows"),
    (seed("mc_account_balance.json").replace(b'"1000"', b"-Infinity"), "-Infinity is not a number"),
    (seed("mc_account_balance.json").replace(b'"1000"', b"1e400"), r"1E\+400 has more than 18 integer"),
    (seed("mc_account_balance.json").replace(b'"1000"', b"1e-400"), r"1E-400 has more than 18 fraction"),
    (seed("mc_account_balance.json").replace(b'"1000"', b"-1000"), r"-1000 is negative"),
    (single_json(state="CREDIT"), r"balance\.state: expected IN_CREDIT or IN_DEBIT, found 'CREDIT'"),
    (single_json(state="in_credit"), r"balance\.state: expected IN_CREDIT or IN_DEBIT, found 'in_credit'"),
    (single_json(state=None), r"balance\.state: expected IN_CREDIT or IN_DEBIT, found null"),
    (single_json(currency="gbp"), r"balance\.currency: expected a currency code .* found 'gbp'"),
    (single_json(currency="GB"), r"balance\.currency: .* found 'GB'"),
    (single_json(currency="GBPX"), r"balance\.currency: .* found 'GBPX'"),
    (single_json(currency=826), r"balance\.currency: .* found 826"),
    (single_json(currency=None), r"balance\.currency: .* found null"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED_JSON)
def test_malformed_json_is_a_parse_error(body: bytes, message: str) -> None:
    """Each malformed JSON body is a ParseError whose message names the field at fault."""
    with pytest.raises(ParseError, match=message):
        parse_mastercard_json(body, **KW)


def _xml(**replace: str) -> bytes:
    body = seed("mc_account_balance.xml").decode()
    for old, new in replace.items():
        assert old in body
        body = body.replace(old, new)
    return body.encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<account_balances><account_balance><account_description>&lol3;</account_description></account_balance>
</account_balances>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><account_balances>&e;</account_balances>"""

MALFORMED_XML = [
    (b"", "not well-formed XML"),
    (b"<account_balances>", "not well-formed XML"),
    (b'{"account_balances": {}}', "not well-formed XML"),
    (b"\xff\xfe<\x00a", "not well-formed XML"),
    (b'<?xml version="1.0" encoding="no-such-encoding"?><a/>', "XML"),
    (BILLION_LAUGHS, r"XML refused: it contains a document type declaration \(<!DOCTYPE\)"),
    (EXTERNAL_ENTITY, r"XML refused: it contains a document type declaration \(<!DOCTYPE\)"),
    (b'<!DOCTYPE account_balances SYSTEM "http://example.com/x.dtd"><account_balances/>', "XML refused"),
    (b"<balances/>", "root element: expected account_balances or account-balances, found 'balances'"),
    (b"<account_balances><foo/></account_balances>", "expected <account_balance> elements, found <foo>"),
    (b"<account_balances><account_balance/></account_balances>", "expected an account object, found ''"),
    (_xml(**{"<amount>1000</amount>": ""}), r"balance\.amount: missing"),
    (_xml(**{"<amount>1000</amount>": "<amount/>"}), r"balance\.amount: is empty"),
    (_xml(**{">1000<": ">abc<"}), r"balance\.amount: 'abc' is not a plain decimal amount"),
    (_xml(**{">1000<": ">NaN<"}), r"balance\.amount: 'NaN'"),
    (_xml(**{">1000<": ">1e400<"}), r"balance\.amount: '1e400'"),
    (_xml(**{">1000<": ">-1000<"}), r"balance\.amount: '-1000' is negative"),
    (_xml(**{"<amount>1000</amount>": "<amount>1</amount><amount>2</amount>"}),
     r"balance\.amount: appears more than once"),
    (_xml(**{">IN_CREDIT<": ">OVERDRAWN<"}), r"balance\.state: .* found 'OVERDRAWN'"),
    (_xml(**{">GBP<": ">£££<"}), r"balance\.currency: .* found '£££'"),
    (_xml(**{"<balance>": "<balance><x><y><z><w><v><u><t><s><r/></s></t></u></v></w></z></y></x>"}),
     "nested too deeply"),
    (_xml(**{"<non_card_token>": "<non_card_token><a/>"}), "non_card_token: missing or empty"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED_XML)
def test_malformed_xml_is_a_parse_error(body: bytes, message: str) -> None:
    """Each malformed XML body, DTDs and entity bombs included, is a ParseError naming what is wrong."""
    with pytest.raises(ParseError, match=message):
        parse_mastercard_xml(body, **KW)


def test_xml_namespaces_and_comments_are_ignored() -> None:
    """A default namespace and comments do not change what an XML body means."""
    body = seed("mc_account_balance.xml").replace(
        b"<account_balances>", b'<account_balances xmlns="urn:mc"><!-- note -->'
    )
    assert parse_mastercard_xml(body, **KW) == parse_mastercard_xml(seed("mc_account_balance.xml"), **KW)


MC_ERRORS = [
    # Recoverable as a string, Details null
    (b'{"Errors":{"Error":[{"Source":"OAuth.Signature","ReasonCode":"AUTHENTICATION_FAILED",'
     b'"Description":"OAuth signature is invalid","Recoverable":"false","Details":null}]}}',
     "AUTHENTICATION_FAILED", "AUTHENTICATION_FAILED: OAuth signature is invalid (source OAuth.Signature, "
     "not recoverable)"),
    # Recoverable as a boolean, Error one object, Details an object
    (b'{"Errors":{"Error":{"Source":"x","ReasonCode":"SYSTEM_ERROR","Description":"try later",'
     b'"Recoverable":true,"Details":{"a":1}}}}',
     "SYSTEM_ERROR", "SYSTEM_ERROR: try later (source x, recoverable, details: a=1)"),
    # Details as Mastercard's Name/Value list
    (b'{"Errors":{"Error":[{"ReasonCode":"DECLINE","Description":"Declined","Recoverable":"False",'
     b'"Details":{"Detail":[{"Name":"ErrorDetailCode","Value":"092000"},{"Name":"Field","Value":"amount"}]}}]}}',
     "DECLINE", "DECLINE: Declined (not recoverable, details: ErrorDetailCode=092000; Field=amount)"),
    # Details as text, several errors
    (b'{"Errors":{"Error":[{"ReasonCode":"A","Description":"one","Details":"see docs"},'
     b'{"ReasonCode":"B","Description":"two"}]}}', "A", "A: one (details: see docs); B: two"),
    # lower-case keys, as some gateways write them
    (b'{"errors":{"error":[{"reasonCode":"INVALID","description":"bad"}]}}', "INVALID", "INVALID: bad"),
    # XML, Details as text
    (b"<Errors><Error><Source>x</Source><ReasonCode>INVALID_INPUT</ReasonCode><Description>bad\ntoken"
     b"</Description><Recoverable>false</Recoverable><Details>text</Details></Error></Errors>",
     "INVALID_INPUT", "INVALID_INPUT: bad token (source x, not recoverable, details: text)"),
    # XML, Details empty and with children, two errors
    (b"<Errors><Error><ReasonCode>A</ReasonCode><Description>one</Description><Details/></Error>"
     b"<Error><ReasonCode>B</ReasonCode><Description>two</Description><Recoverable>true</Recoverable>"
     b"<Details><Detail><Name>Code</Name><Value>7</Value></Detail></Details></Error></Errors>",
     "A", "A: one; B: two (recoverable, details: Code=7)"),
    # a code without a description
    (b'{"Errors":{"Error":{"ReasonCode":"ONLY_CODE"}}}', "ONLY_CODE", "ONLY_CODE"),
]


@pytest.mark.parametrize(("body", "code", "expected"), MC_ERRORS)
def test_error_bodies_are_described(body: bytes, code: str, expected: str) -> None:
    """Mastercard's error format in its shapes (Recoverable a string or a boolean; Details null, text or
    an object; JSON or XML) gives the first ReasonCode and one line with every error."""
    error = read_mastercard_error(body)
    assert error is not None
    assert (error.reason_code, error.text) == (code, expected)
    assert describe_error_body(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Bad gateway</body></html>", b'{"message": "nope"}', b"", None, b"[]", b'{"Errors": 1}',
     b'{"Errors": {"Error": [1, "x", null]}}', BILLION_LAUGHS],
)
def test_other_bodies_are_not_errors(body: bytes | None) -> None:
    """Anything but Mastercard's error format (an entity bomb included) gives no error and "" ."""
    assert read_mastercard_error(body) is None
    assert describe_error_body(body) == ""


def test_error_line_is_bounded_and_single_line() -> None:
    """A hostile error body cannot make a huge or multi-line log entry."""
    errors = [{"ReasonCode": f"C{i}", "Description": "x\n" * 500, "Details": {"k": "v" * 1000}}
              for i in range(50)]
    error = read_mastercard_error(json.dumps({"Errors": {"Error": errors}}).encode())
    assert error is not None
    assert len(error.text) <= 503
    assert "\n" not in error.text
    assert len(error.codes) == 50


def test_no_xml_is_parsed_outside_xmlsafe() -> None:
    """Every XML parse in the code goes through watcher/sources/xmlsafe.py (which refuses DTDs first): no
    other module imports a stdlib or lxml parser."""
    root = Path(__file__).resolve().parent.parent
    unsafe = re.compile(r"^\s*(from|import)\s+(lxml|xml\.dom|xml\.sax(?!\.saxutils)|xml\.parsers)|"
                        r"ElementTree\s+import\s+.*\b(fromstring|parse|XMLParser|iterparse)\b|"
                        r"^\s*import\s+xml\.etree|^\s*from\s+xml\.etree\s+import", re.MULTILINE)
    for text in ("import xml.etree.ElementTree as ET", "from xml.etree import ElementTree",
                 "from xml.etree.ElementTree import Element, fromstring", "from lxml import etree",
                 "from xml.dom import minidom", "import xml.sax"):
        assert unsafe.search(text), text  # the check would catch each way in
    files = [path for folder in ("watcher", "rules") for path in (root / folder).rglob("*.py")]
    offenders = [str(p.relative_to(root)) for p in files if unsafe.search(p.read_text(encoding="utf-8"))]
    assert offenders == ["watcher/sources/xmlsafe.py"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_parse_error(body: bytes) -> None:
    """No byte string makes a parser raise anything but ParseError."""
    for parse in PARSERS:
        with contextlib.suppress(ParseError):
            parse(body, **KW)
    describe_error_body(body)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=12),
    st.sampled_from(["1000", "-1", "1e400", "NaN", "IN_CREDIT", "IN_DEBIT", "GBP", "0.10"]),
    st.sampled_from(["2018-05-18T10:19:22Z", "2017-06-05T11:47:80Z"]),
)
_json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_fields = ["amount", "currency", "state", "balance", "non_card_token", "balance_timestamp", "created_date",
           "account_description", "account_balance"]
_accounts = st.recursive(
    st.dictionaries(st.sampled_from(_fields), _json_values, max_size=6),
    lambda inner: st.dictionaries(st.sampled_from(_fields), inner | _json_values, max_size=6),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["account_balances", "account-balances"]),
       st.one_of(_accounts, st.lists(_accounts, max_size=4), _json_values))
def test_structured_junk_raises_only_parse_error(top: str, value: Any) -> None:
    """Near-miss JSON documents either parse into sane observations or raise ParseError."""
    try:
        result = parse_mastercard_json(json.dumps({top: value}).encode(), **KW)
    except ParseError:
        return
    for item in result.observations:
        assert isinstance(item.balance.amount, Decimal)
        assert item.balance.amount.is_finite()
        assert item.balance.amount >= 0
        assert re.fullmatch("[A-Z]{3}", item.balance.currency)
        assert item.balance.state in ("IN_CREDIT", "IN_DEBIT")


# --- a listing's repeated values, the collector pause ---------------------------------------------------


def _listing(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"account-balances": entries}).encode()


def _entry(i: int, stamp: object, currency: object = "GBP", amount: object = "10.00") -> dict[str, Any]:
    return {"non_card_token": f"t{i}", "balance_timestamp": stamp,
            "balance": {"amount": amount, "currency": currency, "state": "IN_CREDIT"}}


def test_repeated_timestamps_and_currencies_are_read_like_the_first() -> None:
    """A listing repeats timestamps and currencies (they are parsed once per call): every entry still gets
    its own right value, an invalid repeated timestamp stays None with its text, and a bad currency after
    good ones is still refused, with its path."""
    stamps = ["2018-05-18T10:19:22Z", "2017-06-05T11:47:80Z", "2018-05-18T10:19:22Z",
              "2018-05-18T11:19:22+01:00", "2017-06-05T11:47:80Z", 17, None]
    body = _listing([_entry(i, s) for i, s in enumerate(stamps)]
                    + [_entry(7, None, "gbp"), _entry(8, None, ["GBP"]), _entry(9, None, {"GBP": 1})])
    result = parse_mastercard_json(body, **KW)
    parsed = [(o.provider_timestamp, o.provider_timestamp_text) for o in result.observations]
    at = datetime(2018, 5, 18, 10, 19, 22, tzinfo=UTC)
    assert parsed == [(at, stamps[0]), (None, stamps[1]), (at, stamps[0]), (at, stamps[3]),
                      (None, stamps[1]), (None, "17"), (None, None)]
    assert [r.split(":")[0] for r in result.rejected] == [
        "account-balances[7] (t7).balance.currency", "account-balances[8] (t8).balance.currency",
        "account-balances[9] (t9).balance.currency",
    ]


@pytest.mark.parametrize(
    "amount", ["1000", "0.10", " 12.5 ", "12.50", Decimal("7"), "1" * 18 + "." + "9" * 18]
)
def test_amount_shortcut_reads_like_read_amount(amount: object) -> None:
    """The listing's shortcut for plain decimal strings gives exactly what read_amount gives."""
    body = _listing([_entry(0, None, amount=amount if isinstance(amount, str) else int(str(amount)))])
    (only,) = parse_mastercard_json(body, **KW).observations
    expected = read_amount(amount, "x", signed=False)
    assert only.balance.amount == expected
    assert str(only.balance.amount) == str(expected)


def test_large_bodies_pause_the_collector_and_restore_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing over PAUSE_GC_BYTES is parsed with the cyclic collector paused; afterwards it is enabled
    again, also when the parse fails; a collector that was disabled before stays disabled."""
    seen: list[bool] = []
    real = values.parse_timestamp

    def spy(text: str) -> datetime | None:
        seen.append(gc.isenabled())
        return real(text)

    padding = " " * values.PAUSE_GC_BYTES
    big = _listing([_entry(0, "2018-05-18T10:19:22Z")])[:-1] + padding.encode() + b"}"
    small = _listing([_entry(0, "2018-05-18T10:19:22Z")])
    monkeypatch.setattr(mastercard_accounts, "parse_timestamp", spy)
    assert gc.isenabled()
    parse_mastercard_json(big, **KW)
    parse_mastercard_json(small, **KW)
    assert seen == [False, True]
    assert gc.isenabled()
    with pytest.raises(ParseError):
        parse_mastercard_json(b"[" + padding.encode(), **KW)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_mastercard_json(big, **KW)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_collector_pause_is_counted_across_threads() -> None:
    """Overlapping pauses (parses in several threads) enable the collector again only when the last one
    ends."""
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
        with collector_paused(False):
            assert not gc.isenabled()
    assert gc.isenabled()


def _listing_xml(count: int) -> bytes:
    """The documented listing's first account, `count` times, each with its own token."""
    body = seed("mc_account_balances.xml").decode()
    close = "</account_balance>"
    start, end = body.index("<account_balance>"), body.index(close) + len(close)
    account = body[start:end]
    accounts = "".join(account.replace("NXQ</non", f"NXQ{i}</non") for i in range(count))
    return (body[:start] + accounts + body[body.rindex(close) + len(close):]).encode()


def _xml_outcome(read: Any, body: bytes, spool: bool = False) -> object:
    try:
        with as_body(body, spool) as given:
            return read(given, **KW)
    except ParseError as exc:
        return str(exc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<wrong><account_balance/></wrong><junk>", "not well-formed XML: junk after document element"),
        (b"<wrong><account_balance/></wrong>", "root element: expected account_balances"),
        (b"<account-balances><x/><account_balance/><y/></account-balances>&",
         r"not well-formed XML: not well-formed \(invalid token\): line 1, column 63"),
        (b"<account-balances><y/><account_balance/><x/><y/></account-balances>",
         "account-balances: expected <account_balance> elements, found <x>, <y>"),
        (_listing_xml(3)[:-30], "not well-formed XML"),
        (_listing_xml(3).replace(b"</account-balances>", b"<balance/></account-balances>"),
         r"no usable balance: account-balances\.account_balance: appears more than once"),
        (re.sub(rb"</?account_balance>", b"", seed("mc_account_balance.xml")), None),
        (_listing_xml(3), None),
    ],
)
@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
def test_xml_streamed_listing_keeps_the_whole_tree_verdicts(
    body: bytes, message: str | None, spool: bool
) -> None:
    """The listing is read as it is parsed, yet says what the whole tree said: a fault of the document
    anywhere comes before a wrong root or unexpected children, and a <balance> under the root makes the
    root the account; from memory or from a spool file."""
    streamed = _xml_outcome(parse_mastercard_xml, body, spool)
    assert streamed == _xml_outcome(mastercard_xml._read_xml_tree, body)
    if message is None:
        assert isinstance(streamed, ParsedBalances)
        assert streamed.observations
    else:
        assert isinstance(streamed, str)
        assert re.match(message, streamed)


def test_xml_listing_is_streamed_not_a_whole_tree() -> None:
    """A long listing never is a whole tree: the parse peaks at well under half of the whole-tree
    reader's memory, and gives the same observations."""
    import tracemalloc

    body = _listing_xml(5000)
    peaks = []
    results = []
    for read in (parse_mastercard_xml, mastercard_xml._read_xml_tree):
        gc.collect()
        tracemalloc.start()
        try:
            results.append(read(body, **KW))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert len(results[0].observations) == 5000
    assert results[0] == results[1]
    assert peaks[0] < peaks[1] / 2, peaks


# --- the streamed JSON listing ----------------------------------------------------------------------------


def _listing_json(count: int, indent: int | None = 3, **extra: object) -> bytes:
    """The documented listing's first account, `count` times, each with its own token."""
    doc = json.loads(seed("mc_account_balances.json"))
    first = doc["account-balances"][0]
    accounts = [{**first, "non_card_token": f"{first['non_card_token']}{i}", **extra} for i in range(count)]
    return json.dumps({"account-balances": accounts}, indent=indent, ensure_ascii=False).encode()


def _json_outcome(
    body: bytes, *, streamed: bool, chunk_bytes: int = 1024 * 1024, spool: bool = False
) -> object:
    threshold = 0 if streamed else 1 << 62
    with pytest.MonkeyPatch.context() as patch, as_body(body, spool) as given:
        patch.setattr(mastercard_json, "_STREAM_JSON_BYTES", threshold)
        patch.setattr(json_listing, "CHUNK_BYTES", chunk_bytes)
        try:
            return parse_mastercard_json(given, **KW)
        except ParseError as exc:
            return str(exc)


_LISTING = _listing_json(40)
_DUPLICATED = _LISTING.replace(b"NXQ7", b"NXQ3")


@pytest.mark.parametrize(
    "body",
    [
        _LISTING,
        _listing_json(40, indent=None),
        _listing_json(40, account_description="Comptes \u00e9trangers \u20ac \U0001f4b6"),
        _listing_json(40, balance={"amount": 1234.5, "currency": "GBP", "state": "IN_CREDIT"}),
        _listing_json(40, balance={"amount": 12345678901234567, "currency": "GBP", "state": "IN_DEBIT"}),
        _listing_json(0),
        b'{"account-balances": []}',
        b' \n{ "account_balances" :\t[ ] } \r\n',
        _DUPLICATED,  # a duplicate token: the message names where the first one was
        _LISTING.replace(b'"GBP"', b'"gbp"', 1),  # the first entry rejected
        _LISTING.replace(b'"GBP"', b'"gbp"'),  # every entry rejected: a ParseError
        _LISTING + b"x",  # extra data
        _LISTING + b"{}",
        _LISTING[:-3],  # cut
        _LISTING.replace(b"}\n   ]", b"},\n   ]"),  # a trailing comma
        _LISTING.replace(b"]\n}", b'],\n"account-balances": []}'),  # the key twice: the last one counts
        _LISTING.replace(b"]\n}", b'],\n"other": 1}'),  # another key after the array
        b'{"other": 1, ' + _LISTING[1:],  # another key before
        _LISTING.replace(b"1000", b"NaN", 1),
        _LISTING.replace(b'"1000"', b"1e400", 1),
        _LISTING.replace(b"This is", b"This\x00is", 1),  # a control character in a string
        _LISTING.replace(b"This is", b"This \xff is", 1),  # not UTF-8
        _LISTING.replace(b"This is", b"This \xed\xa0\x80 is", 1),  # a surrogate, passed as json.loads does
        b"\xef\xbb\xbf" + _LISTING,  # a BOM: read whole
        _LISTING.decode().encode("utf-16"),
        b'{"account-balances": [' + b"[" * 5000 + b"]" * 5000 + b"]}",  # nested too deeply
        b'{"account-balances": {"account_balance": []}}',  # other shapes are read whole
        b'{"account-balances": null}',
        b'["account-balances"]',
        b"",
    ],
)
@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1024 * 1024])
@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
def test_json_streamed_listing_reads_as_the_whole_body(body: bytes, chunk_bytes: int, spool: bool) -> None:
    """The listing is read one item at a time, yet gives what the whole body gives: the observations,
    the rejections, and for a body that is not a valid listing the same ParseError, word for word;
    from memory or from a spool file."""
    streamed = _json_outcome(body, streamed=True, chunk_bytes=chunk_bytes, spool=spool)
    assert streamed == _json_outcome(body, streamed=False)


def test_json_duplicate_names_the_first() -> None:
    parsed = _json_outcome(_DUPLICATED, streamed=True)
    assert isinstance(parsed, ParsedBalances)
    assert len(parsed.observations) == 39
    assert parsed.rejected[0].startswith("account-balances[7]: account ")
    assert parsed.rejected[0].endswith("appears again (first at account-balances[3]); the first is kept")


def test_repeated_values_are_shared_between_observations() -> None:
    """A listing's currencies, states, timestamp texts and creation dates are one object each, not a copy
    per account (the state of 100,000 accounts keeps them)."""
    parsed = parse_mastercard_json(_listing_json(50), **KW)
    first, *others = parsed.observations
    for other in others:
        assert other.balance.currency is first.balance.currency
        assert other.balance.state is first.balance.state
        assert other.provider_timestamp_text is first.provider_timestamp_text
        assert other.extra is first.extra


def test_json_listing_is_streamed_not_a_whole_tree() -> None:
    """A long JSON listing is never a whole tree, nor the text of the whole body: what the parse needs
    beyond its result (and a chunk of text) is well under a third of what the whole read needs, and the
    observations are the same."""
    import tracemalloc

    body = _listing_json(20_000)
    overheads = []
    results = []
    for streamed in (True, False):
        gc.collect()
        tracemalloc.start()
        try:
            results.append(_json_outcome(body, streamed=streamed))
            kept, peak = tracemalloc.get_traced_memory()
            overheads.append(peak - kept)
        finally:
            tracemalloc.stop()
    assert isinstance(results[0], ParsedBalances)
    assert len(results[0].observations) == 20_000
    assert results[0] == results[1]
    assert overheads[0] < overheads[1] / 3, overheads


@pytest.mark.parametrize("parse", PARSERS)
def test_a_listing_takes_the_keys_of_the_previous_one(parse: Any) -> None:
    """With the source's ListingKeys, a listing's observations have the very key objects of the previous
    listing (equal either way); a body that does not parse leaves them as they were."""
    body = seed("mc_account_balances.json" if parse is parse_mastercard_json else "mc_account_balances.xml")
    keys = mastercard_accounts.ListingKeys()
    first = parse(body, keys=keys, **KW)
    again = parse(body, keys=keys, **KW)
    assert again == first == parse(body, **KW)
    assert all(a.key is b.key for a, b in zip(first.observations, again.observations, strict=True))
    kept = keys.latest
    assert set(kept) == {o.key.account for o in first.observations}
    with pytest.raises(ParseError):
        parse(b"{" if parse is parse_mastercard_json else b"<", keys=keys, **KW)
    assert keys.latest is kept
    other = parse(body, keys=keys, **{**KW, "source": "other"})
    assert all(o.key.source == "other" for o in other.observations)



@pytest.mark.parametrize("parse", PARSERS)
def test_an_account_polled_on_its_own_takes_its_fixed_key(parse: Any) -> None:
    """With the keys of a source's configured accounts (ListingKeys.of_accounts), every answer about one
    of them has that very key object, and token string; an answer about another account, or of another
    source, gets a key of its own; and no parse adds to or replaces the fixed keys."""
    body = _accounts_body(parse, [("t1", "1.00", "IN_CREDIT", "Main")])
    keys = mastercard_accounts.ListingKeys.of_accounts(KW["source"], ["t1", "t2"])
    fixed = dict(keys.latest)
    for _ in range(2):
        parsed = parse(body, keys=keys, **KW)
        assert parsed == parse(body, **KW)
        assert parsed.observations[0].key is fixed["t1"]
    other = _accounts_body(parse, [("t3", "1.00", "IN_CREDIT", "Main")])
    assert parse(other, keys=keys, **KW).observations[0].key == BalanceKey(KW["source"], "t3")
    elsewhere = parse(body, keys=keys, **{**KW, "source": "other"})
    assert elsewhere.observations[0].key == BalanceKey("other", "t1")
    assert keys.latest == fixed
    assert all(keys.latest[token] is key for token, key in fixed.items())


@pytest.mark.parametrize("parse", PARSERS)
def test_a_currency_code_is_one_string_object_across_parses(parse: Any) -> None:
    """Two parses of different bodies (as two accounts polled one by one are) hand out the very same
    currency string: 100,000 known balances hold one "GBP", not a copy each."""
    first = parse(_accounts_body(parse, [("t1", "1.00", "IN_CREDIT", "Main")]), **KW)
    second = parse(_accounts_body(parse, [("t2", "2.00", "IN_DEBIT", "Other")]), **KW)
    assert first.observations[0].balance.currency == "GBP"
    assert first.observations[0].balance.currency is second.observations[0].balance.currency

# --- the XML listing's direct path for plain accounts ----------------------------------------------------


def _sandbox_listing(*views: AccountBalanceView) -> bytes:
    """A listing as the sandbox renders it (the daemon's bench and tests read the same bytes)."""
    return render_xml(views, listing=True)


def _second_changed(old: str, new: str) -> bytes:
    """The sandbox's listing of two plain accounts, the second one's first `old` replaced by `new`. The
    first account is the first of its currency (read the general way), so the second is the one the
    direct path may take."""
    body = _sandbox_listing(sandbox_account(1), sandbox_account(2)).decode()
    at = body.index("<account_balance>", body.index("</account_balance>"))
    assert old in body[at:], old
    return (body[:at] + body[at:].replace(old, new, 1)).encode()


def _xml_read(
    body: bytes, *, direct: bool, keys: mastercard_accounts.ListingKeys | None = None
) -> tuple[object, int]:
    """parse_mastercard_xml's outcome as a comparable text (the result's repr, so that 1000 and 1000.00
    differ, or the ParseError's message), and how many accounts the direct path read; `direct=False`
    turns the direct path off, leaving the general one (dict shape, then _account) for every account.
    The pattern (xml_pattern) is off: the body is parsed as XML."""
    with pytest.MonkeyPatch.context() as patch:
        taken = count_direct_reads(patch, mastercard_xml, "_plain_xml_account", direct=direct)
        outcome, _ = read_xml(body, pattern=False, keys=keys, **KW)
    return outcome, taken()


_ACCOUNT_OPEN = "<account_balance>"
_BALANCE = ("<balance>\n            <amount>23998.19</amount>\n            <currency>GBP</currency>\n"
            "            <state>IN_CREDIT</state>\n        </balance>")
_TOKEN2 = "non_card_token:sbx-P-0002"

# (what, old, new, read by the direct path: True, False, or None when either is right)
DIRECT_TABLE: list[tuple[str, str, str, bool | None]] = [
    ("plain", "<", "<", True),
    ("IN_DEBIT", ">IN_CREDIT<", ">IN_DEBIT<", True),
    ("whitespace around every value", ">23998.19<", "> \n\t23998.19 \r\n<", True),
    ("whitespace around the token", f">{_TOKEN2}<", f">\n  {_TOKEN2}\t<", True),
    ("whitespace around state and currency", ">IN_CREDIT<", "> IN_CREDIT\n<", True),
    ("currency padded", ">GBP<", "> GBP <", True),
    ("attributes", _ACCOUNT_OPEN, '<account_balance id="7" xmlns:q="urn:q" q:x="y">', True),
    ("attribute on a leaf", "<amount>", '<amount currency="EUR" sign="-">', True),
    ("comment between children", "<balance>", "<!-- c --><balance><!-- d -->", True),
    ("comment inside a value", ">23998.19<", ">239<!-- c -->98.19<", True),
    ("processing instruction inside", "<balance>", "<?pi x?><balance>", True),
    ("CDATA", ">23998.19<", "><![CDATA[23998.19]]><", True),
    ("CDATA token", f">{_TOKEN2}<", f"><![CDATA[{_TOKEN2}]]><", True),
    ("character references", ">23998.19<", ">&#50;3998.19<", True),
    ("text between children", "<balance>", "stray text<balance>", True),
    ("non-ASCII description", ">Main prefunding<", ">Comptes \u00e9trangers \u20ac \U0001f4b6<", True),
    ("escaped description", ">Main prefunding<", ">a &lt;b&gt; &amp; c<", True),
    ("empty description", "<account_description>Main prefunding</account_description>",
     "<account_description/>", True),
    ("empty timestamp", ">2026-12-02T12:00:00Z<", "><", True),
    ("empty creation date", ">2018-01-10T09:30:00Z<", "> <", True),
    ("timestamp with 80 seconds", ">2026-12-02T12:00:00Z<", ">2018-05-18T10:19:80Z<", True),
    ("timestamp not a time", ">2026-12-02T12:00:00Z<", ">yesterday<", True),
    ("timestamp with offset", ">2026-12-02T12:00:00Z<", ">2026-12-02t13:00:00.5+01:00<", True),
    ("amount empty", "<amount>23998.19</amount>", "<amount/>", False),
    ("amount blank", ">23998.19<", ">  <", False),
    ("amount missing", "<amount>23998.19</amount>", "", False),
    ("amount twice", "<amount>23998.19</amount>", "<amount>1</amount><amount>2</amount>", False),
    ("amount with a child", ">23998.19<", "><x/>23998.19<", False),
    ("currency lower case", ">GBP<", ">gbp<", False),
    ("currency empty", ">GBP<", "><", False),
    ("currency not seen before", ">GBP<", ">EUR<", False),
    ("currency with a child", ">GBP<", "><c>GBP</c><", False),
    ("currency missing", "<currency>GBP</currency>", "", False),
    ("state lower case", ">IN_CREDIT<", ">in_credit<", False),
    ("state other", ">IN_CREDIT<", ">OVERDRAWN<", False),
    ("state empty", ">IN_CREDIT<", "><", False),
    ("state missing", "<state>IN_CREDIT</state>", "", False),
    ("state twice", "<state>IN_CREDIT</state>", "<state>IN_CREDIT</state><state>IN_DEBIT</state>", False),
    ("balance children reordered", "<amount>23998.19</amount>", "", False),  # with the line below
    ("balance with an extra child", "<state>IN_CREDIT</state>", "<state>IN_CREDIT</state><x>1</x>", False),
    ("balance a leaf", _BALANCE, "<balance>23998.19</balance>", False),
    ("balance empty", _BALANCE, "<balance/>", False),
    ("balance missing", _BALANCE, "", False),
    ("balance twice", _BALANCE, _BALANCE + _BALANCE, False),
    ("token empty", f">{_TOKEN2}<", "><", False),
    ("token blank", f">{_TOKEN2}<", "> \n <", False),
    ("token missing", f"<non_card_token>{_TOKEN2}</non_card_token>", "", False),
    ("token twice", f"<non_card_token>{_TOKEN2}</non_card_token>",
     f"<non_card_token>{_TOKEN2}</non_card_token><non_card_token>x</non_card_token>", False),
    ("token with a child", f">{_TOKEN2}<", f"><a/>{_TOKEN2}<", False),
    ("token the first account's", _TOKEN2, "non_card_token:sbx-P-0001", True),
    ("token first", "<account_description>",
     f"<non_card_token>{_TOKEN2}</non_card_token><account_description>", False),
    ("description missing", "<account_description>Main prefunding</account_description>", "", False),
    ("description with a child", ">Main prefunding<", "><b>Main</b> prefunding<", False),
    ("description twice", "</account_description>", "</account_description><account_description/>", False),
    ("timestamp missing", "<balance_timestamp>2026-12-02T12:00:00Z</balance_timestamp>", "", False),
    ("timestamp with a child", ">2026-12-02T12:00:00Z<", "><t>2026-12-02T12:00:00Z</t><", False),
    ("creation date missing", "<created_date>2018-01-10T09:30:00Z</created_date>", "", False),
    ("creation date with a child", ">2018-01-10T09:30:00Z<", "><d/><", False),
    ("extra child", "<balance_timestamp>", "<note>x</note><balance_timestamp>", False),
    ("extra child, deeply nested", "<balance_timestamp>",
     "<a><b><c><d><e><f><g><h><i><j/></i></h></g></f></e></d></c></b></a><balance_timestamp>", False),
    ("namespaced children", "<amount>23998.19</amount>", '<m:amount xmlns:m="urn:m">23998.19</m:amount>',
     False),
    ("default namespace", _ACCOUNT_OPEN, '<account_balance xmlns="urn:mc">', False),
    ("no children", _ACCOUNT_OPEN, "<account_balance>text only</account_balance><account_balance>", None),
    ("other entry spelling", _ACCOUNT_OPEN, "<account-balance>", None),
    ("balance renamed", _BALANCE, _BALANCE.replace("balance>", "bal>"), False),
    ("balance with a namespace", _BALANCE, _BALANCE.replace("<balance>", '<balance xmlns="urn:b">'), False),
]
_LEAVES = {"account_description": "Main prefunding", "amount": "23998.19", "currency": "GBP",
           "state": "IN_CREDIT", "balance_timestamp": "2026-12-02T12:00:00Z",
           "created_date": "2018-01-10T09:30:00Z", "non_card_token": _TOKEN2}
for _tag, _text in _LEAVES.items():
    _leaf = f"<{_tag}>{_text}</{_tag}>"
    DIRECT_TABLE += [
        (f"{_tag} padded", _leaf, f"<{_tag}>\n {_text}\t </{_tag}>", True),
        (f"{_tag} renamed", _leaf, f"<{_tag}_x>{_text}</{_tag}_x>", False),
        (f"{_tag} with a child", _leaf, f"<{_tag}>{_text}<c/></{_tag}>", False),
        (f"{_tag} namespaced", _leaf, f'<{_tag} xmlns="urn:n">{_text}</{_tag}>', False),
    ]


DIRECT_TABLE += [(f"amount {what}", ">23998.19<", f">{text}<", direct) for what, text, direct in AMOUNT_TEXTS]


def _table_body(what: str, old: str, new: str) -> bytes:
    body = _second_changed(old, new)
    if what == "balance children reordered":
        body = body.replace(b"<state>IN_CREDIT</state>\n        </balance>",
                            b"<state>IN_CREDIT</state><amount>23998.19</amount>\n        </balance>", 1)
    if what == "other entry spelling":
        body = body.replace(b"</account_balance>\n</account", b"</account-balance>\n</account")
    return body


@pytest.mark.parametrize(("what", "old", "new", "direct"), DIRECT_TABLE, ids=[row[0] for row in DIRECT_TABLE])
def test_xml_direct_path_reads_as_the_general_one(what: str, old: str, new: str, direct: bool | None) -> None:
    """Each variation of a sandbox-rendered account (whitespace, attributes, comments, CDATA, namespaces,
    missing, extra, repeated or reordered children, empty or odd values, IN_DEBIT, invalid timestamps)
    gives the same observations, rejections and ParseError messages with the direct path as without it;
    and the direct path reads exactly the variations it is meant to (the plain layout with acceptable
    values), leaving every other one to the general path."""
    body = _table_body(what, old, new)
    with_direct, taken = _xml_read(body, direct=True)
    without, none_taken = _xml_read(body, direct=False)
    assert with_direct == without
    assert none_taken == 0
    if direct is not None:
        assert taken == (1 if direct else 0), with_direct


# The rows of DIRECT_TABLE whose body the pattern reads (xml_pattern): the documented layout exactly,
# whatever the values; every other row's body is parsed as XML.
PATTERN_TAKES = {
    "plain", "IN_DEBIT", "whitespace around the token", "whitespace around state and currency",
    "currency padded", "non-ASCII description", "empty timestamp", "empty creation date",
    "timestamp with 80 seconds", "timestamp not a time", "timestamp with offset", "amount with leading zeros",
    "amount zero", "amount at the bounds", "amount too long", "amount too fine", "amount exponent",
    "amount negative", "amount plus", "amount trailing dot", "amount leading dot", "amount NaN",
    "amount full-width digits", "amount with a comma", "amount blank", "currency lower case",
    "currency empty", "currency not seen before", "state lower case", "state other", "state empty",
    "token empty", "token blank", "token the first account's", *(f"{tag} padded" for tag in _LEAVES),
}


def test_pattern_table_names_rows_of_the_table() -> None:
    """PATTERN_TAKES names rows that exist (a renamed row would silently leave it)."""
    assert {row[0] for row in DIRECT_TABLE} >= PATTERN_TAKES


@pytest.mark.parametrize("spool", [False, True], ids=["bytes", "spooled"])
@pytest.mark.parametrize(("what", "old", "new", "direct"), DIRECT_TABLE, ids=[row[0] for row in DIRECT_TABLE])
def test_xml_pattern_reads_as_the_parser(
    what: str, old: str, new: str, direct: bool | None, spool: bool
) -> None:
    """Each variation of a sandbox-rendered account gives the same observations, rejections and ParseError
    messages when the pattern may read the body as when the XML parser reads it with the general path
    only; and the pattern reads exactly the bodies in the documented layout (whatever their values),
    leaving every other one, whole, to the parser. Also for a spooled body read a few bytes at a time."""
    body = _table_body(what, old, new)
    expected = _xml_read(body, direct=False)[0]
    with as_body(body, spool) as data, pytest.MonkeyPatch.context() as patch:
        patch.setattr(xml_pattern, "WINDOW_BYTES", 5)
        outcome, took = read_xml(data, pattern=True, **KW)
    assert outcome == expected
    assert took == (what in PATTERN_TAKES)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5).flatmap(
    lambda tokens: st.tuples(*(_xml_account(t) for t in tokens))), st.sampled_from(["GBP", "EUR"]),
    st.sampled_from([3, 64, 4096]))
def test_xml_pattern_reads_as_the_parser_property(
    accounts: tuple[str, ...], primed: str, window: int
) -> None:
    """Whatever mix of plain and changed accounts a listing holds, reading it with the pattern allowed
    gives the same observations, rejections and ParseError messages as the XML parser with the general
    path only, whatever the pattern's window."""
    first = f"<account_balance>{_BALANCE.replace('GBP', primed)}<non_card_token>p</non_card_token>" \
            "</account_balance>"
    body = f"<account-balances>{first}{''.join(accounts)}</account-balances>".encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(xml_pattern, "WINDOW_BYTES", window)
        outcome, took = read_xml(body, pattern=True, **KW)
    assert outcome == _xml_read(body, direct=False)[0]
    event(f"read by the pattern: {took}")


def test_xml_direct_path_takes_a_sandbox_listing() -> None:
    """A sandbox listing (both states, several currencies, repeated values) is read by the direct path for
    every account but the first of each currency, with the same result as the general path and as the
    whole-tree reader; repeated values and the source's previous keys are shared the same way."""
    views = varied_accounts(300)
    body = _sandbox_listing(*views)
    keys = mastercard_accounts.ListingKeys()
    first, taken = _xml_read(body, direct=True, keys=keys)
    assert taken == 300 - 3
    assert first == _xml_read(body, direct=False)[0] == repr(mastercard_xml._read_xml_tree(body, **KW))
    parsed = parse_mastercard_xml(body, keys=keys, **KW)
    assert repr(parsed) == first
    assert all(o.key is keys.latest[o.key.account] for o in parsed.observations)
    assert all(o.balance.state in ("IN_CREDIT", "IN_DEBIT") for o in parsed.observations)
    assert len({id(o.balance.state) for o in parsed.observations}) == 2
    assert len({id(o.balance.currency) for o in parsed.observations}) == 3
    assert len({id(o.provider_timestamp_text) for o in parsed.observations}) == 5
    assert len({id(o.provider_timestamp) for o in parsed.observations}) == 5
    assert len({id(o.extra) for o in parsed.observations}) == 7


_ODD_TEXTS = ["", " ", "0", "1000", " 12.50 ", "1e3", "-1", "NaN", "GBP", "gbp", "EUR", "IN_CREDIT",
              "IN_DEBIT", "in_debit", "2018-05-18T10:19:22Z", "2018-05-18T10:19:80Z", "x", "\u20ac", "&amp;"]
_FIELDS = ("account_description", "balance", "balance_timestamp", "created_date", "non_card_token")
_BALANCE_FIELDS = ("amount", "currency", "state")
_PLAIN = {"account_description": "d", "amount": "10.50", "currency": "GBP", "state": "IN_CREDIT",
          "balance_timestamp": "2018-05-18T10:19:22Z", "created_date": "2012-06-05T11:47:51Z"}


@st.composite
def _xml_leaf(draw: st.DrawFn, tag: str, plain: str) -> str:
    """One leaf: usually plain, else an odd text, CDATA, a child element, attributes or a namespace;
    sometimes missing or repeated."""
    if draw(st.integers(0, 7)):  # most leaves as the sandbox writes them, so that whole accounts are
        return f"<{tag}>{plain}</{tag}>"  # plain often enough for the direct path to read them
    text = draw(st.one_of(st.just(plain), st.just(f" \n{plain}\t"), st.sampled_from(_ODD_TEXTS),
                          st.text(st.sampled_from("0123456789.-+ \n\tEINGBP_CRDTe"), max_size=6)))
    form = draw(st.sampled_from(["plain", "plain", "plain", "cdata", "child", "attribute", "namespace",
                                 "missing", "twice"]))
    if form == "missing":
        return ""
    if form == "cdata":
        return f"<{tag}><![CDATA[{text}]]></{tag}>"
    if form == "child":
        return f"<{tag}><x/>{text}</{tag}>"
    if form == "attribute":
        return f'<{tag} a="1">{text}</{tag}>'
    if form == "namespace":
        return f'<n:{tag} xmlns:n="urn:n">{text}</n:{tag}>'
    leaf = f"<{tag}>{text}</{tag}>"
    return leaf + leaf if form == "twice" else leaf


@st.composite
def _xml_account(draw: st.DrawFn, token: str) -> str:
    """An account element close to the sandbox's, each part possibly changed (see _xml_leaf), the
    children possibly shuffled or joined by an extra one."""
    inner = [draw(_xml_leaf(tag, _PLAIN[tag])) for tag in _BALANCE_FIELDS]
    if draw(st.integers(0, 9)) == 0:
        inner = draw(st.permutations(inner))
    parts = {tag: draw(_xml_leaf(tag, token if tag == "non_card_token" else _PLAIN.get(tag, "")))
             for tag in _FIELDS}
    parts["balance"] = "<balance>" + "".join(inner) + "</balance>"
    if draw(st.integers(0, 9)) == 0:
        parts["balance"] = draw(st.sampled_from(["", "<balance/>", "<balance>1</balance>", "<bal/>"]))
    children = [parts[tag] for tag in _FIELDS]
    if draw(st.integers(0, 9)) == 0:
        children = draw(st.permutations(children))
    if draw(st.integers(0, 7)) == 0:
        children.insert(draw(st.integers(0, len(children))), draw(st.sampled_from(
            ["<extra/>", "<!-- c -->", "text", "<?pi x?>", "<balance/>"])))
    return "<account_balance>" + "\n  ".join(children) + "</account_balance>"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5).flatmap(
    lambda tokens: st.tuples(*(_xml_account(t) for t in tokens))), st.sampled_from(["GBP", "EUR"]))
def test_xml_direct_path_reads_as_the_general_one_property(accounts: tuple[str, ...], primed: str) -> None:
    """Whatever mix of plain and changed accounts a listing holds (repeated tokens included), the direct
    path gives the same observations, rejections and ParseError messages as the general path. A plain
    account comes first, so that later ones find their currency already seen."""
    first = f"<account_balance>{_BALANCE.replace('GBP', primed)}<non_card_token>p</non_card_token>" \
            "</account_balance>"
    body = f"<account-balances>{first}{''.join(accounts)}</account-balances>".encode()
    with_direct, taken = _xml_read(body, direct=True)
    assert with_direct == _xml_read(body, direct=False)[0]
    event(f"accounts read directly: {taken}")


# --- sharing the known balances' objects ------------------------------------------------------------------


def _accounts_body(parse: Any, accounts: list[tuple[str, str, str, str]]) -> bytes:
    """A listing of (token, amount, state, description), in the format `parse` reads."""
    if parse is parse_mastercard_json:
        return _listing([
            {"non_card_token": token, "account_description": description, "created_date": "2026-01-01",
             "balance_timestamp": "2026-11-22T04:25:14Z",
             "balance": {"amount": amount, "currency": "GBP", "state": state}}
            for token, amount, state, description in accounts
        ])
    # The documented layout: after the first account, each is read by the direct path.
    entries = "".join(
        f"<account_balance><account_description>{description}</account_description>"
        f"<balance><amount>{amount}</amount><currency>GBP</currency><state>{state}</state></balance>"
        "<balance_timestamp>2026-11-22T04:25:14Z</balance_timestamp><created_date>2026-01-01</created_date>"
        f"<non_card_token>{token}</non_card_token></account_balance>"
        for token, amount, state, description in accounts
    )
    return f"<account-balances>{entries}</account-balances>".encode()


@pytest.mark.parametrize("parse", PARSERS)
def test_unchanged_accounts_take_the_known_objects(parse: Any) -> None:
    """With a look-up of the known balances, an account whose amount (digits and exponent alike), state,
    currency and description are the known ones takes the known Balance and description objects; any
    difference (even 100.0 for 100.00, or another state) gives a new Balance of its own text. The
    observations are equal to those of a parse without the look-up, every time."""
    first_body = _accounts_body(parse, [
        ("t1", "100.00", "IN_CREDIT", "Main"), ("t2", "100.00", "IN_CREDIT", "Main"),
        ("t3", "5.00", "IN_CREDIT", "Fees"), ("t4", "7.00", "IN_CREDIT", "Other"),
    ])
    keys = mastercard_accounts.ListingKeys()
    first = parse(first_body, keys=keys, **KW)
    known = {
        o.key: KnownBalance(o.balance, T0, "corr-0", 1, o.description) for o in first.observations
    }
    keys.known = known.get
    second_body = _accounts_body(parse, [
        ("t1", "100.00", "IN_CREDIT", "Main"), ("t2", "100.0", "IN_CREDIT", "Main"),
        ("t3", "5.00", "IN_DEBIT", "Fees"), ("t4", "7.00", "IN_CREDIT", "Renamed"),
        ("t5", "1.00", "IN_CREDIT", "Main"),
    ])
    second = parse(second_body, keys=keys, **KW)
    assert second == parse(second_body, **KW)
    by_token = {o.key.account: o for o in second.observations}
    was = {o.key.account: o for o in first.observations}
    assert by_token["t1"].balance is was["t1"].balance
    assert by_token["t1"].description is was["t1"].description
    assert by_token["t2"].balance is not was["t2"].balance
    assert str(by_token["t2"].balance.amount) == "100.0"
    assert by_token["t3"].balance is not was["t3"].balance
    assert by_token["t3"].balance.state == "IN_DEBIT"
    assert by_token["t4"].balance is was["t4"].balance
    assert by_token["t4"].description == "Renamed"
    assert by_token["t5"].description == "Main"
    if parse is parse_mastercard_xml:  # the direct path (all accounts but the first) shares as the general
        direct, taken = _xml_read(second_body, direct=True, keys=keys)
        assert taken == 4
        assert direct == _xml_read(second_body, direct=False, keys=keys)[0]
        again = parse(second_body, keys=keys, **KW)
        assert [o.balance for o in again.observations][3] is by_token["t4"].balance


def test_known_balances_of_another_source_are_not_looked_up() -> None:
    """The look-up is asked only for the keys of the source's previous listing of the same source name."""
    body = _accounts_body(parse_mastercard_json, [("t1", "1.00", "IN_CREDIT", "Main")])
    keys = mastercard_accounts.ListingKeys()
    parse_mastercard_json(body, keys=keys, **KW)
    asked: list[BalanceKey] = []

    def lookup(key: BalanceKey) -> KnownBalance | None:
        asked.append(key)
        return None

    keys.known = lookup
    parse_mastercard_json(body, keys=keys, **{**KW, "source": "other"})
    assert asked == []
    parse_mastercard_json(body, keys=keys, **{**KW, "source": "other"})
    assert asked == [BalanceKey("other", "t1")]


@pytest.mark.parametrize("parse", PARSERS)
def test_a_listings_index_of_accounts_is_its_observations_accounts(parse: Any) -> None:
    """The source's index of a listing's accounts (ListingKeys.latest, which the poller takes as the
    accounts the listing answered for) holds exactly the accounts of its observations, in the order
    first answered, each with an equal key: an entry rejected for a bad amount is not in it, a token
    listed twice is in it once; after a listing that fails to parse it is the previous one's."""
    accounts = [("t1", "1.00", "IN_CREDIT", "Main"), ("t2", "bad", "IN_CREDIT", "Main"),
                ("t3", "2.00", "IN_DEBIT", "Fees"), ("t1", "3.00", "IN_CREDIT", "Main"),
                ("t4", "4.00", "IN_CREDIT", "Other")]
    keys = mastercard_accounts.ListingKeys()
    parsed = parse(_accounts_body(parse, accounts), keys=keys, **KW)
    assert [o.key.account for o in parsed.observations] == ["t1", "t3", "t4"]
    assert list(keys.latest) == ["t1", "t3", "t4"]
    assert all(keys.latest[o.key.account] == o.key for o in parsed.observations)
    before = keys.latest
    with pytest.raises(ParseError):
        parse(_accounts_body(parse, [("t9", "bad", "IN_CREDIT", "Main")]), keys=keys, **KW)
    assert keys.latest is before
