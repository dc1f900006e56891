"""myPOS PSD2 card account balances (Berlin Group style): the parser and the source.

Amounts arrive as JSON numbers (`120.260`) and are read as exact Decimals, keeping their scale, and
signed: a negative amount is a negative balance (there is no separate state as with Mastercard).
"""

from __future__ import annotations

import re
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from urllib.parse import quote

import aiohttp

from rules.types import Balance, BalanceKey, Observation
from watcher.config import ConfigError, MyposPsd2Config
from watcher.sources import transport
from watcher.sources.base import FetchOutcome, FetchResult, ParsedBalances, ParseError
from watcher.sources.values import EntryError, finish, load_json, read_amount, read_currency, show

PROVIDER = "mypos-psd2"
_BODY_LIMIT = 1024 * 1024  # a few balances of one card account
# balanceType is part of the account key: a plain identifier such as "available" or "closingBooked".
_BALANCE_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")

Clock = Callable[[], datetime]


def _entry(
    raw: object,
    path: str,
    *,
    source: str,
    account_number: str,
    observed_at: datetime,
    correlation_id: str,
    extra: tuple[tuple[str, str], ...],
) -> Observation:
    if not isinstance(raw, dict):
        raise EntryError(path, f"expected a balance object, found {show(raw)}")
    kind = raw.get("balanceType")
    if not isinstance(kind, str) or not _BALANCE_TYPE.fullmatch(kind):
        raise EntryError(f"{path}.balanceType", f"expected a type such as 'available', found {show(kind)}")
    where = f"{path} ({kind})"
    # Liberal: the Berlin Group standard nests amount and currency in balanceAmount.
    money, money_path = raw, where
    if isinstance(raw.get("balanceAmount"), dict) and "amount" not in raw:
        money, money_path = raw["balanceAmount"], f"{where}.balanceAmount"
    if "amount" not in money:
        raise EntryError(f"{money_path}.amount", "missing")
    amount = read_amount(money["amount"], f"{money_path}.amount", signed=True)
    currency = read_currency(money.get("currency"), f"{money_path}.currency")
    return Observation(
        key=BalanceKey(source, account_number, kind),
        provider=PROVIDER,
        balance=Balance(amount=amount, currency=currency, state=None, balance_type=kind),
        observed_at=observed_at,
        correlation_id=correlation_id,
        extra=extra,
    )


def parse_mypos_json(
    body: bytes, *, source: str, account_number: str, observed_at: datetime, correlation_id: str
) -> ParsedBalances:
    """Read `{"maskedPan": ..., "balances": [{"amount", "currency", "balanceType"}, ...]}`.

    Each balance type is tracked on its own (key: source, account number, balanceType); a bad entry is
    rejected without losing the others. Raises ParseError when no entry is usable.
    """
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ParseError(f"top level: expected a JSON object, found {show(doc)}")
    if "balances" not in doc:
        raise ParseError("balances: missing")
    balances = doc["balances"]
    if isinstance(balances, dict):
        balances = [balances]  # liberal: one balance object in place of an array
    if not isinstance(balances, list):
        raise ParseError(f"balances: expected an array, found {show(balances)}")
    masked = doc.get("maskedPan")
    extra = (("maskedPan", masked),) if isinstance(masked, str) else ()
    results: list[tuple[str, Observation | EntryError]] = []
    for i, raw in enumerate(balances):
        path = f"balances[{i}]"
        try:
            obs = _entry(
                raw,
                path,
                source=source,
                account_number=account_number,
                observed_at=observed_at,
                correlation_id=correlation_id,
                extra=extra,
            )
        except EntryError as exc:
            results.append((path, exc))
        else:
            results.append((path, obs))
    return finish(results)


def describe_error_body(body: bytes | None) -> str:
    """The codes and texts of a Berlin Group error body, `{"tppMessages": [{"code", "text"}]}`; "" if none."""
    if not body:
        return ""
    try:
        doc = load_json(body)
    except ParseError:
        return ""
    messages = doc.get("tppMessages") if isinstance(doc, dict) else None
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        return ""
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        fields = [message.get(k) for k in ("code", "text")]
        part = ": ".join(v for v in fields if isinstance(v, str) and v)
        if part:
            parts.append(part)
    return transport.clean("; ".join(parts), 500)


