"""Both sources against the sandbox serving every hostile answer it can inject: each one becomes a clear
outcome and error (or a handled partial answer), never an exception, and a slow server never holds up
another call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from watcher.config import MastercardSendConfig, MyposPsd2Config
from watcher.devkeys import DevKey
from watcher.sandbox import RunningSandbox, SandboxSettings, running_sandbox
from watcher.sandbox.faults import FaultKind
from watcher.sandbox.world import SEED_MYPOS_ACCOUNT
from watcher.signing import load_signing_key
from watcher.sources.base import FetchResult
from watcher.sources.mastercard import MastercardSendSource
from watcher.sources.mypos import MyposPsd2Source

PARTNER = "ptnr_HOSTILE"
TOKEN = f"non_card_token:sbx-{PARTNER}-0001"
SECRETS = ("aGDmxHAmpMWUL1txqCsjEcOS", "oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X", "hostile-consumer-key")


@pytest.fixture(scope="module")
def signing_key(dev_key: DevKey) -> RSAPrivateKey:
    """The private half of the session's development key, which the sandbox verifies against."""
    return load_signing_key(dev_key.p12_path, "devpassword")


@pytest.fixture
async def sandbox(dev_key: DevKey) -> AsyncIterator[RunningSandbox]:
    """A static sandbox on a free loopback port."""
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0)
    async with running_sandbox(settings) as box:
        yield box



def mastercard(
    box: RunningSandbox, session: aiohttp.ClientSession, key: RSAPrivateKey, **changes: Any
) -> MastercardSendSource:
    """A Mastercard source on the sandbox; one attempt per call unless the test says otherwise."""
    data: dict[str, Any] = {
        "type": "mastercard-send", "name": "mc", "base_url": box.mastercard_base_url, "partner_id": PARTNER,
        "consumer_key": "hostile-consumer-key", "signing_key_path": "unused.p12",
        "signing_key_password": "pw", "non_card_tokens": [TOKEN], "timeout": "5s", "retries": 1,
    }
    return MastercardSendSource(MastercardSendConfig.model_validate({**data, **changes}), session, key)


def mypos(box: RunningSandbox, session: aiohttp.ClientSession, **changes: Any) -> MyposPsd2Source:
    """A myPOS source on the sandbox with its sample credentials, no access budget, one attempt."""
    data: dict[str, Any] = {
        "type": "mypos-psd2", "name": "cards", "base_url": box.base_url,
        "api_key": "aGDmxHAmpMWUL1txqCsjEcOS", "consent_id": "3c7816ee-3d51-4bf5-8ced-ece2af35d431",
        "access_token": "oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X", "account_numbers": [SEED_MYPOS_ACCOUNT],
        "timeout": "5s", "retries": 1, "daily_access_budget": 0,
    }
    return MyposPsd2Source(MyposPsd2Config.model_validate({**data, **changes}), session)


def assert_clean(result: FetchResult) -> None:
    """A failed result names what went wrong, holds no balance, and leaks no secret."""
    assert result.error, result
    assert "Traceback" not in result.error
    for secret in SECRETS:
        assert secret not in repr(result)


# (fault, format, outcome, text the error must contain)
MASTERCARD_FAULTS: list[tuple[FaultKind, str, str, str]] = [
    ("http_500", "json", "http_error", "SYSTEM_ERROR: Injected fault"),
    ("http_503", "xml", "http_error", "HTTP 503 Service Unavailable: SERVICE_UNAVAILABLE"),
    ("http_429", "json", "http_error", "RATE_LIMIT_EXCEEDED"),
    ("malformed_json", "json", "bad_response", "not valid JSON"),
    ("malformed_xml", "xml", "bad_response", "not well-formed XML"),
    ("wrong_content_type", "json", "bad_response", "got Content-Type text/html"),
    ("truncated_body", "json", "bad_response", "cut short"),
    ("truncated_body", "xml", "bad_response", "cut short"),
    ("huge_body", "json", "bad_response", "larger than the limit of 1024 KiB"),
    ("xml_entity_bomb", "xml", "bad_response", "XML refused: it contains a document type declaration"),
    ("xml_entity_bomb", "json", "bad_response", "got Content-Type application/xml"),
    ("missing_field", "json", "bad_response", "balance: expected an object, found null"),
    ("nan_amount", "json", "bad_response", "'NaN' is not a plain decimal amount"),
    ("nan_amount", "xml", "bad_response", "'NaN' is not a plain decimal amount"),
    ("huge_number", "json", "bad_response", "'123456789012345678901234567890' is not a plain decimal"),
    ("overflow_amount", "xml", "bad_response", "'1e400' is not a plain decimal amount"),
    ("unknown_state", "json", "bad_response", "expected IN_CREDIT or IN_DEBIT, found 'IN_LIMBO'"),
]


