"""The sandbox's fault injection and myPOS authorisation, seen from a plain HTTP client: every new fault
kind, by control API, header and query parameter; the token endpoint; consents; scenario files.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from yarl import URL

from watcher.cli import CliError
from watcher.devkeys import DevKey
from watcher.sandbox import RunningSandbox, SandboxSettings, running_sandbox
from watcher.sandbox.cli import load_fault_file
from watcher.sandbox.settings import (
    SAMPLE_MYPOS_ACCESS_TOKEN,
    SAMPLE_MYPOS_API_KEY,
    SAMPLE_MYPOS_CONSENT_ID,
    SANDBOX_MYPOS_CLIENT_ID,
    SANDBOX_MYPOS_CLIENT_SECRET,
    SANDBOX_MYPOS_REFRESH_TOKEN,
)
from watcher.sandbox.spoil import HUGE_BODY_BYTES
from watcher.sandbox.world import SEED_MYPOS_ACCOUNT
from watcher.signing import authorization_header, load_signing_key

PARTNER = "ptnr_F"
TOKEN = f"non_card_token:sbx-{PARTNER}-0001"


@pytest.fixture(scope="module")
def signing_key(dev_key: DevKey) -> RSAPrivateKey:
    """The private half of the development key the sandbox verifies against."""
    return load_signing_key(dev_key.p12_path, "devpassword")


@pytest.fixture
async def sandbox(dev_key: DevKey) -> AsyncIterator[RunningSandbox]:
    """A static sandbox on a free loopback port."""
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0)
    async with running_sandbox(settings) as box:
        yield box


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


def mypos_headers(**extra: str) -> dict[str, str]:
    return {"X-Request-ID": str(uuid.uuid4()), "Consent-ID": SAMPLE_MYPOS_CONSENT_ID,
            "API-Key": SAMPLE_MYPOS_API_KEY, "Authorization": f"Bearer {SAMPLE_MYPOS_ACCESS_TOKEN}", **extra}


def mypos_url(box: RunningSandbox, account: str = SEED_MYPOS_ACCOUNT) -> str:
    return f"{box.base_url}/v1/card-accounts/{account}/balances"


def mc_url(box: RunningSandbox, query: str = "") -> str:
    return f"{box.mastercard_base_url}/v1/partners/{PARTNER}/non-card-tokens/{TOKEN}/account-balance{query}"


async def mc_get(client: aiohttp.ClientSession, url: str, key: RSAPrivateKey,
                 headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    signed = {"Authorization": authorization_header(url, "GET", "ck", key), "Accept": "application/json",
              **(headers or {})}
    async with client.get(URL(url, encoded=True), headers=signed) as reply:
        return reply.status, dict(reply.headers), await reply.read()


async def control(client: aiohttp.ClientSession, box: RunningSandbox, method: str, path: str,
                  **body: Any) -> tuple[int, Any]:
    async with client.request(method, f"{box.base_url}/_sandbox/{path}", json=body or None) as reply:
        return reply.status, await reply.json()


async def test_http_429_and_503_carry_retry_after(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """http_429 sends Retry-After (1 by default, or as asked, an HTTP date too); http_503 only when asked."""
    await control(client, sandbox, "POST", "faults", api="mastercard", account=TOKEN, kind="http_429")
    status, headers, body = await mc_get(client, mc_url(sandbox), signing_key)
    assert (status, headers["Retry-After"]) == (429, "1")
    assert json.loads(body)["Errors"]["Error"][0]["ReasonCode"] == "RATE_LIMIT_EXCEEDED"
    assert headers["correlation-id"]
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    await control(client, sandbox, "POST", "faults", api="mastercard", account=TOKEN, kind="http_503",
                  retry_after=date)
    status, headers, _ = await mc_get(client, mc_url(sandbox), signing_key)
    assert (status, headers["Retry-After"]) == (503, date)
    await control(client, sandbox, "POST", "faults", api="mypos", account=SEED_MYPOS_ACCOUNT, kind="http_503")
    async with client.get(mypos_url(sandbox), headers=mypos_headers()) as reply:
        assert reply.status == 503
        assert "Retry-After" not in reply.headers


async def test_truncated_body_drops_the_connection(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """truncated_body announces the whole length, sends half, and closes: the client sees a payload error."""
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "truncated_body")
    headers = mypos_headers()
    async with client.get(mypos_url(sandbox), headers=headers) as reply:
        assert reply.status == 200
        assert reply.headers["X-Request-ID"] == headers["X-Request-ID"]
        with pytest.raises(aiohttp.ClientPayloadError):
            await reply.read()


async def test_huge_body_is_larger_than_every_limit(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """huge_body streams 40 MiB, more than the 32 MiB listing limit of the client."""
    sandbox.faults.add("mastercard", TOKEN, "huge_body")
    url = mc_url(sandbox)
    signed = {"Authorization": authorization_header(url, "GET", "ck", signing_key)}
    async with client.get(URL(url, encoded=True), headers=signed) as reply:
        assert reply.headers.get("correlation-id")
        size = 0
        async for chunk in reply.content.iter_chunked(1024 * 1024):
            size += len(chunk)
    assert size > HUGE_BODY_BYTES > 32 * 1024 * 1024


async def test_slow_body_arrives_whole_in_the_end(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """slow_body trickles the right body in small pieces: a patient client gets it all."""
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "slow_body", delay_seconds=0.001)
    async with client.get(mypos_url(sandbox), headers=mypos_headers()) as reply:
        pieces = [chunk async for chunk in reply.content.iter_any()]
    body = b"".join(pieces)
    assert json.loads(body)["balances"][0]["balanceType"] == "available"
    assert len(pieces) > 3


async def test_entity_bomb_is_served_as_xml(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """xml_entity_bomb answers a billion-laughs DTD as application/xml, whatever was asked."""
    sandbox.faults.add("mastercard", TOKEN, "xml_entity_bomb")
    status, headers, body = await mc_get(client, mc_url(sandbox), signing_key)
    assert (status, headers["Content-Type"]) == (200, "application/xml")
    assert b"<!ENTITY lol9" in body


async def test_query_fault_on_a_signed_mastercard_url(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """?fault= works on Mastercard when the URL with the query is what was signed."""
    url = mc_url(sandbox, "?fault=unknown_state")
    status, _, body = await mc_get(client, url, signing_key)
    assert status == 200
    assert json.loads(body)["account_balances"]["account_balance"]["balance"]["state"] == "IN_LIMBO"
    status, _, body = await mc_get(client, mc_url(sandbox, "?fault=duplicate_accounts"), signing_key)
    accounts = json.loads(body)["account_balances"]["account_balance"]
    assert [a["non_card_token"] for a in accounts] == [TOKEN, TOKEN]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("explode", "kind must be one of"),
        ("token_expired", "applies to the mypos api only"),
        ("delay; delay_seconds=9999", "delay_seconds must be a number from 0 to 600"),
        ("http_429; colour=blue", "unknown fault parameter 'colour'"),
        ("http_429; retry_after", "is not name=value"),
    ],
)
async def test_bad_fault_header_is_a_400_in_the_api_format(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey,
    header: str, message: str,
) -> None:
    """A fault the sandbox cannot follow answers 400 in the API's error format, naming the problem."""
    status, _, body = await mc_get(client, mc_url(sandbox), signing_key, {"X-Sandbox-Fault": header})
    assert status == 400
    error = json.loads(body)["Errors"]["Error"][0]
    assert error["ReasonCode"] == "INVALID_FAULT"
    assert message in error["Description"]


