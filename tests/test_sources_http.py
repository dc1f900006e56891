"""The two sources against a small recording HTTP server of the test's own, on 127.0.0.1.

They guarantee the exact request (URL, headers, an OAuth signature that verifies for exactly the URL the
server received), and that every failure becomes an outcome, never an exception.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID
from oauth_headers import oauth_params, verify_oauth

from watcher.config import ConfigError, MastercardSendConfig, MyposPsd2Config
from watcher.sign_process import SigningProcesses
from watcher.signers import ThreadSigner
from watcher.signing import authorization_header
from watcher.sources import build_source, transport
from watcher.sources.base import FetchResult
from watcher.sources.mastercard import MastercardSendSource
from watcher.sources.mypos import MyposPsd2Source

SEED = Path(__file__).resolve().parent.parent / "watcher" / "sandbox" / "seed"
T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
TOKEN = "non_card_token:suZz18lhAFvx9LQa6U2VMxs0BJLAD_TXVzYvaqTsjcG_AImuzmvNXQ"
CONSUMER_KEY = "ck-SECRET-abc!123"
SECRETS = (CONSUMER_KEY, "consent-SECRET", "token-SECRET", "apikey-SECRET")
EMPTY_BODY_HASH = base64.b64encode(hashlib.sha256(b"").digest()).decode()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    raw_path: str
    url: str
    headers: dict[str, str]


@dataclass
class Server:
    """A recording server: set `handler` to decide the answer."""

    base: str = ""
    handler: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(request.method, request.raw_path, f"{self.base}{request.raw_path}", dict(request.headers))
        )
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """The recording server on a free loopback port, stopped after the test."""
    state = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.dispatch)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base = f"http://127.0.0.1:{port}"
    yield state
    state.release.set()
    await runner.cleanup()




@pytest.fixture
def refused_base() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def mc_config(base: str, **changes: Any) -> MastercardSendConfig:
    data: dict[str, Any] = {
        "type": "mastercard-send", "name": "mc-gbp", "base_url": f"{base}/send", "partner_id": "ptnr_1",
        "consumer_key": CONSUMER_KEY, "signing_key_path": "unused.p12", "signing_key_password": "pw",
        "format": "json", "non_card_tokens": [TOKEN], "timeout": "5s",
        "backoff_base": "1ms", "backoff_max": "5ms",
    }
    return MastercardSendConfig.model_validate({**data, **changes})


def mypos_config(base: str, **changes: Any) -> MyposPsd2Config:
    data: dict[str, Any] = {
        "type": "mypos-psd2", "name": "cards", "base_url": base, "api_key": "apikey-SECRET",
        "consent_id": "consent-SECRET", "access_token": "token-SECRET", "account_numbers": ["50553500971"],
        "timeout": "5s", "backoff_base": "1ms", "backoff_max": "5ms", "daily_access_budget": 0,
    }
    return MyposPsd2Config.model_validate({**data, **changes})


def mc_source(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey, **changes: Any
) -> MastercardSendSource:
    return MastercardSendSource(mc_config(server.base, **changes), session, key, clock=lambda: T0)


def answer(body: bytes, content_type: str = "application/json", status: int = 200,
           headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        return web.Response(status=status, body=body, headers=all_headers)
    return handle


def assert_no_secret(result: FetchResult) -> None:
    text = repr(result)
    for secret in SECRETS:
        assert secret not in text


# --- Mastercard -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_mastercard_request_is_exact_and_signed(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey, fmt: str
) -> None:
    """One call: the exact path (':' literal in the token), Accept per format, and an OAuth header whose
    signature verifies against the public key for exactly the URL the server received."""
    server.handler = answer(
        (SEED / f"mc_account_balance.{fmt}").read_bytes(), f"application/{fmt};charset=UTF-8",
        headers={"correlation-id": "0.a1b2c3d4.1680000000.1234abcd"},
    )
    source = mc_source(server, session, key, format=fmt)
    result = await source.fetch(TOKEN)

    (seen,) = server.seen
    assert seen.method == "GET"
    assert seen.raw_path == f"/send/v1/partners/ptnr_1/non-card-tokens/{TOKEN}/account-balance"
    assert seen.url == source.url_for(TOKEN)
    assert seen.headers["Accept"] == f"application/{fmt}"
    params = oauth_params(seen.headers["Authorization"])
    assert params["oauth_consumer_key"] == CONSUMER_KEY
    assert params["oauth_signature_method"] == "RSA-SHA256"
    assert params["oauth_version"] == "1.0"
    assert params["oauth_body_hash"] == EMPTY_BODY_HASH
    verify_oauth(seen.headers["Authorization"], "GET", seen.url, key.public_key())
    # The signature covers the exact URL: another encoding of the same path does not verify.
    other = seen.url.replace(":suZz", "%3AsuZz")
    with pytest.raises(InvalidSignature):
        verify_oauth(seen.headers["Authorization"], "GET", other, key.public_key())

    assert result.outcome == "ok", result.error
    assert (result.source, result.target, result.http_status) == ("mc-gbp", TOKEN, 200)
    assert result.correlation_id == "0.a1b2c3d4.1680000000.1234abcd"
    (only,) = result.observations
    assert only.key.account == TOKEN
    assert only.balance.amount == Decimal("1000")
    assert only.correlation_id == result.correlation_id
    assert only.observed_at == T0
    assert result.duration_s > 0


async def test_mastercard_listing_when_no_tokens(server: Server, session: aiohttp.ClientSession,
                                                 key: RSAPrivateKey) -> None:
    """Without configured tokens one call lists every account of the partner; the result names its
    accounts with their observations' very keys (the poller takes them as the accounts answered)."""
    server.handler = answer((SEED / "mc_account_balances.json").read_bytes())
    source = mc_source(server, session, key, non_card_tokens=[])
    assert source.targets() == ("*",)
    result = await source.fetch("*")
    (seen,) = server.seen
    assert seen.raw_path == "/send/v1/partners/ptnr_1/account-balances"
    verify_oauth(seen.headers["Authorization"], "GET", seen.url, key.public_key())
    assert result.outcome == "ok"
    assert [o.balance.amount for o in result.observations] == [Decimal(1000), Decimal(13000), Decimal(5000)]
    assert result.correlation_id == ""  # no correlation-id header in this answer
    assert result.accounts is not None
    assert list(result.accounts) == [o.key.account for o in result.observations]
    assert all(result.accounts[o.key.account] is o.key for o in result.observations)


