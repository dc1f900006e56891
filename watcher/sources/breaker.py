"""A per-source circuit breaker: back a failing API off instead of hammering it.

closed: calls go through; `threshold` failed calls in a row open it. open: calls are refused at once
for `cooldown_s`. half-open: after the cool-down one trial call goes through (the others are still
refused); its success closes the breaker, its failure opens it for another cool-down. A server's
Retry-After longer than a call may wait holds the breaker open until then (`hold`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """The breaker of one source; every call asks `admit` first and reports how it went."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or cooldown_s <= 0:
            raise ValueError("a breaker needs a threshold of at least 1 and a positive cool-down")
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None  # set while open or half-open
        self._held_until = 0.0  # a server's Retry-After; a success elsewhere does not lift it
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """closed, open (refusing) or half_open (the cool-down is over; a trial call may go)."""
        now = self._clock()
        if now < self._held_until or (self._open_until is not None and now < self._open_until):
            return "open"
        return "closed" if self._open_until is None else "half_open"

    @property
    def consecutive_failures(self) -> int:
        """Failed calls since the last success."""
        return self._failures

    def why_open(self) -> str:
        """Why calls are being refused, for the error text of a refused call."""
        if self._clock() < self._held_until:
            return "the server asked to wait (Retry-After)"
        return f"{self._failures} failed calls in a row"

    def wait_s(self) -> float:
        """Seconds until a call would be admitted (0 when closed or half-open; a trial in flight aside)."""
        until = max(self._held_until, self._open_until or 0.0)
        return max(0.0, until - self._clock())

    def admit(self) -> float | None:
        """None: go ahead (and report the outcome). Else the seconds until the breaker lets one through.

        In half-open state only the first caller is admitted, as the trial.
        """
        now = self._clock()
        if now < self._held_until:
            return self._held_until - now
        if self._open_until is None:
            return None
        if now < self._open_until:
            return self._open_until - now
        if self._trial_in_flight:
            return self._cooldown_s  # as long as the trial takes: a cool-down is the honest bound
        self._trial_in_flight = True
        return None

    def record_success(self) -> None:
        """The API answered: close."""
        self._failures = 0
        self._open_until = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """The API failed a call (after its retries): count it; open at the threshold, or again after a
        failed trial."""
        self._failures += 1
        if self._trial_in_flight or self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown_s
        self._trial_in_flight = False

    def record_abandoned(self) -> None:
        """An admitted call ended without a verdict (cancelled, or refused before sending): free the trial."""
        self._trial_in_flight = False

    def hold(self, seconds: float) -> None:
        """Refuse every call for `seconds` (a server's Retry-After), unless already held for longer."""
        self._held_until = max(self._held_until, self._clock() + seconds)
