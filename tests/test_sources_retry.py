"""Retries, Retry-After, the circuit breaker and the rate limit, with both sources against a small
scripted HTTP server on 127.0.0.1. Waits go through a recording sleep and a hand-moved clock, so the
tests check what the client decided to wait, never how fast anything ran.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from random import Random
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from watcher.config import MastercardSendConfig, MyposPsd2Config
from watcher.sources.breaker import CircuitBreaker
from watcher.sources.guard import CallGuard
from watcher.sources.mastercard import MastercardSendSource
from watcher.sources.mypos import MyposPsd2Source
from watcher.sources.ratelimit import TokenBucket
from watcher.sources.retry import RetryPolicy

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
TOKEN = "non_card_token:abc"
MC_OK = (b'{"account_balances": {"account_balance": {"non_card_token": "non_card_token:abc",'
         b' "balance": {"amount": "10.00", "currency": "GBP", "state": "IN_CREDIT"}}}}')
MYPOS_OK = b'{"balances": [{"amount": 1.5, "currency": "EUR", "balanceType": "available"}]}'


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = MC_OK
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Script:
    """The server's answers in order (the last one repeats) and the requests it saw."""

    replies: list[Reply] = field(default_factory=lambda: [Reply()])
    seen: list[dict[str, str]] = field(default_factory=list)
    base: str = ""
    hold: asyncio.Event | None = None  # when set, answers wait for it

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), 30)
        reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
        return web.Response(status=reply.status, body=reply.body,
                            headers={"Content-Type": "application/json", **reply.headers})


@pytest.fixture
async def script() -> AsyncIterator[Script]:
    """The scripted server on a free loopback port."""
    state = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()




class ManualClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sleeps:
    """A sleep that records what it was asked, moves the clock on by as much, and returns at once."""

    clock: ManualClock
    asked: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.clock.now += seconds


@dataclass
class Rig:
    """What a test controls around one source: the breaker's clock and the recorded sleeps."""

    clock: ManualClock
    sleeps: Sleeps
    guard: CallGuard


def rig(config: MastercardSendConfig | MyposPsd2Config) -> Rig:
    """A guard as the config asks, on a hand-moved clock with a recording sleep; the wall clock is T0."""
    clock = ManualClock()
    sleeps = Sleeps(clock)
    guard = CallGuard(
        config.name,
        RetryPolicy.of(config),
        CircuitBreaker(config.breaker_threshold, config.breaker_cooldown.total_seconds(), clock),
        TokenBucket(config.max_requests_per_second, clock=clock, sleep=sleeps),
        wall_clock=lambda: T0,
        sleep=sleeps,
        rng=Random(4),
    )
    return Rig(clock, sleeps, guard)


def mc_config(base: str, **changes: Any) -> MastercardSendConfig:
    data: dict[str, Any] = {
        "type": "mastercard-send", "name": "mc", "base_url": base, "partner_id": "p1", "consumer_key": "ck",
        "signing_key_path": "unused.p12", "signing_key_password": "pw", "non_card_tokens": [TOKEN],
        "timeout": "5s", "backoff_base": "1s", "backoff_max": "8s", "max_requests_per_second": 1000,
    }
    return MastercardSendConfig.model_validate({**data, **changes})


def mypos_config(base: str, **changes: Any) -> MyposPsd2Config:
    data: dict[str, Any] = {
        "type": "mypos-psd2", "name": "cards", "base_url": base, "api_key": "k", "consent_id": "c",
        "access_token": "t", "account_numbers": ["1"], "timeout": "5s", "daily_access_budget": 0,
        "max_requests_per_second": 1000,
    }
    return MyposPsd2Config.model_validate({**data, **changes})


def mc(script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey, **changes: Any
       ) -> tuple[MastercardSendSource, Rig]:
    config = mc_config(script.base, **changes)
    controls = rig(config)
    return MastercardSendSource(config, session, key, clock=lambda: T0, guard=controls.guard), controls


