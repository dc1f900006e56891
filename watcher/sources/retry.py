"""When a failed attempt is worth another, and how long to wait first.

Only idempotent GETs are retried (and the token refresh's one retried call). Waits are exponential
backoff with full jitter (a uniform draw in [0, min(max, base * 2^(n-1))]), so that many clients that
failed together do not come back together; a `Retry-After` from the server is a floor under that wait.
Pure: the random draw and the clock are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from random import Random

from watcher.config import MastercardSendConfig, MyposPsd2Config
from watcher.sources.transport import Failure, Response

# Statuses worth another attempt: the server is overloaded, restarting or asking us to slow down.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# A Retry-After beyond a day is nonsense or hostile; it is read as a day.
_RETRY_AFTER_CEILING_S = 86_400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one source retries: `attempts` in all (1: never), backoff from `base_s` doubling up to
    `max_s`, and at most `retry_after_max_s` spent waiting for one Retry-After."""

    attempts: int
    base_s: float
    max_s: float
    retry_after_max_s: float

    @classmethod
    def of(cls, config: MastercardSendConfig | MyposPsd2Config) -> RetryPolicy:
        """The policy a source's config asks for."""
        return cls(
            attempts=config.retries,
            base_s=config.backoff_base.total_seconds(),
            max_s=config.backoff_max.total_seconds(),
            retry_after_max_s=config.retry_after_max.total_seconds(),
        )

    def backoff_s(self, failed_attempts: int, rng: Random) -> float:
        """The full-jitter wait after the `failed_attempts`-th failure (1 for the first)."""
        ceiling = min(self.max_s, self.base_s * math.pow(2, max(0, failed_attempts - 1)))
        return rng.uniform(0.0, ceiling)


def is_retryable(got: Response | Failure) -> bool:
    """A connection error, a body cut short, a 5xx that may pass, or a 429."""
    if isinstance(got, Failure):
        return got.retryable
    return got.status in RETRYABLE_STATUSES


def counts_against_breaker(got: Response | Failure) -> bool:
    """Whether the answer says the API itself is failing (as opposed to our request being refused)."""
    if isinstance(got, Failure):
        return got.outcome in ("network_error", "timeout")
    return got.status >= 500 or got.status == 429


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date; None when absent or
    unreadable. A date in the past is 0; anything beyond a day is read as a day."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return min(float(int(text[:12])), _RETRY_AFTER_CEILING_S)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000" per RFC 5322: UTC without a claim about local time
        moment = moment.replace(tzinfo=UTC)
    try:
        seconds = (moment - now).total_seconds()
    except OverflowError:
        return None
    return min(max(0.0, seconds), _RETRY_AFTER_CEILING_S)


def retry_after_of(got: Response | Failure, now: datetime) -> float | None:
    """The Retry-After of an answer that asked to slow down (429 or 503), in seconds; else None."""
    if isinstance(got, Failure) or got.status not in (429, 503):
        return None
    return parse_retry_after(got.headers.get("Retry-After"), now)