def _client_tls(config: MyposPsd2Config) -> ssl.SSLContext | None:
    """The TLS context with the client certificate (a QWAC in production), loaded once."""
    if config.client_cert_path is None:
        if config.client_key_path is not None:
            raise ConfigError(f"source {config.name!r}: client_key_path is set but client_cert_path is not")
        return None
    context = ssl.create_default_context()
    try:
        context.load_cert_chain(config.client_cert_path, config.client_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"source {config.name!r}: cannot load the client certificate {config.client_cert_path}"
            + (f" with key {config.client_key_path}" if config.client_key_path else "")
            + f": {exc}"
        ) from None
    return context


class MyposPsd2Source:
    """Polls myPOS PSD2 card account balances; `fetch` never raises for a failed call."""

    def __init__(
        self,
        config: MyposPsd2Config,
        session: aiohttp.ClientSession,
        clock: Clock = transport.utc_now,
    ) -> None:
        if any(not number for number in config.account_numbers):
            raise ValueError(f"source {config.name!r}: account_numbers contains an empty account number")
        self._config = config
        self._session = session
        self._clock = clock
        self._tls = _client_tls(config)

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
        """One call per configured card account."""
        return tuple(self._config.account_numbers)

    def url_for(self, account_number: str) -> str:
        """The exact URL of one call, percent-encoded."""
        return f"{self._config.base_url}/v1/card-accounts/{quote(account_number, safe='')}/balances"

    async def fetch(self, target: str) -> FetchResult:
        """One GET with a fresh X-Request-ID, which is also the call's correlation id."""
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        headers = {
            "X-Request-ID": request_id,
            "Consent-ID": self._config.consent_id.get_secret_value(),
            "Authorization": f"Bearer {self._config.access_token.get_secret_value()}",
            "API-Key": self._config.api_key.get_secret_value(),
            "Accept": "application/json",
        }
        got = await transport.get(
            self._session,
            self.url_for(target),
            headers=headers,
            timeout_s=self._config.timeout.total_seconds(),
            limit=_BODY_LIMIT,
            ssl=self._tls,
        )
        status = None if isinstance(got, transport.Failure) else got.status

        def done(
            outcome: FetchOutcome,
            error: str | None = None,
            observations: tuple[Observation, ...] = (),
            rejected: tuple[str, ...] = (),
        ) -> FetchResult:
            return transport.finished(
                self.name,
                target,
                started,
                outcome,
                correlation_id=request_id,
                http_status=status,
                error=error,
                observations=observations,
                rejected=rejected,
            )

        if isinstance(got, transport.Failure):
            return done(got.outcome, got.error)
        if got.status != 200:
            detail = describe_error_body(got.body)
            error = f"HTTP {got.status} {transport.clean(got.reason, 80)}".rstrip()
            return done("http_error", f"{error}: {detail}" if detail else error)
        echoed = got.headers.get("X-Request-ID")
        if echoed is not None and echoed.strip().lower() != request_id:
            # The answer may belong to another request (a confused proxy or cache): do not use it.
            return done(
                "bad_response",
                f"X-Request-ID mismatch: sent {request_id}, the answer echoes {show(echoed)}",
            )
        if got.body is None:
            return done("bad_response", transport.too_large(_BODY_LIMIT))
        if not transport.media_type_is(got.content_type, "json"):
            shown = transport.clean(got.content_type, 80) or "none"
            return done("bad_response", f"asked for application/json, got Content-Type {shown}")
        try:
            parsed = parse_mypos_json(
                got.body,
                source=self.name,
                account_number=target,
                observed_at=self._clock(),
                correlation_id=request_id,
            )
        except ParseError as exc:
            return done("bad_response", str(exc))
        return done("ok", observations=parsed.observations, rejected=parsed.rejected)
