"""Mastercard Send Account Balance responses, JSON and XML, as observations; and its error bodies.

Both endpoints are read: one account (`.../non-card-tokens/{token}/account-balance`) and every account of
the partner (`.../account-balances`). The documented samples spell the top-level key two ways
(`account_balances`, `account-balances`); both are read in JSON and in XML. A listing of 100,000 accounts
is read without holding its whole tree: JSON entries are converted one by one, XML ones as they stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from xml.etree.ElementTree import Element

from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey, Observation
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.provider_errors import read_mastercard_error
from watcher.sources.values import (
    PAUSE_GC_BYTES,
    UNSIGNED_AMOUNT,
    EntryError,
    collector_paused,
    finish,
    load_json,
    parse_timestamp,
    read_amount,
    read_currency,
    show,
)
from watcher.sources.xmlsafe import parse_untrusted_xml, stream_untrusted_xml

PROVIDER = "mastercard-send"
_TOP_KEYS = ("account_balances", "account-balances")
_ENTRY_KEYS = ("account_balance", "account-balance")
_STATES = (IN_CREDIT, IN_DEBIT)
_MISSING = object()
_MAX_XML_DEPTH = 8  # an account is three levels deep; deeper is not an account


# --- parsing -----------------------------------------------------------------------------------------


class _Seen:
    """What one parse call already checked, so that a listing pays once per distinct value, not once
    per account: parsed balance timestamps (every account updated in the same second has the same
    one) and currency codes found valid. Bounded by the listing itself."""

    __slots__ = ("currencies", "stamps")

    def __init__(self) -> None:
        self.stamps: dict[str, datetime | None] = {}
        self.currencies: set[str] = set()

    def timestamp(self, text: str) -> datetime | None:
        try:
            return self.stamps[text]
        except KeyError:
            parsed = self.stamps[text] = parse_timestamp(text)
            return parsed


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
    currency = balance.get("currency")
    if not isinstance(currency, str) or currency not in seen.currencies:
        seen.currencies.add(read_currency(currency, f"{path} ({token}).balance.currency"))
    assert isinstance(currency, str)
    state = balance.get("state")
    if state not in _STATES:
        raise EntryError(
            f"{path} ({token}).balance.state", f"expected IN_CREDIT or IN_DEBIT, found {show(state)}"
        )
    assert isinstance(state, str)
    stamp = raw.get("balance_timestamp")
    stamp_text = stamp if isinstance(stamp, str) else None if stamp is None else show(stamp)
    created = raw.get("created_date")
    description = raw.get("account_description")
    return Observation(
        key=BalanceKey(source, token, ""),
        provider=PROVIDER,
        balance=Balance(amount=amount, currency=currency, state=state),
        observed_at=observed_at,
        correlation_id=correlation_id,
        description=description if isinstance(description, str) else None,
        provider_timestamp=seen.timestamp(stamp_text) if stamp_text is not None else None,
        # Kept even when invalid: a documented sample has a time with 80 seconds.
        provider_timestamp_text=stamp_text,
        extra=(("created_date", created),) if isinstance(created, str) else (),
    )


def _build(
    entries: Iterable[tuple[str, object]], *, source: str, observed_at: datetime, correlation_id: str
) -> ParsedBalances:
    """Each entry an observation or a rejection (an entry may already be an EntryError, from XML).

    `entries` may be a generator that reads the body as it goes (XML): each entry is converted and let
    go before the next is read.
    """
    results: list[tuple[str, Observation | EntryError]] = []
    seen = _Seen()
    for path, raw in entries:
        if isinstance(raw, EntryError):
            results.append((path, raw))
            continue
        try:
            obs = _account(
                raw, path, source=source, observed_at=observed_at, correlation_id=correlation_id, seen=seen
            )
        except EntryError as exc:
            results.append((path, exc))
        else:
            results.append((path, obs))
    return finish(results)


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
    body: bytes, *, source: str, observed_at: datetime, correlation_id: str
) -> ParsedBalances:
    """Read a JSON answer of either endpoint; raise ParseError when the body has no usable account.

    Shapes: `{"account_balances": {"account_balance": {...}}}` (one account) and
    `{"account-balances": [{...}, ...]}` (a listing), with either spelling of the top-level key; a
    listing may also hold one account object instead of an array, and `account_balance` an array.
    """
    with collector_paused(len(body) >= PAUSE_GC_BYTES):
        return _read_json(body, source=source, observed_at=observed_at, correlation_id=correlation_id)


def _read_json(body: bytes, *, source: str, observed_at: datetime, correlation_id: str) -> ParsedBalances:
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ParseError(f"top level: expected a JSON object, found {show(doc)}")
    top = _top_key(list(doc), "top level")
    value = doc[top]
    entries: list[tuple[str, object]]
    if value is None:
        entries = []
    elif isinstance(value, list):
        entries = [(f"{top}[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        inner = next((k for k in _ENTRY_KEYS if k in value), None)
        if inner is None:
            entries = [(top, value)]  # a listing with the one account object in place of an array
        elif isinstance(value[inner], list):
            entries = [(f"{top}.{inner}[{i}]", item) for i, item in enumerate(value[inner])]
        else:
            entries = [(f"{top}.{inner}", value[inner])]
    else:
        raise ParseError(f"{top}: expected an array or an object, found {show(value)}")
    return _build(entries, source=source, observed_at=observed_at, correlation_id=correlation_id)


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


def _xml_entry(element: Element, path: str) -> object:
    """The account's dict shape, or the EntryError that says why it has none."""
    try:
        return _xml_value(element)
    except _XmlProblem as exc:
        return EntryError(path + "".join(f".{tag}" for tag in reversed(exc.trail)), exc.problem)


