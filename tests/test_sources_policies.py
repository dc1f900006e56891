"""The pure pieces of a good client, without a network: Retry-After, full-jitter backoff, the circuit
breaker's states, the token bucket, the rolling 24-hour access budget, and the token endpoint's answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.sources.base import ParseError
from watcher.sources.breaker import CircuitBreaker
from watcher.sources.budget import WINDOW, AccessBudget, MemoryAccessLedger
from watcher.sources.oauth2 import parse_token_response
from watcher.sources.ratelimit import TokenBucket
from watcher.sources.retry import RetryPolicy, parse_retry_after

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


class ManualClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sleeps:
    """A sleep that records the wait, moves the clock by it and returns at once."""

    clock: ManualClock
    asked: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.clock.now += seconds


# --- Retry-After and backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sun, 22 Nov 2026 04:00:30 GMT", 30.0),
        ("Sunday, 22-Nov-26 04:01:00 GMT", 60.0),  # RFC 850, still allowed to arrive
        ("Sun Nov 22 04:00:10 2026", 10.0),  # asctime
        ("Sat, 21 Nov 2026 04:00:00 GMT", 0.0),  # in the past: go now
        ("999999999999999999999", 86_400.0),  # beyond a day: a day
        ("Fri, 31 Dec 9999 23:59:59 GMT", 86_400.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are digits to str.isdigit, not to HTTP
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    """Retry-After as delay-seconds or an HTTP date (three formats) becomes seconds from now, capped at a
    day; anything else is ignored."""
    assert parse_retry_after(value, T0) == seconds


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_retry_after_never_raises(value: str) -> None:
    """No header text makes Retry-After parsing raise; the answer is None or 0 to a day."""
    seconds = parse_retry_after(value, T0)
    assert seconds is None or 0 <= seconds <= 86_400


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    """Each wait is a uniform draw in [0, min(max, base * 2^(n-1))]: spread out, and never above the cap."""
    policy = RetryPolicy(attempts=10, base_s=0.5, max_s=4.0, retry_after_max_s=60)
    rng = Random(1)
    for failed in range(1, 10):
        ceiling = min(4.0, 0.5 * 2 ** (failed - 1))
        draws = [policy.backoff_s(failed, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.8  # the whole range is used, not a fixed step
        assert min(draws) < ceiling * 0.2


# --- circuit breaker -----------------------------------------------------------------------------------


def test_breaker_opens_after_the_threshold_and_half_opens_after_the_cooldown() -> None:
    """closed -> open after N failures in a row (a success in between resets the count) -> half-open
    after the cool-down, with one trial admitted at a time -> closed on the trial's success."""
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert breaker.admit() is None
        breaker.record_failure()
    breaker.record_success()
    for _ in range(3):
        assert breaker.admit() is None
        breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.admit() == pytest.approx(10)
    clock.now += 4
    assert breaker.admit() == pytest.approx(6)
    clock.now += 6
    assert breaker.state == "half_open"
    assert breaker.admit() is None  # the trial
    assert breaker.admit() is not None  # the others wait for it
    breaker.record_success()
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 0)
    assert breaker.admit() is None


def test_failed_trial_reopens_and_abandoned_trial_frees_the_slot() -> None:
    """A failed trial opens the breaker for a new cool-down; an abandoned one lets the next caller try."""
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.admit() is None
    breaker.record_abandoned()
    assert breaker.admit() is None
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.wait_s() == pytest.approx(5)


def test_hold_refuses_until_retry_after_even_after_a_success() -> None:
    """A server's Retry-After holds every call off; a success that arrives meanwhile does not lift it."""
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=5, cooldown_s=60, clock=clock)
    breaker.hold(30)
    breaker.record_success()
    assert breaker.admit() == pytest.approx(30)
    assert breaker.why_open() == "the server asked to wait (Retry-After)"
    breaker.hold(10)  # a shorter hold does not shorten the longer one
    clock.now += 30
    assert breaker.admit() is None


# --- token bucket --------------------------------------------------------------------------------------


async def test_bucket_allows_a_burst_then_spaces_requests() -> None:
    """A full bucket lets a tenth of a second's worth of requests go at once (40/s: 4); then each waits
    1/rate, in the order they asked."""
    clock = ManualClock()
    sleeps = Sleeps(clock)
    bucket = TokenBucket(40, clock=clock, sleep=sleeps)
    waits = [await bucket.acquire() for _ in range(6)]
    assert waits[:4] == [0.0] * 4
    assert waits[4:] == [pytest.approx(0.025)] * 2
    clock.now += 10  # idle: the bucket refills, but only to its burst
    assert [await bucket.acquire() for _ in range(5)][-1] == pytest.approx(0.025)


async def test_a_round_starts_paced_not_with_a_second_of_requests() -> None:
    """At 250/s, the first 250 requests of a round take about a second, not a moment: 25 go at once,
    the others 4 ms apart."""
    clock = ManualClock()
    sleeps = Sleeps(clock)
    bucket = TokenBucket(250, clock=clock, sleep=sleeps)
    waits = [await bucket.acquire() for _ in range(250)]
    assert waits.count(0.0) == 25
    assert clock.now == pytest.approx(225 / 250)


