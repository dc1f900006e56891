"""myPOS access over time, against the sandbox: the OAuth2 token refresh, consents that expire or are
withdrawn, and the PSD2 daily budget of unattended accesses (RTS art. 36(5)), kept across restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from watcher.config import ConfigError, MyposPsd2Config
from watcher.devkeys import DevKey
from watcher.sandbox import RunningSandbox, SandboxSettings, running_sandbox
from watcher.sandbox.settings import (
    SAMPLE_MYPOS_ACCESS_TOKEN,
    SAMPLE_MYPOS_API_KEY,
    SAMPLE_MYPOS_CONSENT_ID,
    SANDBOX_MYPOS_CLIENT_ID,
    SANDBOX_MYPOS_CLIENT_SECRET,
    SANDBOX_MYPOS_REFRESH_TOKEN,
)
from watcher.sandbox.world import SEED_MYPOS_ACCOUNT
from watcher.sources.base import PacedSource
from watcher.sources.budget import MemoryAccessLedger
from watcher.sources.mypos import MyposPsd2Source

WORLD_ACCOUNT = "50553500001"
T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
SECRETS = (SAMPLE_MYPOS_API_KEY, SAMPLE_MYPOS_ACCESS_TOKEN, SANDBOX_MYPOS_REFRESH_TOKEN,
           SANDBOX_MYPOS_CLIENT_SECRET, "wrong-secret")


@pytest.fixture
async def sandbox(dev_key: DevKey) -> AsyncIterator[RunningSandbox]:
    """A static sandbox on a free loopback port."""
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0)
    async with running_sandbox(settings) as box:
        yield box



class WallClock:
    """The source's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def config(base: str, **changes: Any) -> MyposPsd2Config:
    """The sandbox's sample credentials, both accounts, no budget unless the test sets one."""
    data: dict[str, Any] = {
        "type": "mypos-psd2", "name": "cards", "base_url": base, "api_key": SAMPLE_MYPOS_API_KEY,
        "consent_id": SAMPLE_MYPOS_CONSENT_ID, "access_token": SAMPLE_MYPOS_ACCESS_TOKEN,
        "account_numbers": [SEED_MYPOS_ACCOUNT, WORLD_ACCOUNT], "daily_access_budget": 0,
        "backoff_base": "1ms", "backoff_max": "2ms", "timeout": "5s",
    }
    return MyposPsd2Config.model_validate({**data, **changes})


def with_refresh(box: RunningSandbox, **changes: Any) -> MyposPsd2Config:
    """A config with the sandbox's refresh grant."""
    grant = {"token_url": box.token_url, "refresh_token": SANDBOX_MYPOS_REFRESH_TOKEN,
             "client_id": SANDBOX_MYPOS_CLIENT_ID, "client_secret": SANDBOX_MYPOS_CLIENT_SECRET}
    return config(box.base_url, **{**grant, **changes})


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- the access token ----------------------------------------------------------------------------------


