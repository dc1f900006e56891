"""Mastercard Send Account Balance: the OAuth1-signed source, for one account or the partner's listing.

Its answers are read by watcher.sources.mastercard_json and mastercard_xml; their public names are
re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from rules.types import BalanceKey, KnownBalance, Observation
from watcher.config import MastercardSendConfig
from watcher.signers import OffLoopSigner, SigningError
from watcher.signing import authorization_header
from watcher.sources import transport
from watcher.sources.base import FetchOutcome, FetchResult, ParseError, QuietUnchanged
from watcher.sources.body import Spool, whole
from watcher.sources.guard import CallGuard, Exchange, Refusal
from watcher.sources.mastercard_accounts import PROVIDER, ListingKeys
from watcher.sources.mastercard_json import parse_mastercard_json
from watcher.sources.mastercard_xml import parse_mastercard_xml
from watcher.sources.provider_errors import read_mastercard_error
from watcher.sources.values import show

__all__ = [
    "LISTING",
    "PROVIDER",
    "MastercardSendSource",
    "describe_error_body",
    "parse_mastercard_json",
    "parse_mastercard_xml",
]

LISTING = "*"
# One account is a few hundred bytes; a partner listing may be long, but not unbounded: its limit is the
# source's max_listing_bytes.
_ACCOUNT_BODY_LIMIT = 1024 * 1024
_ACCEPT = {"json": "application/json", "xml": "application/xml"}

Clock = Callable[[], datetime]


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
        signer: OffLoopSigner | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        """`signer`: the threads or processes that compute the OAuth1 signatures (the composition root
        owns them and shuts them down); None signs on the event loop. `spool_dir`: a disk-backed folder
        where a large listing body is spooled while it is parsed (see watcher.sources.body); None keeps
        it in memory."""
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
        self._signer = signer
        self._listing_keys = ListingKeys()
        # One key per configured account, taken by its every answer and its state (see ListingKeys).
        self._account_keys = ListingKeys.of_accounts(config.name, config.non_card_tokens)
        self._spool = Spool(spool_dir) if spool_dir is not None else None

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
        """The OAuth1 `Authorization` header for a GET of `url`, signed by the signer when there is one.

        RSA signing is CPU work (about 0.4 to 0.9 ms); with a signer the event loop goes on receiving
        answers meanwhile.
        """
        consumer_key = self._config.consumer_key.get_secret_value()
        if self._signer is None:
            return authorization_header(url, "GET", consumer_key, self._key)
        return await self._signer.authorization_header(url, "GET", consumer_key, self._key)

    def share_known(self, known: Callable[[BalanceKey], KnownBalance | None], quiet: QuietUnchanged) -> None:
        """An unchanged account takes the known Balance and description objects (see ListingKeys): the
        poller hands over the state store's look-up. A listing leaves out the unchanged accounts for
        which `quiet` says nothing would follow; an account polled on its own is always observed (its
        answer is that one balance)."""
        self._listing_keys.known = self._account_keys.known = known
        self._listing_keys.quiet = quiet

    def next_allowed(self, target: str, now: datetime) -> datetime | None:
        """`now`, or when the circuit breaker lets calls through again."""
        return now + timedelta(seconds=self._guard.breaker.wait_s())

    async def fetch(self, target: str) -> FetchResult:
        """One call: signed GETs (a fresh nonce per attempt) through the breaker, rate limit and retries."""
        started = time.monotonic()
        url = self.url_for(target)
        fmt = self._config.format
        limit = self._config.max_listing_bytes if target == LISTING else _ACCOUNT_BODY_LIMIT
        spool = self._spool if target == LISTING else None  # an account's answer never touches the disk

        async def send() -> transport.Response | transport.Failure:
            # Signed per attempt (a fresh nonce and timestamp), the very URL string that is sent.
            try:
                authorization = await self._authorization(url)
            except (SigningError, ValueError) as exc:  # our side failed; the API saw nothing: no retry
                return transport.Failure("bad_response", f"could not sign the request: {exc}")
            headers = {"Accept": _ACCEPT[fmt], "Authorization": authorization}
            return await transport.get(
                self._session, url, headers=headers, timeouts=self._timeouts, limit=limit, spool=spool
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
        try:
            return self._answered(target, started, called, got, limit)
        finally:
            got.close()  # the spool file, if the body was spooled

    def _answered(
        self, target: str, started: float, called: Exchange, got: transport.Response, limit: int
    ) -> FetchResult:
        """The FetchResult of the answer `got` (`called`'s last): its status, body and parse."""
        after = f" (after {called.attempts} attempts)" if called.attempts > 1 else ""
        note = f"; {called.note}" if called.note else ""
        fmt = self._config.format
        correlation = transport.clean(got.headers.get("correlation-id", ""), 200)
        status = got.status

        def done(
            outcome: FetchOutcome,
            error: str | None = None,
            observations: tuple[Observation, ...] = (),
            rejected: tuple[str, ...] = (),
            reason_code: str | None = None,
            accounts: Mapping[str, BalanceKey] | None = None,
            unchanged: int = 0,
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
                accounts=accounts,
                unchanged=unchanged,
            )

        if status != 200:
            body = got.content  # an error body over the spool's threshold is rare: read back whole
            detail = read_mastercard_error(whole(body) if body is not None else None)
            error = f"HTTP {status} {transport.clean(got.reason, 80)}".rstrip()
            error += f": {detail.text}" if detail is not None and detail.text else ""
            code = detail.reason_code if detail is not None else None
            return done("http_error", error + after + note, reason_code=code)
        body = got.content
        if body is None:
            return done("bad_response", transport.too_large(limit))
        if not transport.media_type_is(got.content_type, fmt):
            shown = transport.clean(got.content_type, 80) or "none"
            return done("bad_response", f"asked for {_ACCEPT[fmt]}, got Content-Type {shown}")
        try:
            parsed = self._parse(
                body, source=self.name, observed_at=self._clock(), correlation_id=correlation,
                keys=self._listing_keys if target == LISTING else self._account_keys,
            )
        except ParseError as exc:
            return done("bad_response", str(exc))
        except OSError as exc:  # only a spooled body is read from a file
            return done("bad_response", f"could not read the spooled response body back: {exc}")
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
        # The listing's accounts as its parse indexed them (ListingKeys.latest): the poller needs no copy.
        return done(
            "ok", observations=observations, rejected=rejected, accounts=self._listing_keys.latest,
            unchanged=parsed.unchanged,
        )