@pytest.mark.parametrize(("kind", "fmt", "outcome", "text"), MASTERCARD_FAULTS)
async def test_mastercard_hostile_answers_are_outcomes(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey,
    kind: FaultKind, fmt: str, outcome: str, text: str,
) -> None:
    """Each injected fault gives its outcome and an error naming the problem; no balance is kept."""
    sandbox.faults.add("mastercard", TOKEN, kind)
    result = await mastercard(sandbox, session, signing_key, format=fmt).fetch(TOKEN)
    assert result.outcome == outcome, result.error
    assert result.error is not None
    assert text in result.error, result.error
    assert result.observations == ()
    assert_clean(result)


async def test_mastercard_listing_over_the_listing_limit(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A partner listing of 40 MiB is cut off at the source's max_listing_bytes (32 MiB here)."""
    sandbox.faults.add("mastercard", "*", "huge_body")
    source = mastercard(sandbox, session, signing_key, non_card_tokens=[], max_listing_bytes=32 * 1024 * 1024)
    result = await source.fetch("*")
    assert result.outcome == "bad_response"
    assert result.error == "the response body is larger than the limit of 32768 KiB"


async def test_mastercard_listing_limit_default_takes_a_large_listing(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """By default (256 MiB) a 40 MiB listing body is read whole, as a listing of 100,000 accounts (about
    37 MB) must be: the call fails only because that body holds no accounts, not at the limit."""
    sandbox.faults.add("mastercard", "*", "huge_body")
    result = await mastercard(sandbox, session, signing_key, non_card_tokens=[]).fetch("*")
    assert result.outcome == "bad_response"
    assert result.error is not None
    assert "larger than the limit" not in result.error
    assert "account_balances or account-balances" in result.error


async def test_mastercard_duplicate_accounts_keep_the_first(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A listing naming one account twice keeps the first entry and reports the second, in JSON and XML."""
    source = mastercard(sandbox, session, signing_key, non_card_tokens=[])
    clean = await source.fetch("*")
    for fmt in ("json", "xml"):
        sandbox.faults.add("mastercard", "*", "duplicate_accounts")
        result = await mastercard(sandbox, session, signing_key, non_card_tokens=[], format=fmt).fetch("*")
        assert result.outcome == "ok"
        assert [o.balance for o in result.observations] == [o.balance for o in clean.observations]
        (reason,) = result.rejected
        assert "appears again" in reason


async def test_mastercard_single_account_answer_with_a_duplicate(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A single-account answer carrying the account twice keeps the first and reports the repeat."""
    sandbox.faults.add("mastercard", TOKEN, "duplicate_accounts")
    result = await mastercard(sandbox, session, signing_key).fetch(TOKEN)
    assert result.outcome == "ok"
    assert len(result.observations) == 1
    assert result.observations[0].balance.amount != 1
    assert len(result.rejected) == 1


MYPOS_FAULTS: list[tuple[FaultKind, str, str]] = [
    ("http_500", "http_error", "HTTP 500 Internal Server Error: INTERNAL_SERVER_ERROR"),
    ("http_503", "http_error", "SERVICE_UNAVAILABLE"),
    ("http_429", "http_error", "HTTP 429 Too Many Requests: ACCESS_EXCEEDED"),
    ("malformed_json", "bad_response", "not valid JSON"),
    ("wrong_content_type", "bad_response", "got Content-Type text/html"),
    ("truncated_body", "bad_response", "cut short"),
    ("huge_body", "bad_response", "larger than the limit of 1024 KiB"),
    ("xml_entity_bomb", "bad_response", "asked for application/json, got Content-Type application/xml"),
    ("missing_field", "bad_response", "balances: missing"),
    ("nan_amount", "bad_response", "NaN is not a number JSON allows"),
    ("huge_number", "bad_response", "has more than 18 integer digits"),
    ("overflow_amount", "bad_response", "1E+400 has more than 18 integer digits"),
]


@pytest.mark.parametrize(("kind", "outcome", "text"), MYPOS_FAULTS)
async def test_mypos_hostile_answers_are_outcomes(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, kind: FaultKind, outcome: str, text: str
) -> None:
    """Each injected fault gives its outcome and an error naming the problem, with our X-Request-ID."""
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, kind)
    result = await mypos(sandbox, session).fetch(SEED_MYPOS_ACCOUNT)
    assert result.outcome == outcome, result.error
    assert result.error is not None
    assert text in result.error, result.error
    assert result.correlation_id
    assert result.observations == ()
    assert_clean(result)


async def test_mypos_unknown_balance_type_and_duplicates_are_handled(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """An unknown balanceType is tracked as its own balance; a repeated balance type keeps the first."""
    source = mypos(sandbox, session)
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "unknown_state")
    unknown = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert unknown.outcome == "ok"
    assert [o.key.balance_type for o in unknown.observations] == ["sideways"]
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "duplicate_accounts")
    duplicate = await source.fetch(SEED_MYPOS_ACCOUNT)
    assert duplicate.outcome == "ok"
    assert [str(o.balance.amount) for o in duplicate.observations] == ["120.260"]
    (reason,) = duplicate.rejected
    assert "appears again" in reason


async def test_slow_trickle_is_cut_by_the_total_timeout_without_stalling_others(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A body trickling in (each piece well inside the read timeout) is ended by the total timeout as a
    `timeout`; meanwhile another source's call, started later, completes first."""
    sandbox.faults.add("mastercard", TOKEN, "slow_body", delay_seconds=0.05)
    slow_source = mastercard(sandbox, session, signing_key, timeout="1s", read_timeout="1s")
    slow = asyncio.create_task(slow_source.fetch(TOKEN))
    await asyncio.sleep(0.1)  # the slow call is under way
    fast = asyncio.create_task(mypos(sandbox, session).fetch(SEED_MYPOS_ACCOUNT))
    done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    assert done == {fast}
    assert fast.result().outcome == "ok"
    result = await asyncio.wait_for(slow, 30)
    assert result.outcome == "timeout"
    assert result.error == "no complete answer within 1s"
    assert result.attempts == 1  # a slow server is not asked again


async def test_stalled_body_is_cut_by_the_read_timeout(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A body that stops arriving ends at the read timeout, long before the total one."""
    sandbox.faults.add("mastercard", TOKEN, "slow_body", delay_seconds=30)
    source = mastercard(sandbox, session, signing_key, timeout="60s", read_timeout="300ms")
    result = await asyncio.wait_for(source.fetch(TOKEN), 30)
    assert result.outcome == "timeout"
    assert result.error == "no data from the server for 0.3s"


async def test_faults_asked_by_header_or_query(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """A request's own X-Sandbox-Fault header or ?fault= parameter is served like a control-API fault."""
    headers = {
        "X-Request-ID": "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "Consent-ID": "3c7816ee-3d51-4bf5-8ced-ece2af35d431",
        "API-Key": "aGDmxHAmpMWUL1txqCsjEcOS",
        "Authorization": "Bearer oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X",
    }
    url = f"{sandbox.base_url}/v1/card-accounts/{SEED_MYPOS_ACCOUNT}/balances"
    async with session.get(url, headers={**headers, "X-Sandbox-Fault": "http_429; retry_after=7"}) as reply:
        assert (reply.status, reply.headers["Retry-After"]) == (429, "7")
        assert reply.headers["X-Request-ID"] == headers["X-Request-ID"]
    async with session.get(url + "?fault=nan_amount", headers=headers) as reply:
        assert reply.status == 200
        assert b'"amount": NaN' in await reply.read()
    async with session.get(url, headers=headers) as reply:
        assert reply.status == 200  # nothing lingers