async def test_below_ten_a_second_the_burst_is_one() -> None:
    """At the default 10/s one request goes at once, the next 0.1 s later."""
    clock = ManualClock()
    sleeps = Sleeps(clock)
    bucket = TokenBucket(10, clock=clock, sleep=sleeps)
    assert [await bucket.acquire() for _ in range(3)] == [0.0, pytest.approx(0.1), pytest.approx(0.1)]


async def test_slow_rate_is_one_at_a_time() -> None:
    """Below one request a second the burst is one: 0.2/s spaces requests 5 s apart."""
    clock = ManualClock()
    sleeps = Sleeps(clock)
    bucket = TokenBucket(0.2, clock=clock, sleep=sleeps)
    assert [await bucket.acquire() for _ in range(3)] == [0.0, pytest.approx(5), pytest.approx(5)]


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_bucket_refuses_a_meaningless_rate(rate: float) -> None:
    """A rate that is not a positive finite number is a programming error, said at once."""
    with pytest.raises(ValueError, match="positive number"):
        TokenBucket(rate)


# --- access budget -------------------------------------------------------------------------------------


async def test_budget_is_a_rolling_24_hours() -> None:
    """At most N accesses in any 24 hours: the (N+1)th is refused until the oldest leaves the window, and
    accesses around midnight count together (not a calendar day)."""
    ledger = MemoryAccessLedger()
    budget = AccessBudget("cards", 4, ledger)
    start = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)
    for minutes in (0, 30, 59, 61):  # two before midnight, two after
        assert await budget.spend("acc", start + timedelta(minutes=minutes)) is None
    now = start + timedelta(hours=2)
    refusal = await budget.spend("acc", now)
    assert refusal is not None
    assert "2026-11-23T23:00:00+00:00" in refusal
    assert budget.remaining("acc", now) == 0
    assert budget.next_allowed("acc", now) == start + WINDOW
    assert budget.next_allowed("acc", start + WINDOW) == start + WINDOW
    assert budget.remaining("acc", start + WINDOW) == 1
    assert budget.remaining("other", now) == 4


async def test_budget_reads_back_what_the_ledger_kept() -> None:
    """A new budget on the same ledger (a restart) counts the accesses of the last 24 hours only."""
    ledger = MemoryAccessLedger()
    for hours in (-30, -23, -1):
        await ledger.record("cards", "acc", T0 + timedelta(hours=hours))
    budget = AccessBudget("cards", 3, ledger)
    assert budget.remaining("acc", T0) == 1
    assert budget.next_allowed("acc", T0) == T0


def test_budget_of_zero_is_refused() -> None:
    """A budget object always allows at least one access; "no budget" is no budget object."""
    with pytest.raises(ValueError, match="at least 1"):
        AccessBudget("cards", 0, MemoryAccessLedger())


# --- token endpoint answers ----------------------------------------------------------------------------


def test_token_answer_is_read() -> None:
    """The RFC 6749 answer gives the new tokens as secrets, and the lifetime exactly."""
    grant = parse_token_response(b'{"access_token": "abc.DEF-123", "token_type": "bearer", '
                                 b'"expires_in": 3600, "refresh_token": "r1"}')
    assert grant.access_token.get_secret_value() == "abc.DEF-123"
    assert grant.refresh_token is not None
    assert grant.refresh_token.get_secret_value() == "r1"
    assert grant.expires_in_s == Decimal(3600)
    assert "abc" not in repr(grant)
    plain = parse_token_response(b'{"access_token": "x"}')
    assert (plain.refresh_token, plain.expires_in_s) == (None, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b"{}", "access_token: expected a non-empty string, found null"),
        (b'{"access_token": ""}', "access_token: expected a non-empty string, found ''"),
        (b'{"access_token": 12}', "access_token: expected a non-empty string"),
        (b'{"access_token": "has space"}', r"access_token: not a usable bearer token \(9 characters\)"),
        (b'{"access_token": "a\\r\\nX-Injected: 1"}', "access_token: not a usable bearer token"),
        (b'{"access_token": "x", "token_type": "mac"}', "token_type: expected Bearer, found 'mac'"),
        (b'{"access_token": "x", "expires_in": -1}', "expires_in: expected a number of seconds"),
        (b'{"access_token": "x", "expires_in": true}', "expires_in: expected a number of seconds"),
        (b'{"access_token": "x", "expires_in": NaN}', "not valid JSON"),
        (b'{"access_token": "x", "refresh_token": ["r"]}', "refresh_token: expected a non-empty string"),
    ],
)
def test_unusable_token_answers_are_parse_errors(body: bytes, message: str) -> None:
    """A token answer we could not use safely (a header injection included) is a ParseError that never
    shows the token."""
    with pytest.raises(ParseError, match=message) as caught:
        parse_token_response(body)
    assert "X-Injected" not in str(caught.value)
