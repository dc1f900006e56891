"""Mastercard Send Account Balance: the JSON and XML parsers, and the OAuth1-signed source.

Both endpoints are handled: one account (`.../non-card-tokens/{token}/account-balance`) and every
account of the partner (`.../account-balances`). The documented samples spell the top-level key two ways
(`account_balances`, `account-balances`); both are read in JSON and in XML.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import quote
from xml.etree.ElementTree import Element

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey, Observation
from watcher.config import MastercardSendConfig
from watcher.signing import authorization_header
from watcher.sources import transport
from watcher.sources.base import FetchOutcome, FetchResult, ParsedBalances, ParseError
from watcher.sources.guard import CallGuard, Refusal
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
LISTING = "*"
_TOP_KEYS = ("account_balances", "account-balances")
_ENTRY_KEYS = ("account_balance", "account-balance")
_STATES = (IN_CREDIT, IN_DEBIT)
_MISSING = object()
# One account is a few hundred bytes; a partner listing may be long, but not unbounded: its limit is the
# source's max_listing_bytes.
_ACCOUNT_BODY_LIMIT = 1024 * 1024
_MAX_XML_DEPTH = 8  # an account is three levels deep; deeper is not an account
_ACCEPT = {"json": "application/json", "xml": "application/xml"}

Clock = Callable[[], datetime]


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
        shown = ", ".join(f"<{n}>" for n in sorted(unexpected)[:5])
        raise ParseError(f"{top}: expected <account_balance> elements, found {shown}")


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
        shown = ", ".join(f"<{n}>" for n in sorted(names - set(_ENTRY_KEYS))[:5])
        raise ParseError(f"{top}: expected <account_balance> elements, found {shown}")
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


# --- the source --------------------------------------------------------------------------------------


def _segment(value: str) -> str:
    """Percent-encode one path segment.

    ':' stays literal: RFC 3986 allows it in a segment, every token has one, and a gateway that checks
    the signature against the decoded path or the raw one gets the same string either way.
    """
    if value in (".", ".."):
        return value.replace(".", "%2E")  # else dot-segment removal would change the path
    return quote(value, safe=":")


class MastercardSendSource:
    """Polls Mastercard Send account balances; `fetch` never raises for a failed call."""

    def __init__(
        self,
        config: MastercardSendConfig,
        session: aiohttp.ClientSession,
        signing_key: RSAPrivateKey,
        clock: Clock = transport.utc_now,
        *,
        guard: CallGuard | None = None,
        sign_pool: Executor | None = None,
    ) -> None:
        """`sign_pool`: the threads that compute the OAuth1 signatures (the composition root owns it and
        shuts it down); None signs on the event loop."""
        if any(not token for token in config.non_card_tokens):
            raise ValueError(f"source {config.name!r}: non_card_tokens contains an empty token")
        self._config = config
        self._session = session
        self._key = signing_key
        self._clock = clock
        self._parse = parse_mastercard_json if config.format == "json" else parse_mastercard_xml
        self._partner_url = f"{config.resolved_base_url}/v1/partners/{_segment(config.partner_id)}"
        self._timeouts = transport.Timeouts.of(config)
        self._guard = guard if guard is not None else CallGuard.of(config, clock)
        self._sign_pool = sign_pool

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def max_concurrency(self) -> int:
        return self._config.max_concurrency

    def targets(self) -> Sequence[str]:
        """Each configured token, or one partner-wide listing ("*") when none is configured."""
        return tuple(self._config.non_card_tokens) or (LISTING,)

    def url_for(self, target: str) -> str:
        """The exact URL of one call, percent-encoded; it is signed and sent as it is."""
        if target == LISTING:
            return f"{self._partner_url}/account-balances"
        return f"{self._partner_url}/non-card-tokens/{_segment(target)}/account-balance"

    async def _authorization(self, url: str) -> str:
        """The OAuth1 `Authorization` header for a GET of `url`, signed on the pool when there is one.

        RSA signing is CPU work (about 0.4 to 0.9 ms); `cryptography` releases the GIL while it runs,
        so on the pool the event loop goes on receiving answers meanwhile, and two threads sign on two
        cores at once.
        """
        consumer_key = self._config.consumer_key.get_secret_value()
        if self._sign_pool is None:
            return authorization_header(url, "GET", consumer_key, self._key)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._sign_pool, authorization_header, url, "GET", consumer_key, self._key
        )

    def next_allowed(self, target: str, now: datetime) -> datetime | None:
        """`now`, or when the circuit breaker lets calls through again."""
        return now + timedelta(seconds=self._guard.breaker.wait_s())

    async def fetch(self, target: str) -> FetchResult:
        """One call: signed GETs (a fresh nonce per attempt) through the breaker, rate limit and retries."""
        started = time.monotonic()
        url = self.url_for(target)
        fmt = self._config.format
        limit = self._config.max_listing_bytes if target == LISTING else _ACCOUNT_BODY_LIMIT

        async def send() -> transport.Response | transport.Failure:
            # Signed per attempt (a fresh nonce and timestamp), the very URL string that is sent.
            headers = {"Accept": _ACCEPT[fmt], "Authorization": await self._authorization(url)}
            return await transport.get(
                self._session, url, headers=headers, timeouts=self._timeouts, limit=limit
            )

        called = await self._guard.call(send)
        if isinstance(called, Refusal):
            return transport.finished(
                self.name, target, started, called.outcome, error=called.error,
                retry_after_s=called.retry_after_s, attempts=0,
            )
        got = called.got
        after = f" (after {called.attempts} attempts)" if called.attempts > 1 else ""
        note = f"; {called.note}" if called.note else ""
        if isinstance(got, transport.Failure):
            return transport.finished(
                self.name, target, started, got.outcome, error=got.error + after + note,
                retry_after_s=called.retry_after_s, attempts=called.attempts,
            )
        correlation = transport.clean(got.headers.get("correlation-id", ""), 200)
        status = got.status

        def done(
            outcome: FetchOutcome,
            error: str | None = None,
            observations: tuple[Observation, ...] = (),
            rejected: tuple[str, ...] = (),
            reason_code: str | None = None,
        ) -> FetchResult:
            return transport.finished(
                self.name,
                target,
                started,
                outcome,
                correlation_id=correlation,
                http_status=status,
                error=error,
                observations=observations,
                rejected=rejected,
                reason_code=reason_code,
                retry_after_s=called.retry_after_s,
                attempts=called.attempts,
            )

        if status != 200:
            detail = read_mastercard_error(got.body)
            error = f"HTTP {status} {transport.clean(got.reason, 80)}".rstrip()
            error += f": {detail.text}" if detail is not None and detail.text else ""
            code = detail.reason_code if detail is not None else None
            return done("http_error", error + after + note, reason_code=code)
        if got.body is None:
            return done("bad_response", transport.too_large(limit))
        if not transport.media_type_is(got.content_type, fmt):
            shown = transport.clean(got.content_type, 80) or "none"
            return done("bad_response", f"asked for {_ACCEPT[fmt]}, got Content-Type {shown}")
        try:
            parsed = self._parse(
                got.body, source=self.name, observed_at=self._clock(), correlation_id=correlation
            )
        except ParseError as exc:
            return done("bad_response", str(exc))
        observations, rejected = parsed.observations, parsed.rejected
        if target != LISTING:
            # A balance attributed to the wrong account is worse than none: keep only the asked one.
            others = [o for o in observations if o.key.account != target]
            observations = tuple(o for o in observations if o.key.account == target)
            rejected += tuple(f"account {show(o.key.account)} is not the one asked for" for o in others)
            if not observations:
                why = "; ".join(rejected) or "it was empty"
                return done("bad_response", f"no balance for the asked account in the answer ({why})")
        return done("ok", observations=observations, rejected=rejected)
