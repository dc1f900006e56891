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
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

import aiohttp

from rules.types import Balance, BalanceKey, Observation
from watcher.config import ConfigError, MyposPsd2Config
from watcher.sources import transport
from watcher.sources.base import FetchOutcome, FetchResult, ParsedBalances, ParseError
from watcher.sources.budget import AccessBudget, AccessLedger, MemoryAccessLedger
from watcher.sources.guard import CallGuard, Exchange, Refusal
from watcher.sources.oauth2 import AccessToken
from watcher.sources.provider_errors import ProviderError, read_berlin_group_error
from watcher.sources.retry import is_retryable
from watcher.sources.values import EntryError, finish, load_json, read_amount, read_currency, show

PROVIDER = "mypos-psd2"
# Berlin Group codes: the token is no longer good (refresh it), or the consent is (stop polling).
TOKEN_CODES = frozenset({"TOKEN_EXPIRED", "TOKEN_INVALID"})
CONSENT_WIDE_CODES = frozenset({"CONSENT_EXPIRED", "CONSENT_UNKNOWN"})
REVOKING_CODES = CONSENT_WIDE_CODES | {"CONSENT_INVALID"}
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
    """A Berlin Group error body (`{"tppMessages": [{"code", "text"}]}`, problem+json or OAuth2's
    `{"error", "error_description"}`) as `code: text` parts joined by "; "; "" if it is not one."""
    error = read_berlin_group_error(body)
    return error.text if error is not None else ""


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


def _token_expired(got: transport.Response, error: ProviderError | None) -> bool:
    """The API says the bearer token is no longer good: TOKEN_EXPIRED or TOKEN_INVALID, or an RFC 6750
    `WWW-Authenticate: Bearer error="invalid_token"`."""
    if got.status != 401:
        return False
    if error is not None and set(error.codes) & TOKEN_CODES:
        return True
    return 'error="invalid_token"' in got.headers.get("WWW-Authenticate", "").replace(" ", "")


def _worth_retrying(got: transport.Response | transport.Failure) -> bool:
    """As for every source, except the bank's own "access budget used up": another try only spends more."""
    if isinstance(got, transport.Response) and got.status == 429:
        error = read_berlin_group_error(got.body)
        if error is not None and "ACCESS_EXCEEDED" in error.codes:
            return False
    return is_retryable(got)


@dataclass(frozen=True, slots=True)
class Revocation:
    """The provider withdrew access: its code and the error line, and when."""

    reason_code: str
    error: str
    at: datetime


