"""myPOS PSD2 balance bodies: JSON numbers read exactly as Decimals, each balance type on its own, and
malformed bodies or entries refused with a message naming the field.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.types import Balance, BalanceKey, Observation
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.mypos import describe_error_body, parse_mypos_json

SEED = Path(__file__).resolve().parent.parent / "watcher" / "sandbox" / "seed" / "mypos_balances.json"
T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
KW: dict[str, Any] = {"source": "cards", "account_number": "50553500971", "observed_at": T0,
                      "correlation_id": "a552babc-7081-44e7-9361-61eb17e0bfd9"}
PAN = (("maskedPan", "453754******2234"),)


def body_with(*entries: str) -> bytes:
    """A body with the given balance entries, written as raw JSON text (so numbers stay as typed)."""
    return ('{"maskedPan": "453754******2234", "balances": [' + ", ".join(entries) + "]}").encode()


def entry(amount: str, currency: str = '"EUR"', kind: str = '"available"') -> str:
    return f'{{"amount": {amount}, "currency": {currency}, "balanceType": {kind}}}'


def card(amount: str, kind: str = "available", currency: str = "EUR") -> Observation:
    return Observation(
        key=BalanceKey("cards", "50553500971", kind),
        provider="mypos-psd2",
        balance=Balance(Decimal(amount), currency, None, kind),
        observed_at=T0,
        correlation_id=KW["correlation_id"],
        extra=PAN,
    )


def test_seed_sample_is_read_exactly() -> None:
    """The documented sample byte for byte: 120.260 is Decimal("120.260"), scale kept, never a float."""
    result = parse_mypos_json(SEED.read_bytes(), **KW)
    assert result == ParsedBalances((card("120.260"),))
    amount = result.observations[0].balance.amount
    assert isinstance(amount, Decimal)
    assert str(amount) == "120.260"
    assert result.observations[0].balance.signed_amount == Decimal("120.260")


def test_each_balance_type_is_tracked_separately() -> None:
    """Several balance types of one card are several keys of one account."""
    body = body_with(entry("120.260"), entry("-15.5", kind='"closingBooked"'), entry("7", kind='"expected"'))
    result = parse_mypos_json(body, **KW)
    assert result == ParsedBalances((card("120.260"), card("-15.5", "closingBooked"), card("7", "expected")))
    assert {o.key.event_key for o in result.observations} == {"cards:50553500971"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("120", "120"),
        ("0", "0"),
        ("-0.01", "-0.01"),
        ("-250", "-250"),
        ("1e3", "1000"),
        ("1.5E2", "150"),
        ("0.1", "0.1"),
        ("123456789012345678.123456789012345678", "123456789012345678.123456789012345678"),
        ('"12.30"', "12.30"),
        ('"-7"', "-7"),
    ],
)
def test_amounts_are_exact_and_signed(raw: str, expected: str) -> None:
    """Integers, signed and exponent numbers, and amounts given as strings all become exact Decimals."""
    (only,) = parse_mypos_json(body_with(entry(raw)), **KW).observations
    assert str(only.balance.amount) == expected
    assert only.balance.state is None
    assert only.balance.balance_type == "available"


def test_berlin_group_balance_amount_is_accepted() -> None:
    """The standard Berlin Group shape, amount and currency inside balanceAmount, reads the same."""
    body = (b'{"balances": [{"balanceAmount": {"amount": "120.260", "currency": "EUR"},'
            b' "balanceType": "available"}]}')
    (only,) = parse_mypos_json(body, **KW).observations
    assert only.balance == Balance(Decimal("120.260"), "EUR", None, "available")
    assert only.extra == ()


def test_bad_entry_is_rejected_without_losing_the_others() -> None:
    """A NaN-like or malformed entry is reported by path; the good balances are kept."""
    body = body_with(entry("1"), entry('"NaN"', kind='"expected"'), entry("2", kind='"closingBooked"'))
    result = parse_mypos_json(body, **KW)
    assert result.observations == (card("1"), card("2", "closingBooked"))
    assert result.rejected == ("balances[1] (expected).amount: 'NaN' is not a plain decimal amount "
                               "(at most 18 integer and 18 fraction digits)",)


def test_duplicate_balance_type_keeps_the_first() -> None:
    """Two entries with one balance type: the first is kept, the second reported."""
    result = parse_mypos_json(body_with(entry("1"), entry("2")), **KW)
    assert result.observations == (card("1"),)
    (reason,) = result.rejected
    assert "balances[1]" in reason
    assert "first at balances[0]" in reason


def test_empty_balances_is_zero_observations() -> None:
    """A card account without balances is a valid, empty answer."""
    assert parse_mypos_json(b'{"maskedPan": "x", "balances": []}', **KW) == ParsedBalances(())


MALFORMED = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\x80\x81", "not valid JSON"),
    (b"[]", "top level: expected a JSON object, found an array"),
    (b'{"maskedPan": "x"}', "balances: missing"),
    (b'{"balances": "120.26"}', "balances: expected an array, found '120.26'"),
    (b'{"balances": null}', "balances: expected an array, found null"),
    (body_with("NaN"), "NaN is not a number JSON allows"),
    (body_with(entry("NaN")), "NaN is not a number JSON allows"),
    (body_with(entry("Infinity")), "Infinity is not a number JSON allows"),
    (body_with(entry("-Infinity")), "-Infinity is not a number JSON allows"),
    (body_with(entry("1e400")), r"amount: 1E\+400 has more than 18 integer digits"),
    (body_with(entry("1e-400")), "amount: 1E-400 has more than 18 fraction digits"),
    (body_with(entry("1" * 19)), "amount: 1111111111111111111 has more than 18 integer digits"),
    (body_with(entry("0." + "1" * 19)), "has more than 18 fraction digits"),
    (body_with(entry('"abc"')), "amount: 'abc' is not a plain decimal amount"),
    (body_with(entry('""')), "amount: is empty"),
    (body_with(entry('"1e400"')), "amount: '1e400' is not a plain decimal amount"),
    (body_with(entry("true")), "amount: expected an amount, found true"),
    (body_with(entry("null")), "amount: expected an amount, found null"),
    (body_with('{"currency": "EUR", "balanceType": "available"}'),
     r"balances\[0\] \(available\)\.amount: missing"),
    (body_with(entry("1", currency='"eur"')), "currency: expected a currency code .* found 'eur'"),
    (body_with(entry("1", currency="978")), "currency: .* found 978"),
    (body_with('{"amount": 1, "balanceType": "available"}'), "currency: .* found null"),
    (body_with(entry("1", kind='""')), r"balances\[0\]\.balanceType: expected a type .* found ''"),
    (body_with(entry("1", kind="null")), r"balances\[0\]\.balanceType: .* found null"),
    (body_with(entry("1", kind='"has space"')), r"balanceType: .* found 'has space'"),
    (body_with("1"), r"balances\[0\]: expected a balance object, found 1"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_malformed_body_is_a_parse_error(body: bytes, message: str) -> None:
    """Each malformed body (or a body whose only entry is bad) is a ParseError naming the field."""
    with pytest.raises(ParseError, match=message):
        parse_mypos_json(body, **KW)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"tppMessages":[{"category":"ERROR","code":"CONSENT_INVALID","text":"The consent is invalid"}]}',
         "CONSENT_INVALID: The consent is invalid"),
        (b'{"tppMessages":[{"category":"ERROR","code":"TOKEN_EXPIRED"},{"code":"X","text":"y"}]}',
         "TOKEN_EXPIRED; X: y"),
        (b'{"tppMessages":{"code":"FORMAT_ERROR","text":"bad\\nheader"}}', "FORMAT_ERROR: bad header"),
        (b'{"tppMessages":[{"code":"FORMAT_ERROR","path":"X-Request-ID","text":"not a UUID"}]}',
         "FORMAT_ERROR: not a UUID (at X-Request-ID)"),
        # problem+json (NextGenPSD2 1.3.x), with additional errors
        (b'{"type":"https://berlin-group.org/problems/CONSENT_EXPIRED","title":"Consent expired",'
         b'"code":"CONSENT_EXPIRED","additionalErrors":[{"code":"X","detail":"also"}]}',
         "CONSENT_EXPIRED: Consent expired; X: also"),
        # OAuth2 (RFC 6749 5.2, RFC 6750 3.1)
        (b'{"error":"invalid_token","error_description":"The access token expired"}',
         "invalid_token: The access token expired"),
        (b'{"error": "x"}', "x"),
        (b"<html>502</html>", ""),
        (b'{"message": "x"}', ""),
        (b'{"tppMessages": "x"}', ""),
        (None, ""),
    ],
)
def test_berlin_group_errors_are_described(body: bytes | None, expected: str) -> None:
    """tppMessages, problem+json and OAuth2 errors give `code: text` per message; anything else gives ""."""
    assert describe_error_body(body) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_parse_error(body: bytes) -> None:
    """No byte string makes the parser raise anything but ParseError."""
    with contextlib.suppress(ParseError):
        parse_mypos_json(body, **KW)
    describe_error_body(body)


_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10),
              st.sampled_from(["available", "EUR", "-1.5", "NaN", "1e400"])),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["amount", "currency", "balanceType", "balanceAmount"]), inner,
                      max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["maskedPan", "balances"]), _values | st.lists(_values, max_size=4)))
def test_structured_junk_raises_only_parse_error(doc: dict[str, Any]) -> None:
    """Near-miss documents either parse into finite, sane observations or raise ParseError."""
    try:
        result = parse_mypos_json(json.dumps(doc).encode(), **KW)
    except ParseError:
        return
    for item in result.observations:
        assert isinstance(item.balance.amount, Decimal)
        assert item.balance.amount.is_finite()
        assert item.balance.state is None
        assert item.key.balance_type == item.balance.balance_type