async def test_expired_token_is_refreshed_and_the_call_made_again(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """TOKEN_EXPIRED: the source refreshes the token, calls once more, and succeeds. It keeps the rotated
    refresh token: the next expiry is refreshed with it (the sandbox no longer accepts the first one)."""
    source = MyposPsd2Source(with_refresh(sandbox), session)
    for round_number in (1, 2):
        sandbox.auth.expire_tokens()
        result = await source.fetch(SEED_MYPOS_ACCOUNT)
        assert result.outcome == "ok", result.error
        assert result.attempts == 2
        assert sandbox.auth.grants == round_number
    assert (await source.fetch(SEED_MYPOS_ACCOUNT)).attempts == 1  # the new token is kept


async def test_token_expired_fault_is_refreshed(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """The sandbox's token_expired fault (the token expires for good) is healed by one refresh."""
    sandbox.faults.add("mypos", WORLD_ACCOUNT, "token_expired")
    result = await MyposPsd2Source(with_refresh(sandbox), session).fetch(WORLD_ACCOUNT)
    assert (result.outcome, result.attempts, sandbox.auth.grants) == ("ok", 2, 1)


async def test_concurrent_calls_share_one_refresh(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """Calls that find the token expired at the same time refresh it once between them."""
    source = MyposPsd2Source(with_refresh(sandbox), session)
    sandbox.auth.expire_tokens()
    results = await asyncio.gather(*(source.fetch(account) for account in source.targets()))
    assert [r.outcome for r in results] == ["ok", "ok"]
    assert sandbox.auth.grants == 1


async def test_expired_token_without_a_refresh_grant(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """Without token_url and refresh_token an expired token is an http_error with its reason code."""
    sandbox.auth.expire_tokens()
    result = await MyposPsd2Source(config(sandbox.base_url), session).fetch(SEED_MYPOS_ACCOUNT)
    assert (result.outcome, result.http_status, result.reason_code) == ("http_error", 401, "TOKEN_EXPIRED")
    assert result.attempts == 1


async def test_refused_refresh_is_reported_without_secrets(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """A token endpoint refusing the client gives the API's error and the endpoint's, never a secret."""
    sandbox.auth.expire_tokens()
    source = MyposPsd2Source(with_refresh(sandbox, client_secret="wrong-secret"), session)
    result = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert (result.outcome, result.reason_code) == ("http_error", "TOKEN_EXPIRED")
    assert result.error is not None
    assert result.error.endswith("; the token endpoint refused the refresh: HTTP 401 Unauthorized: "
                                 "invalid_client: client authentication failed")
    assert_no_secret(repr(result))


async def test_token_url_without_refresh_token_is_a_config_error(session: aiohttp.ClientSession) -> None:
    """A refresh grant needs both its endpoint and its refresh token."""
    with pytest.raises(ConfigError, match="token_url and refresh_token go together"):
        MyposPsd2Source(config("http://x", token_url="http://x/oauth/token"), session)


# --- the consent ---------------------------------------------------------------------------------------


async def test_expired_consent_stops_every_account_until_reload(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """CONSENT_EXPIRED: the result is access_revoked with the provider's reason; from then on no account of
    the consent is called (no request, next_allowed None); a source rebuilt with a new consent polls again."""
    source = MyposPsd2Source(config(sandbox.base_url), session)
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "consent_expired")
    first = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert (first.outcome, first.access_revoked) == ("access_revoked", True)
    assert first.reason_code == "CONSENT_EXPIRED"
    assert first.http_status == 401
    assert first.error is not None
    assert "CONSENT_EXPIRED: The consent has expired" in first.error
    assert "until the config is reloaded with a new consent" in first.error
    sandbox.faults.add("mypos", WORLD_ACCOUNT, "http_500")  # spent only if a request were made
    for account in source.targets():
        skipped = await source.fetch(account)
        assert (skipped.outcome, skipped.access_revoked, skipped.attempts) == ("access_revoked", True, 0)
        assert skipped.reason_code == "CONSENT_EXPIRED"
        assert isinstance(source, PacedSource)
        assert source.next_allowed(account, T0) is None
    assert [f.kind for f in sandbox.faults.all()] == ["http_500"]
    sandbox.faults.clear()
    sandbox.auth.set_consent("consent-2", "valid")
    reloaded = MyposPsd2Source(config(sandbox.base_url, consent_id="consent-2"), session)
    assert [(await reloaded.fetch(a)).outcome for a in reloaded.targets()] == ["ok", "ok"]


async def test_invalid_consent_stops_only_that_account(session: aiohttp.ClientSession) -> None:
    """CONSENT_INVALID is about the account asked for: the others are still polled."""
    calls: list[str] = []

    async def bank(request: web.Request) -> web.Response:
        account = request.match_info["account"]
        calls.append(account)
        if account == "111":
            return web.json_response({"tppMessages": [{"category": "ERROR", "code": "CONSENT_INVALID",
                                                       "text": "not for this account"}]}, status=401)
        return web.json_response({"balances": [{"amount": 1, "currency": "EUR", "balanceType": "available"}]})

    app = web.Application()
    app.router.add_get("/v1/card-accounts/{account}/balances", bank)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        source = MyposPsd2Source(config(base, account_numbers=["111", "222"]), session)
        for _ in range(2):
            results = [await source.fetch(account) for account in source.targets()]
            assert [r.outcome for r in results] == ["access_revoked", "ok"]
    finally:
        await runner.cleanup()
    assert calls == ["111", "222", "222"]


# --- the daily access budget ---------------------------------------------------------------------------


async def test_budget_refuses_the_fifth_access_and_says_when(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """Four accesses in 24 hours (the default), then budget_exhausted without a request; next_allowed is
    24 hours after the oldest of the four, when exactly one more access is allowed."""
    clock = WallClock()
    source = MyposPsd2Source(config(sandbox.base_url, daily_access_budget=4), session, clock=clock)
    stamps = []
    for _ in range(4):
        stamps.append(clock.now)
        assert (await source.fetch(SEED_MYPOS_ACCOUNT)).outcome == "ok"
        clock.now += timedelta(hours=1)
    refused = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert (refused.outcome, refused.attempts, refused.http_status) == ("budget_exhausted", 0, None)
    assert refused.error is not None
    assert "daily access budget of account 50553500971 is used up (4 in 24 hours" in refused.error
    assert refused.retry_after_s == pytest.approx(timedelta(hours=20).total_seconds())
    assert source.next_allowed(SEED_MYPOS_ACCOUNT, clock.now) == stamps[0] + timedelta(hours=24)
    assert source.next_allowed(WORLD_ACCOUNT, clock.now) == clock.now  # budgets are per account
    clock.now = stamps[0] + timedelta(hours=24)
    assert (await source.fetch(SEED_MYPOS_ACCOUNT)).outcome == "ok"
    assert (await source.fetch(SEED_MYPOS_ACCOUNT)).outcome == "budget_exhausted"


async def test_budget_survives_a_restart_through_the_ledger(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """A new source instance on the same ledger (a restart) knows the accesses already made."""
    clock, ledger = WallClock(), MemoryAccessLedger()
    first = MyposPsd2Source(config(sandbox.base_url, daily_access_budget=2), session, clock=clock,
                            ledger=ledger)
    for _ in range(2):
        assert (await first.fetch(SEED_MYPOS_ACCOUNT)).outcome == "ok"
    restarted = MyposPsd2Source(config(sandbox.base_url, daily_access_budget=2), session, clock=clock,
                                ledger=ledger)
    assert (await restarted.fetch(SEED_MYPOS_ACCOUNT)).outcome == "budget_exhausted"
    assert len(ledger.load("cards", SEED_MYPOS_ACCOUNT, T0)) == 2


async def test_retries_spend_the_budget_and_stop_at_it(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """Every attempt is an access: a failing call stops retrying when the budget is used up."""
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "http_503", count=None)
    source = MyposPsd2Source(config(sandbox.base_url, daily_access_budget=2, retries=5), session,
                             clock=WallClock())
    result = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert (result.outcome, result.http_status, result.attempts) == ("http_error", 503, 2)
    assert result.error is not None
    assert "; not retried: the daily access budget of account 50553500971 is used up" in result.error
    assert (await source.fetch(SEED_MYPOS_ACCOUNT)).outcome == "budget_exhausted"


async def test_ledger_failure_means_no_access(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """When the access cannot be recorded it is not made: budget_exhausted with the reason, no request."""

    class BrokenLedger:
        def load(self, source: str, account: str, since: datetime) -> Sequence[datetime]:
            return []

        async def record(self, source: str, account: str, at: datetime) -> None:
            raise OSError("disk full")

    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "http_500")  # spent only if a request were made
    source = MyposPsd2Source(config(sandbox.base_url, daily_access_budget=4), session, ledger=BrokenLedger())
    result = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert (result.outcome, result.attempts) == ("budget_exhausted", 0)
    assert result.error is not None
    assert "could not be recorded" in result.error
    assert "disk full" in result.error
    assert [f.kind for f in sandbox.faults.all()] == ["http_500"]


async def test_zero_budget_means_unlimited(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """daily_access_budget = 0 (an agreement with the bank, or the sandbox) never refuses."""
    source = MyposPsd2Source(config(sandbox.base_url, daily_access_budget=0), session, clock=WallClock())
    results = [await source.fetch(SEED_MYPOS_ACCOUNT) for _ in range(6)]
    assert {r.outcome for r in results} == {"ok"}
    assert source.next_allowed(SEED_MYPOS_ACCOUNT, T0) == T0