@pytest.fixture
def refused_base() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_5xx_is_retried_with_full_jitter_backoff(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """503 then 502 then 200: the call succeeds on the third attempt; each wait is a full-jitter draw
    within [0, base * 2^(n-1)]."""
    script.replies = [Reply(503, b""), Reply(502, b""), Reply()]
    source, controls = mc(script, session, key)
    result = await source.fetch(TOKEN)
    assert result.outcome == "ok", result.error
    assert result.attempts == 3
    assert len(script.seen) == 3
    first, second = controls.sleeps.asked
    assert 0 <= first <= 1.0
    assert 0 <= second <= 2.0


async def test_each_attempt_is_signed_with_a_fresh_nonce(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A retried Mastercard GET is signed again: the gateway refuses a replayed nonce."""
    script.replies = [Reply(500, b""), Reply()]
    source, _ = mc(script, session, key)
    assert (await source.fetch(TOKEN)).outcome == "ok"
    nonces = [re.search(r'oauth_nonce="([^"]+)"', seen["Authorization"]) for seen in script.seen]
    assert all(nonces)
    assert len({n.group(1) for n in nonces if n}) == 2


@pytest.mark.parametrize("header", ["2", "date"])
async def test_retry_after_is_a_floor_under_the_wait(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey, header: str
) -> None:
    """A 429 with Retry-After in seconds or as an HTTP date is waited out before the next attempt."""
    value = "2" if header == "2" else format_datetime(T0 + timedelta(seconds=2), usegmt=True)
    script.replies = [Reply(429, b"", {"Retry-After": value}), Reply()]
    source, controls = mc(script, session, key, backoff_base="1ms")
    result = await source.fetch(TOKEN)
    assert result.outcome == "ok"
    assert controls.sleeps.asked == [2.0]


async def test_retry_after_beyond_the_cap_ends_the_call_and_holds_the_source(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A Retry-After longer than retry_after_max is not waited inside the call: the call ends with it,
    and every call of the source is refused (circuit_open, no request) until it has passed."""
    script.replies = [Reply(429, b"", {"Retry-After": "120"}), Reply()]
    source, controls = mc(script, session, key, retry_after_max="60s")
    result = await source.fetch(TOKEN)
    assert (result.outcome, result.http_status, result.attempts) == ("http_error", 429, 1)
    assert result.retry_after_s == 120
    assert result.error is not None
    assert "not retried: the server asked to wait 120s, longer than retry_after_max (60s)" in result.error
    held = await source.fetch(TOKEN)
    assert (held.outcome, held.attempts, len(script.seen)) == ("circuit_open", 0, 1)
    assert held.error is not None
    assert "the server asked to wait (Retry-After)" in held.error
    assert source.next_allowed(TOKEN, T0) == T0 + timedelta(seconds=120)
    controls.clock.now += 120
    assert (await source.fetch(TOKEN)).outcome == "ok"


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey, status: int
) -> None:
    """Our request being refused is not retried: another identical request gets the same answer."""
    script.replies = [Reply(status, b"")]
    source, controls = mc(script, session, key)
    result = await source.fetch(TOKEN)
    assert (result.outcome, result.attempts, len(script.seen)) == ("http_error", 1, 1)
    assert controls.sleeps.asked == []


async def test_connection_refused_is_retried_then_reported(
    refused_base: str, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """Nothing listening: every attempt is made, then a network_error that says how many there were."""
    config = mc_config(refused_base, retries=4)
    controls = rig(config)
    source = MastercardSendSource(config, session, key, guard=controls.guard)
    result = await source.fetch(TOKEN)
    assert (result.outcome, result.attempts) == ("network_error", 4)
    assert result.error is not None
    assert result.error.endswith("(after 4 attempts)")
    assert len(controls.sleeps.asked) == 3


async def test_breaker_opens_refuses_then_lets_a_trial_through(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """After breaker_threshold failed calls in a row, calls are refused at once without a request; after
    the cool-down one trial goes, and its success closes the breaker."""
    script.replies = [Reply(503, b"")]
    source, controls = mc(script, session, key, retries=1, breaker_threshold=2, breaker_cooldown="30s")
    for _ in range(2):
        assert (await source.fetch(TOKEN)).outcome == "http_error"
    refused = await source.fetch(TOKEN)
    assert (refused.outcome, refused.attempts, len(script.seen)) == ("circuit_open", 0, 2)
    assert refused.retry_after_s == pytest.approx(30)
    assert refused.error == ("not called: the circuit breaker of source 'mc' is open "
                             "(2 failed calls in a row); calls resume in 30.0s")
    controls.clock.now += 30
    script.replies = [Reply()]
    script.seen.clear()
    trial = await source.fetch(TOKEN)
    assert trial.outcome == "ok"
    assert controls.guard.breaker.state == "closed"


async def test_failed_trial_opens_the_breaker_again(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A trial call that fails re-opens the breaker for another cool-down."""
    script.replies = [Reply(500, b"")]
    source, controls = mc(script, session, key, retries=1, breaker_threshold=1, breaker_cooldown="10s")
    await source.fetch(TOKEN)
    controls.clock.now += 10
    assert (await source.fetch(TOKEN)).outcome == "http_error"  # the trial
    assert (await source.fetch(TOKEN)).outcome == "circuit_open"
    assert controls.guard.breaker.state == "open"


async def test_refused_and_bad_answers_do_not_trip_the_breaker(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """4xx answers and unparseable bodies show the API is up: they never open the breaker."""
    script.replies = [Reply(401, b""), Reply(200, b"garbage")]
    source, controls = mc(script, session, key, retries=1, breaker_threshold=1)
    assert (await source.fetch(TOKEN)).outcome == "http_error"
    assert (await source.fetch(TOKEN)).outcome == "bad_response"
    assert controls.guard.breaker.state == "closed"


async def test_rate_limit_spaces_requests(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """At 20 requests a second (a burst of 2), once the burst is spent each request waits 0.05 s for its
    token (no time passing but the waits)."""
    source, controls = mc(script, session, key, max_requests_per_second=20)
    results = [await source.fetch(TOKEN) for _ in range(5)]
    assert [r.outcome for r in results] == ["ok"] * 5
    assert controls.sleeps.asked == [pytest.approx(0.05)] * 3


async def test_mastercard_reason_code_and_error_line(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A Mastercard error body gives reason_code and one line with description, source, recoverability
    and details, in either of its shapes."""
    body = (b'{"Errors":{"Error":{"Source":"partnerId","ReasonCode":"INVALID_INPUT_VALUE","Description":'
            b'"Invalid partner","Recoverable":false,"Details":{"Detail":[{"Name":"ErrorDetailCode",'
            b'"Value":"092000"}]}}}}')
    script.replies = [Reply(400, body, {"correlation-id": "c-1"})]
    source, _ = mc(script, session, key)
    result = await source.fetch(TOKEN)
    assert result.reason_code == "INVALID_INPUT_VALUE"
    assert result.correlation_id == "c-1"
    assert result.error == ("HTTP 400 Bad Request: INVALID_INPUT_VALUE: Invalid partner (source partnerId, "
                            "not recoverable, details: ErrorDetailCode=092000)")


async def test_mypos_access_exceeded_is_not_retried(
    script: Script, session: aiohttp.ClientSession
) -> None:
    """The bank's 429 ACCESS_EXCEEDED (its own budget is used up) is not retried; a plain 429 is."""
    exceeded = b'{"tppMessages":[{"category":"ERROR","code":"ACCESS_EXCEEDED","text":"limit"}]}'
    config = mypos_config(script.base)
    controls = rig(config)
    source = MyposPsd2Source(config, session, guard=controls.guard)
    script.replies = [Reply(429, exceeded)]
    result = await source.fetch("1")
    assert (result.outcome, result.reason_code, result.attempts) == ("http_error", "ACCESS_EXCEEDED", 1)
    script.replies = [Reply(429, b""), Reply(200, MYPOS_OK)]
    script.seen.clear()
    assert (await source.fetch("1")).attempts == 2


async def test_cancelled_trial_frees_the_half_open_slot(
    script: Script, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A trial call cancelled mid-flight (a shutdown) does not leave the breaker refusing for good."""
    script.replies = [Reply(500, b"")]
    source, controls = mc(script, session, key, retries=1, breaker_threshold=1, breaker_cooldown="5s")
    await source.fetch(TOKEN)
    controls.clock.now += 5
    script.hold = asyncio.Event()
    trial = asyncio.create_task(source.fetch(TOKEN))
    for _ in range(500):  # bounded wait until the trial's request is at the server
        if len(script.seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert (await source.fetch(TOKEN)).outcome == "circuit_open"  # only one trial at a time
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    script.hold.set()
    assert controls.guard.breaker.admit() is None  # a new trial may go


async def test_stalled_tls_handshake_is_a_connect_timeout_and_retried(
    session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A server that takes the TCP connection but never answers the TLS handshake ends at
    connect_timeout (well before the total timeout), and is retried like any connection failure."""
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the ClientHello; no answer
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = mc_config(f"https://127.0.0.1:{port}", connect_timeout="200ms", timeout="20s", retries=2)
        controls = rig(config)
        source = MastercardSendSource(config, session, key, guard=controls.guard)
        result = await asyncio.wait_for(source.fetch(TOKEN), 15)
    finally:
        release.set()
        server.close()
        await server.wait_closed()
    assert (result.outcome, result.attempts) == ("timeout", 2)
    assert result.error == "could not connect within 0.2s (after 2 attempts)"
