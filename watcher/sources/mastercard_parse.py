"""Mastercard Send Account Balance responses, JSON and XML, as observations; and its error bodies.

Both endpoints are read: one account (`.../non-card-tokens/{token}/account-balance`) and every account of
the partner (`.../account-balances`). The documented samples spell the top-level key two ways
(`account_balances`, `account-balances`); both are read in JSON and in XML. A listing of 100,000 accounts
is read without holding its whole tree: JSON and XML entries are converted as they stream, each let go
before the next is read; a JSON body of another shape than the plain listing is read whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from xml.etree.ElementTree import Element

from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey, KnownBalance, Observation
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.body import Body, whole
from watcher.sources.json_listing import JsonListing, NotStreamable
from watcher.sources.provider_errors import read_mastercard_error
from watcher.sources.values import (
    PAUSE_GC_BYTES,
    UNSIGNED_AMOUNT,
    EntryError,
    collector_paused,
    duplicate,
    finished,
    load_json,
    parse_timestamp,
    read_amount,
    read_currency,
    show,
)
from watcher.sources.xml_pattern import NotPlain, PlainFields, plain_listing
from watcher.sources.xmlsafe import parse_untrusted_xml, stream_untrusted_xml

PROVIDER = "mastercard-send"
_TOP_KEYS = ("account_balances", "account-balances")
_ENTRY_KEYS = ("account_balance", "account-balance")
_MISSING = object()
_MAX_XML_DEPTH = 8  # an account is three levels deep; deeper is not an account


# --- parsing -----------------------------------------------------------------------------------------


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
    holds the one key and token string, not one more per call."""

    __slots__ = ("fixed", "known", "latest")

    def __init__(self) -> None:
        self.latest: dict[str, BalanceKey] = {}
        self.known: Callable[[BalanceKey], KnownBalance | None] | None = None
        self.fixed = False

    @classmethod
    def of_accounts(cls, source: str, tokens: Iterable[str]) -> ListingKeys:
        """The fixed keys of these accounts of `source`."""
        made = cls()
        made.latest = {token: BalanceKey(source, token, "") for token in tokens}
        made.fixed = True
        return made


class _Seen:
    """What one parse call already checked, so that a listing pays once per distinct value, not once
    per account: parsed balance timestamps (every account updated in the same second has the same
    one) and currency codes found valid. Bounded by the listing itself.

    It also hands out one string object per distinct currency code and timestamp text, and one `extra`
    tuple per creation date: 100,000 observations (and the known balances made of them) then share a
    handful of them instead of holding a copy each."""

    __slots__ = ("currencies", "extras", "keys", "known", "previous", "stamps", "texts")

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
    raw: object, path: str, *, source: str, observed_at: datetime, correlation_id: str, seen: _Seen
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
# entry of a shape without an array), and the entry itself (already an EntryError, from XML, when it has no
# account shape; or the XML account element, converted by _build). Its path is `prefix[index]`, or `prefix`.
_Entry = tuple[str, int | None, object]


def _path(prefix: str, index: int | None) -> str:
    return prefix if index is None else f"{prefix}[{index}]"


def _build(
    entries: Iterable[_Entry],
    *,
    source: str,
    observed_at: datetime,
    correlation_id: str,
    keys: ListingKeys | None = None,
) -> ParsedBalances:
    """Each entry an observation or a rejection, as values.finish makes them, the first of each key kept.

    `entries` may be a generator that reads the body as it goes (JSON, XML): each entry is converted and
    let go before the next is read. What is kept per entry is its observation, and where it was for a
    later duplicate: its index (its prefix is nearly always the first entry's), not its whole path.
    An entry may be a JSON value (see _plain_json_account), an XML account element (see
    _plain_xml_account) or its texts (see _plain_account).
    """
    kept: list[Observation] = []
    rejected: list[str] = []
    first_at: dict[BalanceKey, int | tuple[str, int | None]] = {}
    common: str | None = None
    seen = _Seen(keys)
    for prefix, index, raw in entries:
        obs: Observation | None = None
        if type(raw) is tuple:  # an XML account's texts, read by the pattern (xml_pattern)
            obs = _plain_account(raw, source, observed_at, correlation_id, seen)
            if obs is None:
                raw = _fields_shape(raw)
        elif type(raw) is dict:  # a JSON account: read directly when plain, else by _account below
            obs = _plain_json_account(raw, source, observed_at, correlation_id, seen)
        elif type(raw) is Element:  # an XML account: read directly when plain, else as its dict shape
            obs = _plain_xml_account(raw, source, observed_at, correlation_id, seen)
            if obs is None:
                raw = _xml_entry(raw, _path(prefix, index))
        if obs is None:
            if isinstance(raw, EntryError):
                rejected.append(str(raw))
                continue
            try:
                obs = _account(
                    raw, _path(prefix, index), source=source, observed_at=observed_at,
                    correlation_id=correlation_id, seen=seen,
                )
            except EntryError as exc:
                rejected.append(str(exc))
                continue
        first = first_at.get(obs.key)
        if first is not None:
            path = _path(prefix, index)
            if isinstance(first, tuple):
                where = _path(*first)
            else:
                assert common is not None  # set with the first entry kept
                where = _path(common, first)
            rejected.append(duplicate(path, obs, where))
            continue
        if common is None:
            common = prefix
        first_at[obs.key] = index if index is not None and prefix == common else (prefix, index)
        kept.append(obs)
    parsed = finished(kept, rejected)
    if keys is not None and seen.keys is not None:
        keys.latest = seen.keys
    return parsed


