"""Every call of one source goes through its CallGuard: circuit breaker, rate limit, retries.

A call is one `fetch`: the guard asks the breaker first (refused at once while it is open), then for
each attempt an optional gate (a PSD2 access budget), a token from the rate limit, and the request.
Retried: connection errors, bodies cut short, 5xx and 429, with full-jitter backoff and any Retry-After
as a floor. The breaker hears the verdict of the whole call, not of each attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from random import Random

from watcher.config import MastercardSendConfig, MyposPsd2Config
from watcher.sources.base import FetchOutcome
from watcher.sources.breaker import CircuitBreaker
from watcher.sources.ratelimit import TokenBucket
from watcher.sources.retry import RetryPolicy, counts_against_breaker, is_retryable, retry_after_of
from watcher.sources.transport import Failure, Response


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the attempts of one call came to: the last answer, and how it got there.

    `retry_after_s` is the last answer's Retry-After; `note` says why retrying stopped before the
    attempts ran out, for the error text.
    """

    got: Response | Failure
    attempts: int
    retry_after_s: float | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A call the guard did not make, and why; `retry_after_s` is when one may succeed."""

    outcome: FetchOutcome
    error: str
    retry_after_s: float | None = None


SendAttempt = Callable[[], Awaitable[Response | Failure]]
# Asked before every attempt: None to go ahead, or the refusal (e.g. the access budget is used up).
AttemptGate = Callable[[], Awaitable[Refusal | None]]


class CallGuard:
    """The breaker, the rate limit and the retry policy of one source."""

    def __init__(
        self,
        source: str,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        limiter: TokenBucket,
        *,
        wall_clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Random | None = None,
    ) -> None:
        self._source = source
        self._policy = policy
        self.breaker = breaker
        self.limiter = limiter
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng if rng is not None else Random()

    @classmethod
    def of(
        cls, config: MastercardSendConfig | MyposPsd2Config, wall_clock: Callable[[], datetime]
    ) -> CallGuard:
        """The guard a source's config asks for."""
        return cls(
            config.name,
            RetryPolicy.of(config),
            CircuitBreaker(config.breaker_threshold, config.breaker_cooldown.total_seconds()),
            TokenBucket(config.max_requests_per_second),
            wall_clock=wall_clock,
        )

    @property
    def policy(self) -> RetryPolicy:
        """How this source retries."""
        return self._policy

    def refusal(self) -> Refusal | None:
        """The circuit_open refusal a call would get now, without taking the half-open trial."""
        wait = self.breaker.wait_s()
        return None if wait <= 0 else self._circuit_open(wait)

    def _circuit_open(self, wait: float) -> Refusal:
        return Refusal(
            "circuit_open",
            f"not called: the circuit breaker of source {self._source!r} is open "
            f"({self.breaker.why_open()}); calls resume in {wait:.1f}s",
            wait,
        )

    async def call(
        self,
        send: SendAttempt,
        gate: AttemptGate | None = None,
        retryable: Callable[[Response | Failure], bool] = is_retryable,
    ) -> Exchange | Refusal:
        """Make one call: its attempts, within the breaker, the rate limit and the gate.

        `retryable` may narrow which answers are tried again (a provider's "do not bother" codes).
        """
        wait = self.breaker.admit()
        if wait is not None:
            return self._circuit_open(wait)
        verdict = False
        try:
            result = await self._attempts(send, gate, retryable)
            if isinstance(result, Exchange):
                if counts_against_breaker(result.got):
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()
                verdict = True
            return result
        finally:
            if not verdict:  # refused by the gate, or cancelled: no word on the API's health
                self.breaker.record_abandoned()

    async def _attempts(
        self, send: SendAttempt, gate: AttemptGate | None, retryable: Callable[[Response | Failure], bool]
    ) -> Exchange | Refusal:
        if gate is not None and (refused := await gate()) is not None:
            return refused
        attempts = 0
        while True:
            await self.limiter.acquire()
            got = await send()
            attempts += 1
            retry_after = retry_after_of(got, self._wall_clock())
            if retry_after is not None:
                # Every call of this source waits, not only this one.
                self.breaker.hold(retry_after)
            if not retryable(got) or attempts >= self._policy.attempts:
                return Exchange(got, attempts, retry_after)
            if retry_after is not None and retry_after > self._policy.retry_after_max_s:
                note = (
                    f"not retried: the server asked to wait {retry_after:g}s, longer than "
                    f"retry_after_max ({self._policy.retry_after_max_s:g}s)"
                )
                return Exchange(got, attempts, retry_after, note)
            try:
                await self._sleep(max(retry_after or 0.0, self._policy.backoff_s(attempts, self._rng)))
                if self.breaker.wait_s() > 0:
                    note = f"not retried: the circuit breaker opened meanwhile ({self.breaker.why_open()})"
                    return Exchange(got, attempts, retry_after, note)
                if gate is not None and (refused := await gate()) is not None:
                    return Exchange(got, attempts, retry_after, f"not retried: {refused.error}")
            except BaseException:  # cancelled while waiting: nobody will see this answer
                _close(got)
                raise
            _close(got)  # the next attempt's answer replaces it (each attempt spools its own body)


def _close(got: Response | Failure) -> None:
    """Give back an answer's spool file, if it has one."""
    if isinstance(got, Response):
        got.close()
