"""What the Mastercard readers of both formats share (watcher.sources.mastercard_json and _xml): the
names of a body's keys, an account's values as an observation, and a body's entries as parsed balances.

An account is read by the general path, `_account`, from its dict shape (JSON's, or an XML element turned
into the same shape), which checks every value and says what is wrong; or directly, by `plain_account`,
from its seven texts, when they are plain (the documented layout, nearly every account of a listing).
Every rejection and every error message comes from the general path. `build` takes a body's entries
one by one, through the direct path its reader names and else the general one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey, KnownBalance, Observation
from watcher.sources.base import ParsedBalances, ParseError, QuietUnchanged
from watcher.sources.values import (
    UNSIGNED_AMOUNT,
    EntryError,
    duplicate,
    finished,
    parse_timestamp,
    read_amount,
    read_currency,
    show,
)
from watcher.sources.xml_pattern import PlainFields

__all__ = [
    "ENTRY_KEYS",
    "PROVIDER",
    "TOP_KEYS",
    "DirectRead",
    "Entry",
    "ListingKeys",
    "Seen",
    "build",
    "entry_path",
    "plain_account",
    "top_key",
]

PROVIDER = "mastercard-send"
# The documented samples spell the top-level key and the entry key two ways each.
TOP_KEYS = ("account_balances", "account-balances")
ENTRY_KEYS = ("account_balance", "account-balance")
_MISSING = object()


class ListingKeys:
    """A source's keys of its latest listing, by token. The next listing's observations take these keys
    (and their token strings) instead of 100,000 new ones: the state store holds them already, so a
    listing costs that much less memory while it is evaluated, and a look-up of a key finds the very
    object. Only the latest listing's keys are kept; a listing that fails to parse changes nothing.

    `known`, when set (the poller sets the state store's look-up), gives the last known balance of a
    key: an account whose amount (to its last digit and exponent), currency, state and description are
    those already known takes the known Balance and description objects instead of new ones, so that
    the steady listing of 100,000 accounts, nearly all unchanged, holds no second copy of them while it
    is evaluated. The values are equal either way: only which objects hold them differs.

    `of_accounts` makes the keys of a source polled account by account: one per configured token, fixed
    (a parse never replaces them), so that every answer about an account, and the state kept of it,
    holds the one key and token string, not one more per call.

    `quiet`, when set (the poller sets it, for a listing), says whether an unchanged balance of a key
    would lead to nothing. An account read by the direct path whose balance and description are those
    known, and for which `quiet` says so, is then counted (ParsedBalances.unchanged) instead of built
    as an observation: the steady listing of 100,000 accounts, nearly all unchanged, builds and assesses
    only the others. Its key is still listed (`latest`), so that staleness sees it answered."""

    __slots__ = ("fixed", "known", "latest", "quiet")

    def __init__(self) -> None:
        self.latest: dict[str, BalanceKey] = {}
        self.known: Callable[[BalanceKey], KnownBalance | None] | None = None
        self.quiet: QuietUnchanged | None = None
        self.fixed = False

    @classmethod
    def of_accounts(cls, source: str, tokens: Iterable[str]) -> ListingKeys:
        """The fixed keys of these accounts of `source`."""
        made = cls()
        made.latest = {token: BalanceKey(source, token, "") for token in tokens}
        made.fixed = True
        return made


class Seen:
    """What one parse call already checked, so that a listing pays once per distinct value, not once
    per account: parsed balance timestamps (every account updated in the same second has the same
    one) and currency codes found valid. Bounded by the listing itself.

    It also hands out one string object per distinct currency code and timestamp text, and one `extra`
    tuple per creation date: 100,000 observations (and the known balances made of them) then share a
    handful of them instead of holding a copy each."""

    __slots__ = ("currencies", "extras", "keys", "known", "previous", "quiet", "stamps", "texts")

    def __init__(self, keys: ListingKeys | None = None) -> None:
        self.stamps: dict[str, datetime | None] = {}
        self.currencies: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.extras: dict[str, tuple[tuple[str, str], ...]] = {}
        # The keys of the source's previous listing (or its fixed ones), and of this one (None: not a
        # listing, none kept).
        self.previous: dict[str, BalanceKey] = keys.latest if keys is not None else {}
        self.keys: dict[str, BalanceKey] | None = {} if keys is not None and not keys.fixed else None
        self.known = keys.known if keys is not None else None
        self.quiet = keys.quiet if keys is not None else None

    def known_of(self, source: str, token: str) -> KnownBalance | None:
        """The last known balance of the previous listing's key of `token`, if there is one."""
        known = self.known
        if known is None:
            return None
        key = self.previous.get(token)
        if key is None or key.source != source:
            return None
        return known(key)

    def key(self, source: str, token: str) -> BalanceKey:
        """The key of `token`: the one of the previous listing when there is one."""
        key = self.previous.get(token)
        if key is None or key.source != source:
            key = BalanceKey(source, token, "")
        if self.keys is not None:
            self.keys[key.account] = key
        return key

    def timestamp(self, text: str) -> datetime | None:
        try:
            return self.stamps[text]
        except KeyError:
            parsed = self.stamps[text] = parse_timestamp(text)
            return parsed

    def text(self, text: str) -> str:
        """`text`, or an equal string seen before."""
        return self.texts.setdefault(text, text)

    def extra(self, created: str) -> tuple[tuple[str, str], ...]:
        try:
            return self.extras[created]
        except KeyError:
            made = self.extras[created] = (("created_date", created),)
            return made


def _known_balance(last: Balance, amount: Decimal, currency: str, state: str) -> Balance | None:
    """`last` when it holds the very values read: the same amount to its exponent (100.0 is not 100.00)
    and sign (-0 is not 0), the same currency and state; else None."""
    if (
        last.amount == amount
        and last.amount.same_quantum(amount)
        and (amount or last.amount.is_signed() == amount.is_signed())
        and last.state == state
        and last.currency == currency
        and last.balance_type is None
    ):
        return last
    return None


def _account(
    raw: object, path: str, *, source: str, observed_at: datetime, correlation_id: str, seen: Seen
) -> Observation:
    """One account object (from JSON, or from XML turned into the same dict shape).

    Runs once per account of a listing of 100,000: the common case takes the shortest way (error
    messages are built only when raised), every check still made.
    """
    if not isinstance(raw, dict):
        raise EntryError(path, f"expected an account object, found {show(raw)}")
    token = raw.get("non_card_token")
    if not isinstance(token, str) or not token.strip():
        raise EntryError(f"{path}.non_card_token", f"missing or empty, found {show(token)}")
    balance = raw.get("balance")
    if not isinstance(balance, dict):
        raise EntryError(f"{path} ({token}).balance", f"expected an object, found {show(balance)}")
    amount_raw = balance.get("amount", _MISSING)
    if amount_raw is _MISSING:
        raise EntryError(f"{path} ({token}).balance.amount", "missing")
    if isinstance(amount_raw, str) and UNSIGNED_AMOUNT.fullmatch(amount_raw):
        amount = Decimal(amount_raw)  # what read_amount makes of a plain unsigned decimal string
    else:
        amount = read_amount(amount_raw, f"{path} ({token}).balance.amount", signed=False)
    currency_raw = balance.get("currency")
    currency = seen.currencies.get(currency_raw) if isinstance(currency_raw, str) else None
    if currency is None:
        currency = read_currency(currency_raw, f"{path} ({token}).balance.currency")
        seen.currencies[currency] = currency
    state = balance.get("state")
    if state == IN_CREDIT:
        state = IN_CREDIT  # the one string object, not the body's copy
    elif state == IN_DEBIT:
        state = IN_DEBIT
    else:
        raise EntryError(
            f"{path} ({token}).balance.state", f"expected IN_CREDIT or IN_DEBIT, found {show(state)}"
        )
    stamp = raw.get("balance_timestamp")
    stamp_text = seen.text(stamp) if isinstance(stamp, str) else None if stamp is None else show(stamp)
    created = raw.get("created_date")
    description = raw.get("account_description")
    if not isinstance(description, str):
        description = None
    # The objects already known when they hold the very same values (see ListingKeys).
    known = seen.known_of(source, token) if seen.known is not None else None
    shared: Balance | None = None
    if known is not None:
        shared = _known_balance(known.balance, amount, currency, state)
        if description is not None and description == known.description:
            description = known.description
    return Observation(
        key=seen.key(source, token),
        provider=PROVIDER,
        balance=shared if shared is not None else Balance(amount=amount, currency=currency, state=state),
        observed_at=observed_at,
        correlation_id=correlation_id,
        description=description,
        provider_timestamp=seen.timestamp(stamp_text) if stamp_text is not None else None,
        # Kept even when invalid: a documented sample has a time with 80 seconds.
        provider_timestamp_text=stamp_text,
        extra=seen.extra(created) if isinstance(created, str) else (),
    )


# An entry of a body: the path of its parent (e.g. `account-balances`), its index there (None for the one
# entry of a shape without an array), and the entry itself: what its reader found (a JSON value, an XML
# element or its texts, an account's dict shape, or already the EntryError that says why it has none).
# Its path is `prefix[index]`, or `prefix`.
Entry = tuple[str, int | None, object]
_Raw = TypeVar("_Raw")
# A reader's direct path: the observation of an entry in the plain layout (or only its key, when it is
# left out unchanged), None for any other entry (then read by the general path), with nothing recorded;
# see plain_account.
DirectRead = Callable[[_Raw, str, datetime, str, Seen], Observation | BalanceKey | None]


def entry_path(prefix: str, index: int | None) -> str:
    return prefix if index is None else f"{prefix}[{index}]"


def build(
    entries: Iterable[tuple[str, int | None, _Raw]],
    *,
    direct: DirectRead[_Raw] | None = None,
    shape: Callable[[_Raw, str], object] | None = None,
    source: str,
    observed_at: datetime,
    correlation_id: str,
    keys: ListingKeys | None = None,
) -> ParsedBalances:
    """Each entry an observation or a rejection, as values.finish makes them, the first of each key kept;
    or, when the direct path leaves it out unchanged (see ListingKeys.quiet), only counted.

    Each entry is read by `direct` when it takes it; else `shape(entry, path)` turns it into its dict
    shape (or the EntryError saying why it has none), which `_account` reads; without `shape` the entry
    is that already. `entries` may be a generator that reads the body as it goes (JSON, XML): each entry
    is converted and let go before the next is read. What is kept per entry is its observation, and
    where it was for a later duplicate: its index (its prefix is nearly always the first entry's), not
    its whole path.
    """
    kept: list[Observation] = []
    rejected: list[str] = []
    first_at: dict[BalanceKey, int | tuple[str, int | None]] = {}
    common: str | None = None
    unchanged = 0
    seen = Seen(keys)
    for prefix, index, raw in entries:
        obs = direct(raw, source, observed_at, correlation_id, seen) if direct is not None else None
        if obs is None:
            path = entry_path(prefix, index)
            account: object = raw if shape is None else shape(raw, path)
            if isinstance(account, EntryError):
                rejected.append(str(account))
                continue
            try:
                obs = _account(
                    account, path, source=source, observed_at=observed_at, correlation_id=correlation_id,
                    seen=seen,
                )
            except EntryError as exc:
                rejected.append(str(exc))
                continue
        key = obs if isinstance(obs, BalanceKey) else obs.key
        first = first_at.get(key)
        if first is not None:
            path = entry_path(prefix, index)
            if isinstance(first, tuple):
                where = entry_path(*first)
            else:
                assert common is not None  # set with the first entry kept
                where = entry_path(common, first)
            rejected.append(duplicate(path, key, where))
            continue
        if common is None:
            common = prefix
        first_at[key] = index if index is not None and prefix == common else (prefix, index)
        if isinstance(obs, BalanceKey):
            unchanged += 1
        else:
            kept.append(obs)
    parsed = finished(kept, rejected, unchanged)
    if keys is not None and seen.keys is not None:
        keys.latest = seen.keys
    return parsed


def top_key(found: Sequence[str], where: str) -> str:
    keys = [k for k in TOP_KEYS if k in found]
    if not keys:
        shown = ", ".join(show(k) for k in list(found)[:5]) or "nothing"
        raise ParseError(f"{where}: expected account_balances or account-balances, found {shown}")
    if len(keys) > 1:
        raise ParseError(f"{where}: both account_balances and account-balances present; which one is meant?")
    return keys[0]

def plain_account(
    fields: PlainFields, source: str, observed_at: datetime, correlation_id: str, seen: Seen
) -> Observation | BalanceKey | None:
    """The observation of one account of the plain layout from its texts, read directly; None when a
    value is not plain, and the account is then read as its dict shape by _account. Only its key when
    its balance and description are those known and `seen.quiet` says nothing would follow (see
    ListingKeys.quiet): no observation is built.

    The texts are taken as they are: the XML paths strip them first, as _xml_value does; JSON's are not
    stripped, as _account does not strip them.

    Plain values: a token not all whitespace, a plain unsigned amount, a currency already found valid in
    this body, IN_CREDIT or IN_DEBIT. The result is what _account makes of the dict shape; anything else
    (a bad value, the first account of each currency) returns None before anything is recorded, so that
    every rejection and every error message comes from the one general path.
    """
    description, amount_text, currency_text, state_text, stamp_text, created, token = fields
    currency = seen.currencies.get(currency_text)
    if state_text == IN_CREDIT:
        state = IN_CREDIT  # the one string object, as _account
    elif state_text == IN_DEBIT:
        state = IN_DEBIT
    else:
        return None
    if currency is None or not UNSIGNED_AMOUNT.fullmatch(amount_text) or not token.strip():
        return None
    amount = Decimal(amount_text)
    shared: Balance | None = None
    # What Seen.key, .text, .timestamp and .extra do, inline: four calls fewer per account.
    key = seen.previous.get(token)
    known: KnownBalance | None = None
    if key is None or key.source != source:
        key = BalanceKey(source, token, "")
    elif seen.known is not None:
        known = seen.known(key)
    if seen.keys is not None:  # listed from here on, observed or left out
        seen.keys[key.account] = key
    if known is not None:  # the objects already known, as _account takes them (see ListingKeys)
        shared = _known_balance(known.balance, amount, currency, state)
        if description == known.description and known.description is not None:
            description = known.description
            if shared is not None and seen.quiet is not None and seen.quiet(key, known, observed_at):
                return key  # unchanged, and nothing would follow: no observation (ListingKeys.quiet)
    stamp_text = seen.texts.setdefault(stamp_text, stamp_text)
    try:
        stamp = seen.stamps[stamp_text]
    except KeyError:
        stamp = seen.timestamp(stamp_text)
    extra = seen.extras.get(created)
    if extra is None:
        extra = seen.extra(created)
    # Positional, in the dataclasses' field order: faster than keywords; the tests compare every field
    # with the observations _account builds by keyword.
    return Observation(
        key, PROVIDER, shared if shared is not None else Balance(amount, currency, state), observed_at,
        correlation_id, description, stamp, stamp_text, extra,
    )