def _unexpected(top: str, names: Iterable[str]) -> ParseError:
    """A listing root with children other than <account_balance>: the body is refused, naming them."""
    shown = ", ".join(f"<{n}>" for n in sorted(names)[:5])
    return ParseError(f"{top}: expected <account_balance> elements, found {shown}")


def _top_key(found: Sequence[str], where: str) -> str:
    keys = [k for k in _TOP_KEYS if k in found]
    if not keys:
        shown = ", ".join(show(k) for k in list(found)[:5]) or "nothing"
        raise ParseError(f"{where}: expected account_balances or account-balances, found {shown}")
    if len(keys) > 1:
        raise ParseError(f"{where}: both account_balances and account-balances present; which one is meant?")
    return keys[0]


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
    """
    with collector_paused(len(body) >= PAUSE_GC_BYTES):
        return _read_json(
            body, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys
        )


def _read_json(
    body: Body, *, source: str, observed_at: datetime, correlation_id: str, keys: ListingKeys | None = None
) -> ParsedBalances:
    """The plain listing, `{"account-balances": [...]}`, streamed (see JsonListing); any other body (the
    other shapes, and every body the stream cannot take to its end: invalid JSON, ...) read whole, which
    gives the same result for a listing, and the same ParseError for a body that is not valid JSON."""
    if len(body) >= _STREAM_JSON_BYTES:
        try:
            listing = JsonListing(body)
            top = listing.start(_TOP_KEYS)
            return _build(
                ((top, i, item) for i, item in enumerate(listing.items())),
                source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys,
            )
        except NotStreamable:
            pass  # read whole below: the same result, or the same error, as if it was never streamed
    doc = load_json(whole(body))
    if not isinstance(doc, dict):
        raise ParseError(f"top level: expected a JSON object, found {show(doc)}")
    top = _top_key(list(doc), "top level")
    value = doc[top]
    entries: list[_Entry]
    if value is None:
        entries = []
    elif isinstance(value, list):
        entries = [(top, i, item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        inner = next((k for k in _ENTRY_KEYS if k in value), None)
        if inner is None:
            entries = [(top, None, value)]  # a listing with the one account object in place of an array
        elif isinstance(value[inner], list):
            prefix = f"{top}.{inner}"
            entries = [(prefix, i, item) for i, item in enumerate(value[inner])]
        else:
            entries = [(f"{top}.{inner}", None, value[inner])]
    else:
        raise ParseError(f"{top}: expected an array or an object, found {show(value)}")
    return _build(entries, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys)


# A JSON body at least this large is streamed when it is a plain listing; a smaller one is read whole.
_STREAM_JSON_BYTES = 64 * 1024
def _local(tag: str) -> str:
    """The tag without a namespace: `{urn:x}amount` is `amount`."""
    return tag.rsplit("}", 1)[-1]


class _XmlProblem(Exception):
    """Why an element has no JSON shape; `trail` collects the tags from the culprit up (reversed), so
    that the path is spelt out only for an error, not for each of a listing's 900,000 elements."""

    def __init__(self, problem: str, *trail: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.trail = list(trail)


def _xml_value(element: Element, depth: int = 0) -> object:
    """An element as the JSON shape would have it: leaves are their text, others a dict of children."""
    if depth > _MAX_XML_DEPTH:
        raise _XmlProblem("nested too deeply")
    result: dict[str, object] = {}
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):
            continue  # a comment or processing instruction
        if "}" in tag:
            tag = _local(tag)
        if tag in result:
            raise _XmlProblem("appears more than once", tag)
        if len(child) or depth >= _MAX_XML_DEPTH:
            try:
                result[tag] = _xml_value(child, depth + 1)
            except _XmlProblem as exc:
                exc.trail.append(tag)
                raise
        else:  # a leaf, the common case, without a call
            text = child.text
            result[tag] = text.strip() if text else ""
    if not result:
        return (element.text or "").strip()
    return result