@pytest.mark.parametrize(
    "body",
    [
        {"api": "mastercard", "account": "t", "kind": "consent_expired"},
        {"api": "mypos", "account": "t", "kind": "http_429", "retry_after": "soon\r\nX-Injected: 1"},
        {"api": "mypos", "account": "t", "kind": "http_429", "retry_after": True},
        {"api": "mypos", "account": "t", "kind": "slow_body", "delay_seconds": -1},
    ],
)
async def test_bad_control_fault_is_a_400(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    """The control API refuses faults it cannot follow, with a message."""
    status, reply = await control(client, sandbox, "POST", "faults", **body)
    assert status == 400
    assert reply["error"]


async def test_control_fault_shows_its_parameters(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """A fault set through the control API lists with its retry_after and delay."""
    status, fault = await control(client, sandbox, "POST", "faults", api="mypos", account="1",
                                  kind="http_429", retry_after=5, delay_seconds=0.5, count=None)
    assert status == 201
    assert (fault["retry_after"], fault["delay_seconds"], fault["remaining"]) == ("5", 0.5, None)
    assert (await control(client, sandbox, "GET", "faults"))[1] == [fault]


# --- myPOS authorisation -------------------------------------------------------------------------------


async def test_expire_token_and_consent_through_the_control_api(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """An expired token answers 401 TOKEN_EXPIRED; an expired consent 401 CONSENT_EXPIRED; a revoked one
    401 CONSENT_INVALID; a consent given again is accepted."""
    assert await control(client, sandbox, "POST", "mypos/expire-token") == (200, {"expired": 1})
    async with client.get(mypos_url(sandbox), headers=mypos_headers()) as reply:
        assert (reply.status, (await reply.json())["tppMessages"][0]["code"]) == (401, "TOKEN_EXPIRED")
    auth = (await control(client, sandbox, "GET", "mypos/auth"))[1]
    assert auth["access_tokens"] == {SAMPLE_MYPOS_ACCESS_TOKEN: "expired"}
    status, grant = await _token(client, sandbox, {
        "grant_type": "refresh_token", "refresh_token": SANDBOX_MYPOS_REFRESH_TOKEN,
        "client_id": SANDBOX_MYPOS_CLIENT_ID, "client_secret": SANDBOX_MYPOS_CLIENT_SECRET})
    assert status == 200
    headers = mypos_headers(Authorization=f"Bearer {grant['access_token']}")
    for status_name, code in (("expired", "CONSENT_EXPIRED"), ("invalid", "CONSENT_INVALID")):
        assert (await control(client, sandbox, "POST", "mypos/consent", status=status_name))[0] == 200
        async with client.get(mypos_url(sandbox), headers=headers) as reply:
            assert (reply.status, (await reply.json())["tppMessages"][0]["code"]) == (401, code)
    await control(client, sandbox, "POST", "mypos/consent", status="valid")
    async with client.get(mypos_url(sandbox), headers=headers) as reply:
        assert reply.status == 200


async def _token(client: aiohttp.ClientSession, box: RunningSandbox, form: dict[str, str],
                 headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with client.post(box.token_url, data=form, headers=headers or {}) as reply:
        return reply.status, await reply.json()


async def test_token_endpoint_grants_and_rotates(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """The refresh_token grant with HTTP Basic client authentication gives a working access token and a
    new refresh token; the old refresh token then fails with invalid_grant."""
    basic = base64.b64encode(f"{SANDBOX_MYPOS_CLIENT_ID}:{SANDBOX_MYPOS_CLIENT_SECRET}".encode()).decode()
    form = {"grant_type": "refresh_token", "refresh_token": SANDBOX_MYPOS_REFRESH_TOKEN}
    status, grant = await _token(client, sandbox, form, {"Authorization": f"Basic {basic}"})
    assert status == 200
    assert grant["token_type"] == "Bearer"
    assert grant["refresh_token"] != SANDBOX_MYPOS_REFRESH_TOKEN
    headers = mypos_headers(Authorization=f"Bearer {grant['access_token']}")
    async with client.get(mypos_url(sandbox), headers=headers) as reply:
        assert reply.status == 200
    assert await _token(client, sandbox, form, {"Authorization": f"Basic {basic}"}) == (
        400, {"error": "invalid_grant", "error_description": "the refresh token is not valid"})
    in_body = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"],
               "client_id": SANDBOX_MYPOS_CLIENT_ID, "client_secret": SANDBOX_MYPOS_CLIENT_SECRET}
    assert (await _token(client, sandbox, in_body))[0] == 200


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "refresh_token": "x", "client_id": "nobody",
          "client_secret": SANDBOX_MYPOS_CLIENT_SECRET}, 401, "invalid_client"),
        ({"grant_type": "refresh_token", "refresh_token": "x", "client_id": SANDBOX_MYPOS_CLIENT_ID,
          "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "refresh_token", "client_id": SANDBOX_MYPOS_CLIENT_ID,
          "client_secret": SANDBOX_MYPOS_CLIENT_SECRET}, 400, "invalid_request"),
    ],
)
async def test_token_endpoint_refusals(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, form: dict[str, str], status: int, error: str
) -> None:
    """Wrong grant, wrong client or a missing refresh token: RFC 6749 errors, no token."""
    got_status, body = await _token(client, sandbox, form)
    assert (got_status, body["error"]) == (status, error)
    assert "access_token" not in body


# --- scenario files ------------------------------------------------------------------------------------


def test_fault_file_is_checked_entry_by_entry(tmp_path: Path) -> None:
    """A scenario file is a JSON list of faults; a bad entry is named with the file."""
    good = tmp_path / "faults.json"
    good.write_text(json.dumps([
        {"api": "mypos", "account": "1", "kind": "http_503", "count": None, "retry_after": "3"},
        {"api": "mastercard", "account": "*", "kind": "slow_body", "delay_seconds": 0.5},
    ]))
    assert [entry["kind"] for entry in load_fault_file(good)] == ["http_503", "slow_body"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"api": "mypos", "account": "1", "kind": "http_503"}, {"api": "mypos"}]))
    with pytest.raises(CliError, match=r"bad\.json: fault \[1\]: account must be a non-empty string|"
                                       r"bad\.json: fault \[1\]: kind must be a non-empty string"):
        load_fault_file(bad)
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text("{}")
    with pytest.raises(CliError, match="expected a JSON list of fault objects"):
        load_fault_file(not_a_list)
    with pytest.raises(CliError, match="cannot read the faults file"):
        load_fault_file(tmp_path / "missing.json")
