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
from hypothesis import given, settings
from hypothesis import strategies as st

import watcher.sources.json_listing as json_listing
import watcher.sources.mastercard_parse as mastercard
from rules.types import Balance, BalanceKey, Observation
from watcher.sources import values
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.mastercard_parse import describe_error_body, parse_mastercard_json, parse_mastercard_xml
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
    monkeypatch.setattr(mastercard, "parse_timestamp", spy)
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


def _xml_outcome(read: Any, body: bytes) -> object:
    try:
        return read(body, **KW)
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
def test_xml_streamed_listing_keeps_the_whole_tree_verdicts(body: bytes, message: str | None) -> None:
    """The listing is read as it is parsed, yet says what the whole tree said: a fault of the document
    anywhere comes before a wrong root or unexpected children, and a <balance> under the root makes the
    root the account."""
    streamed = _xml_outcome(parse_mastercard_xml, body)
    assert streamed == _xml_outcome(mastercard._read_xml_tree, body)
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
    for read in (parse_mastercard_xml, mastercard._read_xml_tree):
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


def _json_outcome(body: bytes, *, streamed: bool, chunk_bytes: int = 1024 * 1024) -> object:
    threshold = 0 if streamed else 1 << 62
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mastercard, "_STREAM_JSON_BYTES", threshold)
        patch.setattr(json_listing, "CHUNK_BYTES", chunk_bytes)
        try:
            return parse_mastercard_json(body, **KW)
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
def test_json_streamed_listing_reads_as_the_whole_body(body: bytes, chunk_bytes: int) -> None:
    """The listing is read one item at a time, yet gives what the whole body gives: the observations,
    the rejections, and for a body that is not a valid listing the same ParseError, word for word."""
    streamed = _json_outcome(body, streamed=True, chunk_bytes=chunk_bytes)
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
    keys = mastercard.ListingKeys()
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