def parse_mastercard_xml(
    body: bytes, *, source: str, observed_at: datetime, correlation_id: str
) -> ParsedBalances:
    """Read an XML answer of either endpoint; raise ParseError when the body has no usable account.

    The root is `<account_balances>` or `<account-balances>`, with one or many `<account_balance>`.
    """
    with collector_paused(len(body) >= PAUSE_GC_BYTES):
        return _read_xml(body, source=source, observed_at=observed_at, correlation_id=correlation_id)


class _NotAListing(Exception):
    """The root has a <balance> child: the body is one account spelt directly under the root."""


def _read_xml(body: bytes, *, source: str, observed_at: datetime, correlation_id: str) -> ParsedBalances:
    """The body streamed: each account is converted as soon as the parser reaches its end tag, then let
    go, so that a listing of 100,000 accounts never is a whole tree (a third of the peak memory of the
    parse, and the time to build and free it). Everything else as _read_xml_tree, which reads the
    account-under-the-root shape (it needs the root's children all at once; that shape is one account)."""
    root, children = stream_untrusted_xml(body)
    try:
        entries = _xml_listing(root, children)
        return _build(entries, source=source, observed_at=observed_at, correlation_id=correlation_id)
    except _NotAListing:
        return _read_xml_tree(body, source=source, observed_at=observed_at, correlation_id=correlation_id)


def _xml_listing(root: Element, children: Iterator[Element]) -> Iterator[tuple[str, object]]:
    """The entries of the root's <account_balance> children, each as its end tag is read.

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
    for i, child in enumerate(children):
        name = _local(child.tag)
        if name == "balance":
            raise _NotAListing
        if name not in _ENTRY_KEYS:
            unexpected.add(name)
        elif not unexpected:  # after one unexpected child the body is refused: nothing more to convert
            path = f"{top}.{name}[{i}]"
            yield path, _xml_entry(child, path)
    if unexpected:
        raise _unexpected(top, unexpected)


def _read_xml_tree(
    body: bytes, *, source: str, observed_at: datetime, correlation_id: str
) -> ParsedBalances:
    root = parse_untrusted_xml(body)
    top = _top_key([_local(root.tag)], "root element")
    children = [c for c in root if isinstance(c.tag, str)]
    names = {_local(c.tag) for c in children}
    entries: list[tuple[str, object]]
    if "balance" in names:
        # The account's fields directly under the root, as the JSON listing-with-an-object shape.
        entries = [(top, _xml_entry(root, top))]
    elif names - set(_ENTRY_KEYS):
        raise _unexpected(top, names - set(_ENTRY_KEYS))
    else:
        entries = []
        for i, child in enumerate(children):
            path = f"{top}.{_local(child.tag)}[{i}]"
            entries.append((path, _xml_entry(child, path)))
    return _build(entries, source=source, observed_at=observed_at, correlation_id=correlation_id)


def describe_error_body(body: bytes | None) -> str:
    """Mastercard's error body, JSON or XML, as one line: `ReasonCode: Description (source ...,
    recoverable or not, details: ...)`, errors joined by "; "; "" when it is not one.

    See watcher.sources.provider_errors for the shapes read.
    """
    error = read_mastercard_error(body)
    return error.text if error is not None else ""
