"""Mastercard Send Account Balance answers in JSON, of either endpoint, as observations.

A listing of 100,000 accounts is streamed (watcher.sources.json_listing): each entry is converted as it is
decoded and let go before the next; a body of another shape than the plain listing is read whole. Each
account is read by its direct path when its seven values are strings, else by the general path
(watcher.sources.mastercard_accounts).
"""

from __future__ import annotations

from datetime import datetime

from rules.types import BalanceKey, Observation
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.body import Body, whole
from watcher.sources.json_listing import JsonListing, NotStreamable
from watcher.sources.mastercard_accounts import (
    ENTRY_KEYS,
    TOP_KEYS,
    Entry,
    ListingKeys,
    Seen,
    build,
    plain_account,
    top_key,
)
from watcher.sources.values import load_json, pausing_collector, show

__all__ = ["parse_mastercard_json"]

# A JSON body at least this large is streamed when it is a plain listing; a smaller one is read whole.
_STREAM_JSON_BYTES = 64 * 1024


@pausing_collector
def parse_mastercard_json(
    body: Body,
    *,
    source: str,
    observed_at: datetime,
    correlation_id: str,
    keys: ListingKeys | None = None,
) -> ParsedBalances:
    """Read a JSON answer of either endpoint; raise ParseError when the body has no usable account.

    Shapes: `{"account_balances": {"account_balance": {...}}}` (one account) and
    `{"account-balances": [{...}, ...]}` (a listing), with either spelling of the top-level key; a
    listing may also hold one account object instead of an array, and `account_balance` an array.
    `keys`: the source's ListingKeys, for a listing. `body` may be spooled (watcher.sources.body): it is
    then read a chunk at a time, for the same result.

    The plain listing, `{"account-balances": [...]}`, is streamed (see JsonListing); any other body (the
    other shapes, and every body the stream cannot take to its end: invalid JSON, ...) is read whole,
    which gives the same result for a listing, and the same ParseError for a body that is not valid JSON.
    """
    if len(body) >= _STREAM_JSON_BYTES:
        try:
            listing = JsonListing(body)
            top = listing.start(TOP_KEYS)
            return build(
                ((top, i, item) for i, item in enumerate(listing.items())), direct=_plain_json_account,
                source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys,
            )
        except NotStreamable:
            pass  # read whole below: the same result, or the same error, as if it was never streamed
    doc = load_json(whole(body))
    if not isinstance(doc, dict):
        raise ParseError(f"top level: expected a JSON object, found {show(doc)}")
    top = top_key(list(doc), "top level")
    value = doc[top]
    entries: list[Entry]
    if value is None:
        entries = []
    elif isinstance(value, list):
        entries = [(top, i, item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        inner = next((k for k in ENTRY_KEYS if k in value), None)
        if inner is None:
            entries = [(top, None, value)]  # a listing with the one account object in place of an array
        elif isinstance(value[inner], list):
            prefix = f"{top}.{inner}"
            entries = [(prefix, i, item) for i, item in enumerate(value[inner])]
        else:
            entries = [(f"{top}.{inner}", None, value[inner])]
    else:
        raise ParseError(f"{top}: expected an array or an object, found {show(value)}")
    return build(
        entries, direct=_plain_json_account, source=source, observed_at=observed_at,
        correlation_id=correlation_id, keys=keys,
    )



def _plain_json_account(
    raw: object, source: str, observed_at: datetime, correlation_id: str, seen: Seen
) -> Observation | BalanceKey | None:
    """The observation of a JSON account object whose seven values are all strings, read directly by
    plain_account (no dict look-up but these seven); None for any other, read by _account.

    Why: _account checks each value's type and builds each error's path as it goes; that was most of
    the parse of a steady listing (the parse of 100,000 accounts: ~1.0 s before, ~0.85 s after). Keys other
    than the seven are ignored, as _account ignores them; a value of another type (an amount as a
    number, a null description, ...) is _account's to read. A test reads every variation both ways.
    """
    if type(raw) is not dict:
        return None
    balance = raw.get("balance")
    if type(balance) is not dict:
        return None
    try:
        description, stamp, created, token = (
            raw["account_description"], raw["balance_timestamp"], raw["created_date"], raw["non_card_token"]
        )
        amount, currency, state = balance["amount"], balance["currency"], balance["state"]
    except KeyError:
        return None
    if not (
        type(amount) is str and type(currency) is str and type(state) is str and type(token) is str
        and type(description) is str and type(stamp) is str and type(created) is str
    ):
        return None
    fields = (description, amount, currency, state, stamp, created, token)
    return plain_account(fields, source, observed_at, correlation_id, seen)