def _plain_xml_account(
    element: Element, source: str, observed_at: datetime, correlation_id: str, seen: _Seen
) -> Observation | None:
    """The observation of a plain account element, read directly (no dict in between); None for any
    other element, which is then read as its dict shape (_xml_entry, then _account).

    Plain is the documented layout and the sandbox's, exactly: `<account_description>`, `<balance>` with
    `<amount>`, `<currency>`, `<state>`, then `<balance_timestamp>`, `<created_date>`,
    `<non_card_token>`, in that order, each once, without namespaces, the leaves without children (texts
    stripped, attributes ignored, as _xml_value reads them); then the values as _plain_account takes
    them. A property test checks both paths agree.
    """
    try:
        described, balance, stamped, creation, tokened = element
        amount_el, currency_el, state_el = balance
    except ValueError:  # another number of children
        return None
    if (
        described.tag != "account_description"
        or balance.tag != "balance"
        or stamped.tag != "balance_timestamp"
        or creation.tag != "created_date"
        or tokened.tag != "non_card_token"
        or amount_el.tag != "amount"
        or currency_el.tag != "currency"
        or state_el.tag != "state"
        or len(described) or len(stamped) or len(creation) or len(tokened)
        or len(amount_el) or len(currency_el) or len(state_el)
    ):
        return None
    texts = (described.text, amount_el.text, currency_el.text, state_el.text, stamped.text, creation.text,
             tokened.text)
    fields: PlainFields = tuple([text.strip() if text else "" for text in texts])  # type: ignore[assignment]
    return _plain_account(fields, source, observed_at, correlation_id, seen)


def _plain_json_account(
    raw: dict[str, object], source: str, observed_at: datetime, correlation_id: str, seen: _Seen
) -> Observation | None:
    """The observation of a JSON account object whose seven values are all strings, read directly by
    _plain_account (no dict look-up but these seven); None for any other, read by _account.

    Why: _account checks each value's type and builds each error's path as it goes; that was most of
    the parse of a steady listing (the parse of 100,000 accounts: ~1.0 s before, ~0.85 s after). Keys other
    than the seven are ignored, as _account ignores them; a value of another type (an amount as a
    number, a null description, ...) is _account's to read. A test reads every variation both ways.
    """
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
    return _plain_account(fields, source, observed_at, correlation_id, seen)


def _plain_account(
    fields: PlainFields, source: str, observed_at: datetime, correlation_id: str, seen: _Seen
) -> Observation | None:
    """The observation of one account of the plain layout from its texts, read directly; None when a
    value is not plain, and the account is then read as its dict shape by _account.

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
    # What _Seen.text, .timestamp, .extra and .key do, inline: four calls fewer per account.
    stamp_text = seen.texts.setdefault(stamp_text, stamp_text)
    try:
        stamp = seen.stamps[stamp_text]
    except KeyError:
        stamp = seen.timestamp(stamp_text)
    extra = seen.extras.get(created)
    if extra is None:
        extra = seen.extra(created)
    amount = Decimal(amount_text)
    shared: Balance | None = None
    key = seen.previous.get(token)
    if key is None or key.source != source:
        key = BalanceKey(source, token, "")
    elif seen.known is not None:  # the objects already known, as _account takes them (see ListingKeys)
        known = seen.known(key)
        if known is not None:
            shared = _known_balance(known.balance, amount, currency, state)
            if description == known.description and known.description is not None:
                description = known.description
    if seen.keys is not None:
        seen.keys[key.account] = key
    # Positional, in the dataclasses' field order: faster than keywords; the tests compare every field
    # with the observations _account builds by keyword.
    return Observation(
        key, PROVIDER, shared if shared is not None else Balance(amount, currency, state), observed_at,
        correlation_id, description, stamp, stamp_text, extra,
    )


def _fields_shape(fields: PlainFields) -> dict[str, object]:
    """An account's texts as the dict shape _xml_value would make of its element."""
    description, amount, currency, state, stamp, created, token = fields
    return {
        "account_description": description,
        "balance": {"amount": amount, "currency": currency, "state": state},
        "balance_timestamp": stamp,
        "created_date": created,
        "non_card_token": token,
    }


def _xml_entry(element: Element, path: str) -> object:
    """The account's dict shape, or the EntryError that says why it has none."""
    try:
        return _xml_value(element)
    except _XmlProblem as exc:
        return EntryError(path + "".join(f".{tag}" for tag in reversed(exc.trail)), exc.problem)


