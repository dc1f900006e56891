"""The direct path of a JSON account (mastercard_json._plain_json_account): an account object whose seven
values are strings is read without _account's per-value checks, for exactly the result _account gives.

Every test reads the same bytes twice, with the direct path and with the general path only, and compares
the outcomes as text (the result's repr, so that 1000 and 1000.00 differ, or the ParseError's message).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pattern_reads import count_direct_reads
from sandbox_accounts import AMOUNT_TEXTS, sandbox_account, varied_accounts

import watcher.sources.json_listing as json_listing
import watcher.sources.mastercard_json as mastercard_json
from rules.types import KnownBalance
from watcher.sandbox.mastercard import render_json
from watcher.sources.base import ParseError
from watcher.sources.mastercard_accounts import ListingKeys

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
KW: dict[str, Any] = {"source": "mc", "observed_at": T0, "correlation_id": "corr-1"}


def json_read(
    body: bytes, *, direct: bool, streamed: bool = False, keys: ListingKeys | None = None
) -> tuple[str, int]:
    """parse_mastercard_json's outcome as text, and how many accounts the direct path read;
    `direct=False` leaves every account to the general path (_account). `streamed`: the body is read
    one item at a time in chunks of 7 bytes (json_listing), else whole."""
    with pytest.MonkeyPatch.context() as patch:
        taken = count_direct_reads(patch, mastercard_json, "_plain_json_account", direct=direct)
        patch.setattr(mastercard_json, "_STREAM_JSON_BYTES", 0 if streamed else 1 << 62)
        patch.setattr(json_listing, "CHUNK_BYTES", 7)
        try:
            return repr(mastercard_json.parse_mastercard_json(body, keys=keys, **KW)), taken()
        except ParseError as exc:
            return f"ParseError: {exc}", taken()


def _second_changed(old: str, new: str) -> bytes:
    """The sandbox's listing of two plain accounts, the second one's first `old` replaced by `new`. The
    first account is the first of its currency (read the general way), so the second is the one the
    direct path may take."""
    body = render_json([sandbox_account(1), sandbox_account(2)], listing=True).decode()
    at = body.index("{", body.index("}", body.index("}") + 1))
    assert old in body[at:], old
    return (body[:at] + body[at:].replace(old, new, 1)).encode()


_BALANCE = '"balance": {\n            "amount": "23998.19",\n            "currency": "GBP",\n' \
           '            "state": "IN_CREDIT"\n         }'
_TOKEN = '"non_card_token": "non_card_token:sbx-P-0002"'

# (what, old, new, read by the direct path)
JSON_TABLE: list[tuple[str, str, str, bool]] = [
    ("plain", "{", "{", True),
    ("IN_DEBIT", '"IN_CREDIT"', '"IN_DEBIT"', True),
    ("no whitespace", _BALANCE, _BALANCE.replace("\n", "").replace(" ", ""), True),
    ("keys reordered", '"account_description": "Main prefunding",', "", True),  # with the token line
    ("extra key", "{", '{"note": [1, {"x": null}],', True),
    ("extra key in the balance", '"amount"', '"sign": "-", "amount"', True),
    ("key given twice, the last counts", '"amount": "23998.19"', '"amount": 7, "amount": "23998.19"', True),
    ("key given twice, the last not a string", '"amount": "23998.19"', '"amount": "1", "amount": 7', False),
    ("escaped currency", '"GBP"', '"\\u0047BP"', True),
    ("escaped token", _TOKEN, '"non_card_token": "non_card_token:sbx-P-\\u0030002"', True),
    ("escaped key", '"currency"', '"\\u0063urrency"', True),
    ("non-ASCII description", '"Main prefunding"', '"Comptes \u00e9trangers \u20ac \U0001f4b6"', True),
    ("escaped description", '"Main prefunding"', '"a \\"b\\" \\\\ \\n c \\ud83d\\udcb6"', True),
    ("lone surrogate in the description", '"Main prefunding"', '"\\ud83d"', True),
    ("empty description", '"Main prefunding"', '""', True),
    ("description null", '"Main prefunding"', "null", False),
    ("description a number", '"Main prefunding"', "12", False),
    ("description an object", '"Main prefunding"', '{"text": "x"}', False),
    ("description missing", '"account_description": "Main prefunding",', "", False),
    ("description padded", '"Main prefunding"', '" Main prefunding\\t"', True),
    ("empty timestamp", '"2026-12-02T12:00:00Z"', '""', True),
    ("timestamp with 80 seconds", '"2026-12-02T12:00:00Z"', '"2018-05-18T10:19:80Z"', True),
    ("timestamp not a time", '"2026-12-02T12:00:00Z"', '"yesterday"', True),
    ("timestamp padded", '"2026-12-02T12:00:00Z"', '" 2026-12-02T12:00:00Z "', True),
    ("timestamp null", '"2026-12-02T12:00:00Z"', "null", False),
    ("timestamp a number", '"2026-12-02T12:00:00Z"', "1764676800", False),
    ("timestamp missing", '"balance_timestamp": "2026-12-02T12:00:00Z",', "", False),
    ("creation date empty", '"2018-01-10T09:30:00Z"', '""', True),
    ("creation date null", '"2018-01-10T09:30:00Z"', "null", False),
    ("creation date missing", '"created_date": "2018-01-10T09:30:00Z",', "", False),
    ("amount padded", '"23998.19"', '" 23998.19 "', False),
    ("amount empty", '"23998.19"', '""', False),
    ("amount a number", '"23998.19"', "23998.19", False),
    ("amount an integer", '"23998.19"', "23998", False),
    ("amount a negative number", '"23998.19"', "-5", False),
    ("amount null", '"23998.19"', "null", False),
    ("amount true", '"23998.19"', "true", False),
    ("amount a list", '"23998.19"', '["23998.19"]', False),
    ("amount missing", '"amount": "23998.19",', "", False),
    ("currency lower case", '"GBP"', '"gbp"', False),
    ("currency padded", '"GBP"', '" GBP"', False),
    ("currency not seen before", '"GBP"', '"EUR"', False),
    ("currency null", '"GBP"', "null", False),
    ("currency missing", '"currency": "GBP",', "", False),
    ("state lower case", '"IN_CREDIT"', '"in_credit"', False),
    ("state padded", '"IN_CREDIT"', '"IN_CREDIT "', False),
    ("state other", '"IN_CREDIT"', '"OVERDRAWN"', False),
    ("state null", '"IN_CREDIT"', "null", False),
    ("state missing", ',\n            "state": "IN_CREDIT"', "", False),
    ("balance a string", _BALANCE, '"balance": "23998.19"', False),
    ("balance a list", _BALANCE, '"balance": [{"amount": "23998.19", "currency": "GBP"}]', False),
    ("balance null", _BALANCE, '"balance": null', False),
    ("balance empty", _BALANCE, '"balance": {}', False),
    ("balance missing", _BALANCE + ",", "", False),
    ("token empty", _TOKEN, '"non_card_token": ""', False),
    ("token blank", _TOKEN, '"non_card_token": " \\t "', False),
    ("token padded", _TOKEN, '"non_card_token": " non_card_token:sbx-P-0002 "', True),
    ("token the first account's", _TOKEN, '"non_card_token": "non_card_token:sbx-P-0001"', True),
    ("token a number", _TOKEN, '"non_card_token": 2', False),
    ("token null", _TOKEN, '"non_card_token": null', False),
    ("token missing", ",\n         " + _TOKEN, "", False),
    ("an array before the account", "{", '["x", {"a": 1}], {', True),
    ("a string before the account", "{", '"x", {', True),
    ("null before the account", "{", "null, {", True),
]

JSON_TABLE += [(f"amount {what}", '"23998.19"', f'"{text}"', direct) for what, text, direct in AMOUNT_TEXTS]


def _table_body(what: str, old: str, new: str) -> bytes:
    body = _second_changed(old, new)
    if what == "keys reordered":
        body = body.replace(b'"non_card_token": "non_card_token:sbx-P-0002"',
                            b'"non_card_token": "non_card_token:sbx-P-0002",\n'
                            b'         "account_description": "Main prefunding"')
    return body


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("what", "old", "new", "direct"), JSON_TABLE, ids=[row[0] for row in JSON_TABLE])
def test_json_direct_path_reads_as_the_general_one(
    what: str, old: str, new: str, direct: bool, streamed: bool
) -> None:
    """Each variation of a sandbox-rendered account (whitespace, key order, extra and repeated keys,
    escapes, values of every JSON type, padded, empty, odd or missing values, IN_DEBIT, invalid
    timestamps) gives the same observations, rejections and ParseError messages with the direct path
    as without it, read whole or streamed; and the direct path reads exactly the accounts it is meant to
    (the seven values strings, and acceptable), leaving every other one to the general path."""
    body = _table_body(what, old, new)
    json.loads(body)  # every row is valid JSON: what differs is the account, not the document
    with_direct, taken = json_read(body, direct=True, streamed=streamed)
    without, none_taken = json_read(body, direct=False, streamed=streamed)
    assert with_direct == without
    assert none_taken == 0
    assert taken == (1 if direct else 0), with_direct


_VALUES = st.one_of(
    st.sampled_from(["", " ", "0", "1000", "1000.00", " 12.50 ", "1e3", "-1", "NaN", "GBP", "gbp", "EUR",
                     "IN_CREDIT", "IN_DEBIT", "in_debit", "2018-05-18T10:19:22Z", "2018-05-18T10:19:80Z",
                     "t1", "t2", " t1", "\u20ac", "\ud83d"]),
    st.none(), st.booleans(), st.integers(-10, 10**20), st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),  # as strings (json.dumps's default=str)
    st.lists(st.just("GBP"), max_size=1), st.dictionaries(st.just("amount"), st.just("1"), max_size=1),
)
_PLAIN = {"account_description": "d", "balance_timestamp": "2018-05-18T10:19:22Z",
          "created_date": "2012-06-05T11:47:51Z", "non_card_token": "t1"}
_PLAIN_BALANCE = {"amount": "10.50", "currency": "GBP", "state": "IN_CREDIT"}


@st.composite
def _accounts(draw: st.DrawFn) -> object:
    """An account object: the plain one with some values replaced by others of any JSON type, some keys
    dropped, or an extra key; sometimes not an object at all."""
    if draw(st.integers(0, 20)) == 0:
        return draw(_VALUES)
    def value_of(plain: str) -> object:
        return draw(st.one_of(st.just(plain), _VALUES))

    account: dict[str, object] = {key: value_of(plain) for key, plain in _PLAIN.items()}
    balance: dict[str, object] = {key: value_of(plain) for key, plain in _PLAIN_BALANCE.items()}
    account["balance"] = draw(st.one_of(st.just(balance), _VALUES))
    for key in draw(st.sets(st.sampled_from([*_PLAIN, "balance"]), max_size=2)):
        del account[key]
    if draw(st.booleans()):
        account["extra"] = draw(_VALUES)
    return account


@settings(max_examples=400, deadline=None)
@given(st.lists(_accounts(), min_size=1, max_size=6), st.sampled_from(["GBP", "EUR"]), st.booleans())
def test_json_direct_path_reads_as_the_general_one_property(
    accounts: list[object], primed: str, streamed: bool
) -> None:
    """Whatever mix of plain and changed accounts a listing holds (after one that makes a currency
    known), the direct path gives the same observations, rejections and ParseError messages as the
    general path alone, read whole or streamed."""
    first = {**_PLAIN, "non_card_token": "p", "balance": {**_PLAIN_BALANCE, "currency": primed}}
    body = json.dumps({"account-balances": [first, *accounts]}, default=str).encode()
    with_direct, taken = json_read(body, direct=True, streamed=streamed)
    assert with_direct == json_read(body, direct=False, streamed=streamed)[0]
    event(f"accounts read by the direct path: {taken}")


def test_json_direct_path_takes_a_sandbox_listing() -> None:
    """A sandbox listing (both states, several currencies, repeated values) is read by the direct path
    for every account but the first of each currency, with the same result as the general path, and
    on the next listing, with the known balances, shares the same objects as the general path does."""
    views = varied_accounts(300)
    body = render_json(views, listing=True)
    keys = ListingKeys()
    first, taken = json_read(body, direct=True, streamed=True, keys=keys)
    assert taken == 300 - 3
    assert first == json_read(body, direct=False)[0]
    parsed = mastercard_json.parse_mastercard_json(body, **KW)
    assert len({id(o.provider_timestamp_text) for o in parsed.observations}) == 5
    assert len({id(o.extra) for o in parsed.observations}) == 7
    assert len({id(o.balance.currency) for o in parsed.observations}) == 3

    known = {o.key: KnownBalance(o.balance, T0, "corr-0", 1, o.description) for o in parsed.observations}
    keys.known = known.get
    moved = render_json([*views[:-1], sandbox_account(299, amount="1.00")], listing=True)
    again = mastercard_json.parse_mastercard_json(moved, keys=keys, **KW)
    assert json_read(moved, direct=True, keys=keys) == (repr(again), 297)
    assert json_read(moved, direct=False, keys=keys)[0] == repr(again)
    for before, now in zip(parsed.observations[:-1], again.observations[:-1], strict=True):
        assert now.balance is known[now.key].balance
        assert now.description is known[now.key].description
        assert now.key is keys.latest[now.key.account]
        assert now == before
    assert again.observations[-1].balance.amount == 1