async def test_mastercard_odd_token_is_encoded_and_still_verifies(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A token with '/', '?', '%' and a space is percent-encoded as one path segment, and the signature
    is over exactly that encoded URL."""
    token = "tok:a/b?c%d e"
    server.handler = answer(b'{"account_balances": {"account_balance": {"non_card_token": "tok:a/b?c%d e",'
                            b' "balance": {"amount": "1", "currency": "GBP", "state": "IN_CREDIT"}}}}')
    source = mc_source(server, session, key, non_card_tokens=[token], partner_id="p 1")
    result = await source.fetch(token)
    (seen,) = server.seen
    assert seen.raw_path == "/send/v1/partners/p%201/non-card-tokens/tok:a%2Fb%3Fc%25d%20e/account-balance"
    verify_oauth(seen.headers["Authorization"], "GET", seen.url, key.public_key())
    assert result.outcome == "ok"
    assert result.observations[0].key.account == token
    assert result.accounts is None  # one account's call: not a listing


async def test_mastercard_partial_listing_reports_rejected(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A listing with one bad account is ok with the good ones, the bad one named in `rejected`."""
    doc = json.loads((SEED / "mc_account_balances.json").read_bytes())
    doc["account-balances"][0]["balance"]["currency"] = "pounds"
    server.handler = answer(json.dumps(doc).encode())
    result = await mc_source(server, session, key, non_card_tokens=[]).fetch("*")
    assert result.outcome == "ok"
    assert len(result.observations) == 2
    (reason,) = result.rejected
    assert "account-balances[0]" in reason
    assert "'pounds'" in reason


async def test_mastercard_answer_for_another_account_is_refused(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A single-account answer about another token is a bad_response, never filed under the asked one."""
    server.handler = answer((SEED / "mc_account_balance.json").read_bytes())
    result = await mc_source(server, session, key, non_card_tokens=["tok:other"]).fetch("tok:other")
    assert result.outcome == "bad_response"
    assert result.observations == ()
    assert result.error is not None
    assert "is not the one asked for" in result.error


MC_ERROR_JSON = (b'{"Errors":{"Error":[{"Source":"OAuth.Signature","ReasonCode":"AUTHENTICATION_FAILED",'
                 b'"Description":"OAuth signature is invalid","Recoverable":"false","Details":null}]}}')
MC_ERROR_XML = (b"<Errors><Error><Source>partnerId</Source><ReasonCode>INVALID_INPUT_VALUE</ReasonCode>"
                b"<Description>Invalid partner</Description><Recoverable>false</Recoverable>"
                b"</Error></Errors>")


@pytest.mark.parametrize(
    ("handler", "outcome", "status", "error"),
    [
        (answer(b"oops", "text/plain", 500), "http_error", 500, "HTTP 500 Internal Server Error"),
        (answer(MC_ERROR_JSON, status=401), "http_error", 401,
         "HTTP 401 Unauthorized: AUTHENTICATION_FAILED: OAuth signature is invalid"),
        (answer(MC_ERROR_XML, "application/xml", 400), "http_error", 400,
         "HTTP 400 Bad Request: INVALID_INPUT_VALUE: Invalid partner"),
        (answer(b"", status=302, headers={"Location": "http://example.invalid/"}),
         "http_error", 302, "HTTP 302"),
        (answer(b"<html>Maintenance</html>", "text/html"), "bad_response", 200,
         "asked for application/json, got Content-Type text/html"),
        (answer(b"{}", ""), "bad_response", 200, "asked for application/json, got Content-Type"),
        (answer(b'{"account_balances": {"account_bal'), "bad_response", 200, "not valid JSON"),
        (answer(b"\x00\xff garbage"), "bad_response", 200, "not valid JSON"),
        (answer(b'{"something": "else"}'), "bad_response", 200,
         "top level: expected account_balances or account-balances, found 'something'"),
        (answer(b" " * (1024 * 1024 + 1)), "bad_response", 200,
         "the response body is larger than the limit of 1024 KiB"),
    ],
)
async def test_mastercard_failures_are_outcomes(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey,
    handler: Handler, outcome: str, status: int, error: str,
) -> None:
    """Each failure answer gives its outcome, the status and a clear error, and never raises or leaks
    a secret."""
    server.handler = handler
    result = await mc_source(server, session, key).fetch(TOKEN)
    assert (result.outcome, result.http_status) == (outcome, status)
    assert result.error is not None
    assert result.error.startswith(error), result.error
    assert result.observations == ()
    assert_no_secret(result)


async def test_mastercard_oversized_chunked_body_is_refused(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """A body without Content-Length is still cut off at the limit."""
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b" " * 65536)
        await response.write_eof()
        return response

    server.handler = stream
    result = await mc_source(server, session, key).fetch(TOKEN)
    assert result.outcome == "bad_response"
    assert result.error == transport.too_large(1024 * 1024)


async def test_truncated_body_is_a_bad_response(session: aiohttp.ClientSession, key: RSAPrivateKey) -> None:
    """A connection closed before Content-Length bytes arrived is a bad_response."""
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                     b'{"account_balances": {')
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(half, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        source = MastercardSendSource(mc_config(f"http://127.0.0.1:{port}"), session, key)
        result = await source.fetch(TOKEN)
    finally:
        raw.close()
        await raw.wait_closed()
    assert result.outcome == "bad_response"
    assert result.error is not None
    assert "cut short" in result.error


async def test_mastercard_timeout(server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey) -> None:
    """A server slower than the configured timeout gives outcome timeout, promptly."""
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(server.release.wait(), 10)
        return web.Response(body=b"{}")

    server.handler = slow
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await mc_source(server, session, key, timeout="200ms").fetch(TOKEN)
    assert result.outcome == "timeout"
    assert result.error == "no complete answer within 0.2s"
    assert loop.time() - started < 2
    assert result.http_status is None
    assert result.correlation_id == ""


async def test_mastercard_connection_refused(
    refused_base: str, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """Nothing listening is a network_error naming the host, without secrets."""
    source = MastercardSendSource(mc_config(refused_base), session, key)
    result = await source.fetch(TOKEN)
    assert result.outcome == "network_error"
    assert result.error is not None
    assert "127.0.0.1" in result.error
    assert_no_secret(result)


# --- myPOS ------------------------------------------------------------------------------------------


def echoing(body: bytes, status: int = 200, echo: Callable[[str], str | None] = lambda rid: rid) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/json"}
        echoed = echo(request.headers.get("X-Request-ID", ""))
        if echoed is not None:
            headers["X-Request-ID"] = echoed
        return web.Response(status=status, body=body, headers=headers)
    return handle


async def test_mypos_request_is_exact(server: Server, session: aiohttp.ClientSession) -> None:
    """Exact URL and headers; X-Request-ID is a fresh UUID4 per call and is the correlation id."""
    server.handler = echoing((SEED / "mypos_balances.json").read_bytes())
    source = MyposPsd2Source(mypos_config(server.base), session, clock=lambda: T0)
    first = await source.fetch("50553500971")
    second = await source.fetch("50553500971")

    assert [s.raw_path for s in server.seen] == ["/v1/card-accounts/50553500971/balances"] * 2
    headers = server.seen[0].headers
    assert headers["Consent-ID"] == "consent-SECRET"
    assert headers["Authorization"] == "Bearer token-SECRET"
    assert headers["API-Key"] == "apikey-SECRET"
    assert headers["Accept"] == "application/json"
    ids = [s.headers["X-Request-ID"] for s in server.seen]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert all(str(uuid.UUID(i)) == i for i in ids)
    assert ids[0] != ids[1]
    assert [first.correlation_id, second.correlation_id] == ids

    assert first.outcome == "ok", first.error
    (only,) = first.observations
    assert only.balance.amount == Decimal("120.260")
    assert str(only.balance.amount) == "120.260"
    assert only.key.event_key == "cards:50553500971"
    assert only.correlation_id == ids[0]
    assert_no_secret(first)


async def test_mypos_echo_mismatch_is_refused(server: Server, session: aiohttp.ClientSession) -> None:
    """An answer echoing another X-Request-ID is a bad_response; a missing echo is tolerated."""
    body = (SEED / "mypos_balances.json").read_bytes()
    source = MyposPsd2Source(mypos_config(server.base), session)
    server.handler = echoing(body, echo=lambda rid: str(uuid.uuid4()))
    mismatch = await source.fetch("50553500971")
    assert mismatch.outcome == "bad_response"
    assert mismatch.observations == ()
    assert mismatch.error is not None
    assert mismatch.error.startswith("X-Request-ID mismatch")
    server.handler = echoing(body, echo=lambda rid: rid.upper())
    assert (await source.fetch("50553500971")).outcome == "ok"
    server.handler = echoing(body, echo=lambda rid: None)
    assert (await source.fetch("50553500971")).outcome == "ok"


@pytest.mark.parametrize(
    ("handler", "outcome", "status", "error"),
    [
        (echoing(b'{"tppMessages":[{"category":"ERROR","code":"CONSENT_INVALID",'
                 b'"text":"Consent is not valid"}]}', 401),
         "access_revoked", 401, "access revoked: HTTP 401 Unauthorized: CONSENT_INVALID: Consent is not"),
        (echoing(b'{"tppMessages":[{"category":"ERROR","code":"RESOURCE_UNKNOWN","text":"no such account"}]}',
                 404),
         "http_error", 404, "HTTP 404 Not Found: RESOURCE_UNKNOWN: no such account"),
        (echoing(b"", 503), "http_error", 503, "HTTP 503 Service Unavailable"),
        (answer(b"<html/>", "text/html"), "bad_response", 200, "asked for application/json"),
        (echoing(b'{"maskedPan": "x", "balances": [{"amount": NaN'), "bad_response", 200, "not valid JSON"),
        (echoing(b'{"balances": [{"amount": 1e400, "currency": "EUR", "balanceType": "available"}]}'),
         "bad_response", 200, "no usable balance: balances[0] (available).amount: 1E+400"),
    ],
)
async def test_mypos_failures_are_outcomes(
    server: Server, session: aiohttp.ClientSession, handler: Handler, outcome: str, status: int, error: str
) -> None:
    """Berlin Group errors give their code and text; bad bodies are bad_response; never a raise."""
    server.handler = handler
    result = await MyposPsd2Source(mypos_config(server.base), session).fetch("50553500971")
    assert (result.outcome, result.http_status) == (outcome, status)
    assert result.error is not None
    assert result.error.startswith(error), result.error
    assert uuid.UUID(result.correlation_id)
    assert_no_secret(result)


async def test_mypos_timeout_and_refused(server: Server, refused_base: str,
                                         session: aiohttp.ClientSession) -> None:
    """A slow server is a timeout and a closed port a network_error, both with our request id."""
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(server.release.wait(), 10)
        return web.Response(body=b"{}")

    server.handler = slow
    timed_out = await MyposPsd2Source(mypos_config(server.base, timeout="150ms"), session).fetch("1")
    assert timed_out.outcome == "timeout"
    assert uuid.UUID(timed_out.correlation_id)
    refused = await MyposPsd2Source(mypos_config(refused_base), session).fetch("1")
    assert refused.outcome == "network_error"
    assert uuid.UUID(refused.correlation_id)
    assert_no_secret(refused)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpp")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(1).not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
            .sign(private, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tpp.crt", tmp_path / "tpp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return cert_path, key_path


async def test_mypos_client_certificate_is_loaded_once(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A client certificate loads at construction; a missing one is a ConfigError naming the file."""
    cert, private = _self_signed(tmp_path)
    loaded = mypos_config("https://x", client_cert_path=str(cert), client_key_path=str(private))
    MyposPsd2Source(loaded, session)
    with pytest.raises(ConfigError, match=r"'cards': cannot load the client certificate .*missing\.crt"):
        MyposPsd2Source(mypos_config("https://x", client_cert_path=str(tmp_path / "missing.crt")), session)
    with pytest.raises(ConfigError, match="client_key_path is set but client_cert_path is not"):
        MyposPsd2Source(mypos_config("https://x", client_key_path=str(private)), session)


# --- the factory ------------------------------------------------------------------------------------


async def test_build_source_picks_the_adapter(session: aiohttp.ClientSession, key: RSAPrivateKey) -> None:
    """build_source gives the adapter of the config's type; Mastercard without a key is refused."""
    mc = build_source(mc_config("http://x"), session, key)
    assert isinstance(mc, MastercardSendSource)
    assert (mc.name, mc.provider, mc.max_concurrency) == ("mc-gbp", "mastercard-send", 16)
    assert tuple(mc.targets()) == (TOKEN,)
    card = build_source(mypos_config("http://x"), session, None)
    assert isinstance(card, MyposPsd2Source)
    assert (card.name, card.provider, tuple(card.targets())) == ("cards", "mypos-psd2", ("50553500971",))
    with pytest.raises(ValueError, match="needs its signing key"):
        build_source(mc_config("http://x"), session, None)


# --- signing off the event loop -------------------------------------------------------------------------


class RecordingPool(ThreadPoolExecutor):
    """A signing pool that notes the thread each submitted call ran on."""

    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="test-sign")
        self.threads: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def noted() -> Any:
            self.threads.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return super().submit(noted)


ODD_TOKEN = "tok:a/b?c%d e"


def serve_503_then_the_balance(server: Server) -> None:
    """The server answers 503 first, then the balance of ODD_TOKEN."""
    attempts: list[int] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        attempts.append(1)
        if len(attempts) == 1:
            return web.Response(status=503)
        balance = {"amount": "1", "currency": "GBP", "state": "IN_CREDIT"}
        return web.json_response(
            {"account_balances": {"account_balance": {"non_card_token": ODD_TOKEN, "balance": balance}}}
        )

    server.handler = flaky


def assert_each_attempt_signed_its_url(server: Server, key: RSAPrivateKey) -> None:
    """Two attempts reached the server, each signed for exactly the URL it arrived at, each nonce fresh."""
    assert len(server.seen) == 2
    nonces = set()
    for seen in server.seen:
        assert seen.raw_path.endswith("/non-card-tokens/tok:a%2Fb%3Fc%25d%20e/account-balance")
        verify_oauth(seen.headers["Authorization"], "GET", seen.url, key.public_key())
        nonces.add(oauth_params(seen.headers["Authorization"])["oauth_nonce"])
    assert len(nonces) == 2


async def test_mastercard_signs_on_the_pool_the_exact_url_sent(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """With a signing pool, every attempt (a retried 503 included) is signed on a pool thread, with a fresh
    nonce, and each signature verifies for exactly the URL the server received, odd token included."""
    serve_503_then_the_balance(server)
    with RecordingPool() as pool:
        source = build_source(mc_config(server.base, non_card_tokens=[ODD_TOKEN], retries=2), session, key,
                              signer=ThreadSigner(pool))
        result = await source.fetch(ODD_TOKEN)
        assert result.outcome == "ok", result.error
        assert result.attempts == 2
        assert len(pool.threads) == 2
        assert all(name.startswith("test-sign") for name in pool.threads)
    assert_each_attempt_signed_its_url(server, key)


async def test_mastercard_without_a_pool_signs_on_the_event_loop(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """No signer (`[signing]` threads and processes 0) signs in the event loop's thread; the request is
    the same."""
    loop_thread = threading.current_thread().name
    signed_on: list[str] = []

    def spy(url: str, method: str, consumer_key: str, signing_key: RSAPrivateKey) -> str:
        signed_on.append(threading.current_thread().name)
        return authorization_header(url, method, consumer_key, signing_key)

    server.handler = answer((SEED / "mc_account_balance.json").read_bytes())
    source = mc_source(server, session, key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("watcher.sources.mastercard.authorization_header", spy)
        result = await source.fetch(TOKEN)
    assert result.outcome == "ok", result.error
    assert signed_on == [loop_thread]
    (seen,) = server.seen
    verify_oauth(seen.headers["Authorization"], "GET", seen.url, key.public_key())


async def test_mastercard_signs_in_a_signing_process_the_exact_url_sent(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """With signing processes, each attempt (a retried 503 included) is signed by a child process, with a
    fresh nonce, and verifies for exactly the URL the server received, odd token included."""
    serve_503_then_the_balance(server)
    signer = SigningProcesses(1)
    await signer.start()
    try:
        source = build_source(mc_config(server.base, non_card_tokens=[ODD_TOKEN], retries=2), session, key,
                              signer=signer)
        with pytest.MonkeyPatch.context() as patch:  # nothing is signed in this process
            patch.setattr("watcher.sources.mastercard.authorization_header", None)
            result = await source.fetch(ODD_TOKEN)
    finally:
        await signer.close()
    assert result.outcome == "ok", result.error
    assert result.attempts == 2
    assert_each_attempt_signed_its_url(server, key)


async def test_a_call_that_cannot_be_signed_fails_without_a_request(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """When no signing process can start, the call fails at once (`bad_response`, "could not sign the
    request", not retried) and nothing is sent."""
    server.handler = answer((SEED / "mc_account_balance.json").read_bytes())
    signer = SigningProcesses(1, command=[sys.executable, "-c", "raise SystemExit(5)"])
    source = MastercardSendSource(mc_config(server.base, retries=3), session, key, signer=signer)
    result = await source.fetch(TOKEN)
    await signer.close()
    assert result.outcome == "bad_response"
    assert result.error is not None
    assert result.error.startswith("could not sign the request: a signing process could not start")
    assert "exited with code 5" in result.error
    assert result.attempts == 1
    assert server.seen == []


async def test_many_calls_share_the_pool(
    server: Server, session: aiohttp.ClientSession, key: RSAPrivateKey
) -> None:
    """Concurrent calls of one source all sign on the pool and all verify (no header crosses calls)."""
    tokens = [f"non_card_token:t{i}" for i in range(20)]

    async def echo(request: web.Request) -> web.StreamResponse:
        token = unquote(request.raw_path.split("/")[-2])
        return web.json_response({"account_balances": {"account_balance": {
            "non_card_token": token, "balance": {"amount": "1", "currency": "GBP", "state": "IN_CREDIT"}}}})

    server.handler = echo
    with RecordingPool() as pool:
        source = MastercardSendSource(mc_config(server.base, non_card_tokens=tokens), session, key,
                                      signer=ThreadSigner(pool))
        results = await asyncio.gather(*(source.fetch(t) for t in tokens))
        assert len(pool.threads) == 20
    assert [r.outcome for r in results] == ["ok"] * 20
    assert [r.observations[0].key.account for r in results] == tokens
    for seen in server.seen:
        verify_oauth(seen.headers["Authorization"], "GET", seen.url, key.public_key())
