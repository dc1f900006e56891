"""Mastercard Send Account Balance answers in XML, of either endpoint, as observations.

The root is `<account_balances>` or `<account-balances>`. A body in exactly the documented layout is read
by a pattern (watcher.sources.xml_pattern); any other is streamed by the XML parser, each account element
converted as its end tag is read and let go before the next, so that a listing of 100,000 accounts is
never a whole tree; the one shape that needs the whole tree (an account's fields directly under the
root) is one account. Accounts are read directly when plain, else as the dict shape JSON would give them
(watcher.sources.mastercard_accounts).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from xml.etree.ElementTree import Element

from rules.types import BalanceKey, Observation
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.body import Body, whole
from watcher.sources.mastercard_accounts import (
    ENTRY_KEYS,
    Entry,
    ListingKeys,
    Seen,
    build,
    entry_path,
    plain_account,
    top_key,
)
from watcher.sources.values import EntryError, pausing_collector
from watcher.sources.xml_pattern import NotPlain, PlainFields, plain_listing
from watcher.sources.xmlsafe import parse_untrusted_xml, stream_untrusted_xml

__all__ = ["parse_mastercard_xml"]

_MAX_XML_DEPTH = 8  # an account is three levels deep; deeper is not an account


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
    element: Element, source: str, observed_at: datetime, correlation_id: str, seen: Seen
) -> Observation | BalanceKey | None:
    """The observation of a plain account element, read directly (no dict in between); None for any
    other element, which is then read as its dict shape (_xml_entry, then _account).

    Plain is the documented layout and the sandbox's, exactly: `<account_description>`, `<balance>` with
    `<amount>`, `<currency>`, `<state>`, then `<balance_timestamp>`, `<created_date>`,
    `<non_card_token>`, in that order, each once, without namespaces, the leaves without children (texts
    stripped, attributes ignored, as _xml_value reads them); then the values as plain_account takes
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
    return plain_account(fields, source, observed_at, correlation_id, seen)


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


def _unexpected(top: str, names: Iterable[str]) -> ParseError:
    """A listing root with children other than <account_balance>: the body is refused, naming them."""
    shown = ", ".join(f"<{n}>" for n in sorted(names)[:5])
    return ParseError(f"{top}: expected <account_balance> elements, found {shown}")


class _NotAListing(Exception):
    """The root has a <balance> child: the body is one account spelt directly under the root."""


@pausing_collector
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

    The body is streamed: each account is converted as soon as the parser reaches its end tag, then let
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
        return build(
            _xml_listing(root, children), direct=_plain_xml_account, shape=_xml_entry,
            source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys,
        )
    except _NotAListing:
        return _read_xml_tree(
            whole(body), source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys
        )


def _read_pattern(
    body: Body, *, source: str, observed_at: datetime, correlation_id: str, keys: ListingKeys | None = None
) -> ParsedBalances:
    """The body read by the pattern (xml_pattern); NotPlain, with nothing recorded, when it is not exactly
    the documented layout (build gives the source its keys only once every account is read)."""
    root, accounts = plain_listing(body)
    prefix = f"{root}.account_balance"
    return build(
        ((prefix, i, fields) for i, fields in enumerate(accounts)),
        direct=plain_account, shape=lambda fields, _path: _fields_shape(fields),
        source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys,
    )


def _xml_listing(root: Element, children: Iterator[Element]) -> Iterator[tuple[str, int, Element]]:
    """The entries of the root's <account_balance> children, each as its end tag is read: the element
    itself, which build converts before the next one is read.

    What a whole tree would show is kept: a fault of the document anywhere is raised before a wrong root
    or an unexpected child is reported (the rest of the body is read first), and _NotAListing as soon
    as a <balance> child is read (the caller reads the body again, whole).
    """
    try:
        top = top_key([_local(root.tag)], "root element")
    except ParseError:
        for _ in children:  # a fault of the document comes first
            pass
        raise
    unexpected: set[str] = set()
    prefixes = {name: f"{top}.{name}" for name in ENTRY_KEYS}  # one string each, not one per child
    for i, child in enumerate(children):
        prefix = prefixes.get(child.tag)  # an entry without a namespace, the common case: no _local
        if prefix is not None:
            if not unexpected:
                yield prefix, i, child  # converted by build, before the next child is read
            continue
        name = _local(child.tag)
        if name == "balance":
            raise _NotAListing
        if name not in ENTRY_KEYS:
            unexpected.add(name)
        elif not unexpected:  # after one unexpected child the body is refused: nothing more to convert
            yield prefixes[name], i, child  # converted by build, before the next child is read
    if unexpected:
        raise _unexpected(top, unexpected)


def _read_xml_tree(
    body: bytes, *, source: str, observed_at: datetime, correlation_id: str, keys: ListingKeys | None = None
) -> ParsedBalances:
    root = parse_untrusted_xml(body)
    top = top_key([_local(root.tag)], "root element")
    children = [c for c in root if isinstance(c.tag, str)]
    names = {_local(c.tag) for c in children}
    entries: list[Entry]
    if "balance" in names:
        # The account's fields directly under the root, as the JSON listing-with-an-object shape.
        entries = [(top, None, _xml_entry(root, top))]
    elif names - set(ENTRY_KEYS):
        raise _unexpected(top, names - set(ENTRY_KEYS))
    else:
        entries = []
        for i, child in enumerate(children):
            prefix = f"{top}.{_local(child.tag)}"
            entries.append((prefix, i, _xml_entry(child, entry_path(prefix, i))))
    return build(entries, source=source, observed_at=observed_at, correlation_id=correlation_id, keys=keys)