class MyposPsd2Source:
    """Polls myPOS PSD2 card account balances; `fetch` never raises for a failed call."""

    def __init__(
        self,
        config: MyposPsd2Config,
        session: aiohttp.ClientSession,
        clock: Clock = transport.utc_now,
        *,
        ledger: AccessLedger | None = None,
        guard: CallGuard | None = None,
    ) -> None:
        if any(not number for number in config.account_numbers):
            raise ValueError(f"source {config.name!r}: account_numbers contains an empty account number")
        if (config.token_url is None) != (config.refresh_token is None):
            raise ConfigError(
                f"source {config.name!r}: token_url and refresh_token go together; set both or neither"
            )
        self._config = config
        self._session = session
        self._clock = clock
        self._tls = _client_tls(config)
        self._timeouts = transport.Timeouts.of(config)
        self._guard = guard if guard is not None else CallGuard.of(config, clock)
        self._budget: AccessBudget | None = None
        if config.daily_access_budget > 0:
            kept = ledger if ledger is not None else MemoryAccessLedger()
            self._budget = AccessBudget(config.name, config.daily_access_budget, kept)
        self._token = AccessToken(
            config.access_token,
            session=session,
            token_url=config.token_url,
            refresh_token=config.refresh_token,
            client_id=config.client_id,
            client_secret=config.client_secret,
            timeouts=self._timeouts,
            ssl=self._tls,
        )
        # Consent-wide (CONSENT_EXPIRED, CONSENT_UNKNOWN) and per-account (CONSENT_INVALID) withdrawals.
        self._consent_revoked: Revocation | None = None
        self._accounts_revoked: dict[str, Revocation] = {}

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

    def revocation(self, account_number: str) -> Revocation | None:
        """Why the provider no longer lets this account be read, or None."""
        return self._consent_revoked or self._accounts_revoked.get(account_number)

    def next_allowed(self, target: str, now: datetime) -> datetime | None:
        """None once access is revoked; else `now`, or later for the access budget or the breaker."""
        if self.revocation(target) is not None:
            return None
        allowed = now + timedelta(seconds=self._guard.breaker.wait_s())
        if self._budget is not None:
            allowed = max(allowed, self._budget.next_allowed(target, now))
        return allowed

    def _budget_refusal(self, target: str, now: datetime) -> Refusal | None:
        if self._budget is None or self._budget.remaining(target, now) > 0:
            return None
        allowed = self._budget.next_allowed(target, now)
        reason = (
            f"not called: the daily access budget of account {target} is used up ({self._budget.per_day} "
            f"in 24 hours, PSD2 RTS art. 36(5)); the next access is allowed at "
            f"{allowed.isoformat(timespec='seconds')}"
        )
        return Refusal("budget_exhausted", reason, (allowed - now).total_seconds())

    async def fetch(self, target: str) -> FetchResult:
        """One call, a fresh X-Request-ID per attempt (the last one is the correlation id).

        Refused without a request when access was revoked or the budget is used up. When the API says
        the token expired, the token is refreshed (if configured) and the call made once more.
        """
        started = time.monotonic()
        revoked = self.revocation(target)
        if revoked is not None:
            error = (
                f"not called: the provider revoked access at {revoked.at.isoformat(timespec='seconds')} "
                f"({revoked.error}); polling resumes when the config is reloaded with a new consent"
            )
            return transport.finished(
                self.name, target, started, "access_revoked", error=error,
                reason_code=revoked.reason_code, access_revoked=True, attempts=0,
            )
        refused = self._budget_refusal(target, self._clock())
        if refused is not None:
            return self._refused(target, started, refused)
        sent: list[tuple[str, str]] = []  # (X-Request-ID, bearer token) of each attempt

        async def send() -> transport.Response | transport.Failure:
            request_id, token = str(uuid.uuid4()), self._token.value
            sent.append((request_id, token))
            headers = {
                "X-Request-ID": request_id,
                "Consent-ID": self._config.consent_id.get_secret_value(),
                "Authorization": f"Bearer {token}",
                "API-Key": self._config.api_key.get_secret_value(),
                "Accept": "application/json",
            }
            return await transport.get(
                self._session, self.url_for(target), headers=headers, timeouts=self._timeouts,
                limit=_BODY_LIMIT, ssl=self._tls,
            )

        async def gate() -> Refusal | None:
            if self._budget is None:
                return None
            now = self._clock()
            why = await self._budget.spend(target, now)
            return None if why is None else Refusal("budget_exhausted", why)

        called = await self._guard.call(send, gate, retryable=_worth_retrying)
        if isinstance(called, Refusal):
            return self._refused(target, started, called)
        attempts, refresh_note = called.attempts, ""
        got = called.got
        if isinstance(got, transport.Response):
            said = read_berlin_group_error(got.body)
            if _token_expired(got, said) and self._token.can_refresh:
                why_not = await self._token.refresh(sent[-1][1])
                if why_not is not None:
                    refresh_note = f"; {why_not}"
                else:
                    again = await self._guard.call(send, gate, retryable=_worth_retrying)
                    if isinstance(again, Refusal):
                        return self._refused(target, started, again, attempts)
                    called, attempts = again, attempts + again.attempts
                    refresh_note = "; retried once with a refreshed access token"
        return self._result(target, started, called, sent[-1][0], attempts, refresh_note)

    def _refused(self, target: str, started: float, refusal: Refusal, attempts: int = 0) -> FetchResult:
        return transport.finished(
            self.name, target, started, refusal.outcome, error=refusal.error,
            retry_after_s=refusal.retry_after_s, attempts=attempts,
        )

    def _result(
        self, target: str, started: float, called: Exchange, request_id: str, attempts: int, note: str
    ) -> FetchResult:
        """The FetchResult of the call's last exchange."""
        got = called.got
        status = None if isinstance(got, transport.Failure) else got.status
        after = f" (after {attempts} attempts)" if attempts > 1 else ""
        note = (f"; {called.note}" if called.note else "") + note

        def done(
            outcome: FetchOutcome,
            error: str | None = None,
            observations: tuple[Observation, ...] = (),
            rejected: tuple[str, ...] = (),
            reason_code: str | None = None,
            revoked: bool = False,
        ) -> FetchResult:
            return transport.finished(
                self.name, target, started, outcome, correlation_id=request_id, http_status=status,
                error=error, observations=observations, rejected=rejected, reason_code=reason_code,
                access_revoked=revoked, retry_after_s=called.retry_after_s, attempts=attempts,
            )

        if isinstance(got, transport.Failure):
            return done(got.outcome, got.error + after + note)
        if got.status != 200:
            detail = read_berlin_group_error(got.body)
            error = f"HTTP {got.status} {transport.clean(got.reason, 80)}".rstrip()
            error += f": {detail.text}" if detail is not None and detail.text else ""
            code = detail.reason_code if detail is not None else None
            revoking = sorted(set(detail.codes) & REVOKING_CODES) if detail is not None else []
            if revoking:
                self._revoke(target, Revocation(revoking[0], error, self._clock()))
                stop = "; polling of this account stops until the config is reloaded with a new consent"
                return done("access_revoked", f"access revoked: {error}{stop}", reason_code=revoking[0],
                            revoked=True)
            return done("http_error", error + after + note, reason_code=code)
        echoed = got.headers.get("X-Request-ID")
        if echoed is not None and echoed.strip().lower() != request_id:
            # The answer may belong to another request (a confused proxy or cache): do not use it.
            mismatch = f"X-Request-ID mismatch: sent {request_id}, the answer echoes {show(echoed)}"
            return done("bad_response", mismatch)
        if got.body is None:
            return done("bad_response", transport.too_large(_BODY_LIMIT))
        if not transport.media_type_is(got.content_type, "json"):
            shown = transport.clean(got.content_type, 80) or "none"
            return done("bad_response", f"asked for application/json, got Content-Type {shown}")
        try:
            parsed = parse_mypos_json(
                got.body, source=self.name, account_number=target, observed_at=self._clock(),
                correlation_id=request_id,
            )
        except ParseError as exc:
            return done("bad_response", str(exc))
        return done("ok", observations=parsed.observations, rejected=parsed.rejected)

    def _revoke(self, target: str, revocation: Revocation) -> None:
        # An expired or unknown consent is the whole consent's; an invalid one may be this account's only.
        if revocation.reason_code in CONSENT_WIDE_CODES:
            self._consent_revoked = self._consent_revoked or revocation
        else:
            self._accounts_revoked.setdefault(target, revocation)
