"""A token bucket per source: at most `rate` requests a second on average, bursts up to `burst`.

Each request takes a token; when none is left it reserves the next one and sleeps until it is due, so
waiting requests go out in the order they asked, spaced 1/rate apart, with no lock and no busy loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """The rate limit of one source. `acquire` before every request sent, retries included."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"a rate limit is a positive number of requests per second, not {rate_per_s}")
        self._rate = rate_per_s
        # A tenth of a second's worth may go at once (below ten a second, one at a time): a second's worth
        # at the start of every round ran the daemon flat out for its first half second, the API's
        # spike arrest sees it too, and the responses queued for up to 200 ms at 250/s (bench/README.md).
        self._burst = float(burst if burst is not None else max(1, math.floor(rate_per_s / 10)))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self._burst  # may go negative: tokens reserved by requests now waiting
        self._updated = clock()

    @property
    def rate_per_s(self) -> float:
        """The average rate allowed."""
        return self._rate

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    async def acquire(self) -> float:
        """Take one token, waiting for it if needed; returns the seconds waited (0 when none)."""
        self._refill()
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        wait_s = -self._tokens / self._rate
        try:
            await self._sleep(wait_s)
        except asyncio.CancelledError:
            self._refill()
            self._tokens += 1.0  # give the reservation back: the request is not going out
            raise
        return wait_s