def parse_mastercard_xml(
    body: Body,
    *,
    source: str,
    observed_at: datetime,
    correlation_id: str,
    keys: ListingKeys | None = None,
) -> ParsedBalances:
    """Read an XML answer of either endpoint; raise ParseError when the body has no usable account.

    The root is `<account_balances>` or `<account-balances>`, with one or many `<account_balance>`.
    `keys`: the source's ListingKeys, for a listing. `body` may be spooled (watcher.sources.body): it is
    then read a chunk at a time, for the same result.
    """
    with collector_paused(len(body) >= PAUSE_GC_BYTES):
        return _read_xml(
            body, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys
        )


class _NotAListing(Exception):
    """The root has a <balance> child: the body is one account spelt directly under the root."""


def _read_xml(
    body: Body, *, source: str, observed_at: datetime, correlation_id: str, keys: ListingKeys | None = None
) -> ParsedBalances:
    """The body streamed: each account is converted as soon as the parser reaches its end tag, then let
    go, so that a listing of 100,000 accounts never is a whole tree (a third of the peak memory of the
    parse, and the time to build and free it). Everything else as _read_xml_tree, which reads the
    account-under-the-root shape (it needs the root's children all at once; that shape is one account).

    A body in exactly the documented layout is read by a pattern instead (xml_pattern), for the same
    result in a third of the time; any other body, from the start, as above."""
    try:
        return _read_pattern(
            body, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys
        )
    except NotPlain:
        pass
    root, children = stream_untrusted_xml(body)
    try:
        entries = _xml_listing(root, children)
        return _build(
            entries, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys
        )
    except _NotAListing:
        return _read_xml_tree(
            whole(body), source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys
        )


def _read_pattern(
    body: Body, *, source: str, observed_at: datetime, correlation_id: str, keys: ListingKeys | None = None
) -> ParsedBalances:
    """The body read by the pattern (xml_pattern); NotPlain, with nothing recorded, when it is not exactly
    the documented layout (_build gives the source its keys only once every account is read)."""
    root, accounts = plain_listing(body)
    prefix = f"{root}.account_balance"
    return _build(
        ((prefix, i, fields) for i, fields in enumerate(accounts)),
        source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys,
    )


def _xml_listing(root: Element, children: Iterator[Element]) -> Iterator[_Entry]:
    """The entries of the root's <account_balance> children, each as its end tag is read: the element
    itself, which _build converts before the next one is read.

    What a whole tree would show is kept: a fault of the document anywhere is raised before a wrong root
    or an unexpected child is reported (the rest of the body is read first), and _NotAListing as soon
    as a <balance> child is read (the caller reads the body again, whole).
    """
    try:
        top = _top_key([_local(root.tag)], "root element")
    except ParseError:
        for _ in children:  # a fault of the document comes first
            pass
        raise
    unexpected: set[str] = set()
    prefixes = {name: f"{top}.{name}" for name in _ENTRY_KEYS}  # one string each, not one per child
    for i, child in enumerate(children):
        prefix = prefixes.get(child.tag)  # an entry without a namespace, the common case: no _local
        if prefix is not None:
            if not unexpected:
                yield prefix, i, child  # converted by _build, before the next child is read
            continue
        name = _local(child.tag)
        if name == "balance":
            raise _NotAListing
        if name not in _ENTRY_KEYS:
            unexpected.add(name)
        elif not unexpected:  # after one unexpected child the body is refused: nothing more to convert
            yield prefixes[name], i, child  # converted by _build, before the next child is read
    if unexpected:
        raise _unexpected(top, unexpected)


def _read_xml_tree(
    body: bytes, *, source: str, observed_at: datetime, correlation_id: str, keys: ListingKeys | None = None
) -> ParsedBalances:
    root = parse_untrusted_xml(body)
    top = _top_key([_local(root.tag)], "root element")
    children = [c for c in root if isinstance(c.tag, str)]
    names = {_local(c.tag) for c in children}
    entries: list[_Entry]
    if "balance" in names:
        # The account's fields directly under the root, as the JSON listing-with-an-object shape.
        entries = [(top, None, _xml_entry(root, top))]
    elif names - set(_ENTRY_KEYS):
        raise _unexpected(top, names - set(_ENTRY_KEYS))
    else:
        entries = []
        for i, child in enumerate(children):
            prefix = f"{top}.{_local(child.tag)}"
            entries.append((prefix, i, _xml_entry(child, _path(prefix, i))))
    return _build(entries, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys)


def describe_error_body(body: bytes | None) -> str:
    """Mastercard's error body, JSON or XML, as one line: `ReasonCode: Description (source ...,
    recoverable or not, details: ...)`, errors joined by "; "; "" when it is not one.

    See watcher.sources.provider_errors for the shapes read.
    """
    error = read_mastercard_error(body)
    return error.text if error is not None else ""
