"""The local sandbox: both balance APIs over real HTTP on 127.0.0.1, its signature check and controls."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from defusedxml import ElementTree
from multidict import CIMultiDictProxy
from yarl import URL

from watcher.devkeys import DevKey, generate_dev_key
from watcher.sandbox import (
    RunningSandbox,
    SandboxError,
    SandboxSettings,
    build_sandbox_app,
    mypos,
    running_sandbox,
    serve_sandbox,
)
from watcher.sandbox import mastercard as mc
from watcher.sandbox.state import SANDBOX_STATE
from watcher.sandbox.world import SEED_MYPOS_ACCOUNT
from watcher.signing import authorization_header, load_signing_key

CONSUMER_KEY = "sandbox-consumer-key!abc"
PARTNER = "ptnr_TEST"
SEED_TOKEN = "non_card_token:suZz18lhAFvx9LQa6U2VMxs0BJLAD_TXVzYvaqTsjcG_AImuzmvNXQ"
MYPOS_HEADERS = {
    "API-Key": "aGDmxHAmpMWUL1txqCsjEcOS",
    "Authorization": "Bearer oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X",
    "Consent-ID": "3c7816ee-3d51-4bf5-8ced-ece2af35d431",
}


def _seed(name: str) -> bytes:
    return resources.files("watcher.sandbox").joinpath("seed", name).read_bytes()


@dataclass(frozen=True)
class Reply:
    """What a test request got back."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, numbers as exact Decimals."""
        return json.loads(self.body, parse_float=Decimal)


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def dev_key(tmp_path_factory: pytest.TempPathFactory) -> DevKey:
    """The development key the sandbox verifies against."""
    return generate_dev_key(tmp_path_factory.mktemp("devkey"))


@pytest.fixture(scope="module")
def signing_key(dev_key: DevKey) -> RSAPrivateKey:
    """The private half of dev_key."""
    return load_signing_key(dev_key.p12_path, "devpassword")


@pytest.fixture(scope="module")
def stranger_key(tmp_path_factory: pytest.TempPathFactory) -> RSAPrivateKey:
    """A key whose certificate the sandbox does not know."""
    other = generate_dev_key(tmp_path_factory.mktemp("otherkey"))
    return load_signing_key(other.p12_path, "devpassword")


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sandbox(dev_key: DevKey) -> AsyncIterator[RunningSandbox]:
    """A static sandbox (tick 0) on a free port of 127.0.0.1."""
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0)
    async with running_sandbox(settings) as box:
        yield box


async def _get(client: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None) -> Reply:
    # encoded=True: the URL goes out exactly as it was signed.
    async with client.get(URL(url, encoded=True), headers=dict(headers or {})) as response:
        return Reply(response.status, response.headers, await response.read())


async def _signed_get(
    client: aiohttp.ClientSession,
    url: str,
    key: RSAPrivateKey,
    *,
    accept: str = "application/json",
    consumer_key: str = CONSUMER_KEY,
) -> Reply:
    header = authorization_header(url, "GET", consumer_key, key)
    return await _get(client, url, {"Authorization": header, "Accept": accept})


async def _control(
    client: aiohttp.ClientSession, box: RunningSandbox, method: str, path: str, **body: Any
) -> Reply:
    async with client.request(method, f"{box.base_url}/_sandbox/{path}", json=body or None) as response:
        return Reply(response.status, response.headers, await response.read())


def _single_url(box: RunningSandbox, partner: str, token: str) -> str:
    return f"{box.mastercard_base_url}/v1/partners/{partner}/non-card-tokens/{token}/account-balance"


def _listing_url(box: RunningSandbox, partner: str) -> str:
    return f"{box.mastercard_base_url}/v1/partners/{partner}/account-balances"


def _assert_mastercard_error(reply: Reply, status: int, reason_code: str = "AUTHENTICATION_FAILED") -> str:
    """Check Mastercard's JSON error format; return the error's Source."""
    assert reply.status == status
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers.get("correlation-id")
    errors = reply.json()["Errors"]["Error"]
    assert len(errors) == 1
    error = errors[0]
    assert set(error) == {"Source", "ReasonCode", "Description", "Recoverable", "Details"}
    assert error["ReasonCode"] == reason_code
    assert error["Details"] is None
    assert isinstance(error["Description"], str)
    assert error["Description"]
    return str(error["Source"])


async def _mypos_get(
    client: aiohttp.ClientSession, box: RunningSandbox, account: str, headers: Mapping[str, str | None]
) -> Reply:
    sent = {name: value for name, value in headers.items() if value is not None}
    return await _get(client, f"{box.base_url}/v1/card-accounts/{account}/balances", sent)


def _mypos_headers(**changes: str | None) -> dict[str, str | None]:
    headers: dict[str, str | None] = {"X-Request-ID": str(uuid.uuid4()), **MYPOS_HEADERS}
    headers.update({name.replace("_", "-"): value for name, value in changes.items()})
    return headers


# -- Mastercard: signatures ---------------------------------------------------------------------------


@pytest.mark.parametrize("listing", [False, True], ids=["single", "listing"])
@pytest.mark.parametrize("accept", ["application/json", "application/xml"])
@pytest.mark.parametrize("query", ["", "?page=1&limit=10&label=a%20b"], ids=["no-query", "query"])
async def test_signed_request_is_accepted(
    sandbox: RunningSandbox,
    client: aiohttp.ClientSession,
    signing_key: RSAPrivateKey,
    listing: bool,
    accept: str,
    query: str,
) -> None:
    """A request signed with watcher.signing verifies: 200 in the asked format, both endpoints."""
    token = f"non_card_token:sbx-{PARTNER}-0001"
    url = (_listing_url(sandbox, PARTNER) if listing else _single_url(sandbox, PARTNER, token)) + query
    reply = await _signed_get(client, url, signing_key, accept=accept)
    assert reply.status == 200, reply.body
    assert reply.headers.get("correlation-id")
    if accept == "application/xml":
        assert reply.headers["Content-Type"] == "application/xml"
        root = ElementTree.fromstring(reply.body)
        assert root.tag == ("account-balances" if listing else "account_balances")
        assert root.findtext("account_balance/non_card_token") == token
    else:
        assert reply.headers["Content-Type"] == "application/json"
        document = reply.json()
        if listing:
            account = document["account-balances"][0]
        else:
            account = document["account_balances"]["account_balance"]
        assert account["non_card_token"] == token
        assert isinstance(account["balance"]["amount"], str)


async def test_altered_signature_is_refused(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A signature changed after signing gets 401 in Mastercard's error format."""
    url = _listing_url(sandbox, PARTNER)
    header = authorization_header(url, "GET", CONSUMER_KEY, signing_key)
    start = header.index('oauth_signature="') + len('oauth_signature="')
    flipped = "B" if header[start] == "A" else "A"
    tampered = header[:start] + flipped + header[start + 1 :]
    reply = await _get(client, url, {"Authorization": tampered})
    assert _assert_mastercard_error(reply, 401) == "OAuth.Signature"


async def test_path_altered_after_signing_is_refused(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A header signed for one URL does not authenticate another path or another query."""
    signed_url = _single_url(sandbox, PARTNER, f"non_card_token:sbx-{PARTNER}-0001")
    header = authorization_header(signed_url, "GET", CONSUMER_KEY, signing_key)
    other_path = await _get(client, signed_url.replace("-0001", "-0002"), {"Authorization": header})
    assert _assert_mastercard_error(other_path, 401) == "OAuth.Signature"
    header = authorization_header(signed_url, "GET", CONSUMER_KEY, signing_key)
    added_query = await _get(client, signed_url + "?x=1", {"Authorization": header})
    assert _assert_mastercard_error(added_query, 401) == "OAuth.Signature"


@pytest.mark.parametrize(("skew_minutes", "status"), [(6, 401), (-6, 401), (4, 200)])
async def test_timestamp_outside_five_minutes_is_refused(
    dev_key: DevKey, client: aiohttp.ClientSession, signing_key: RSAPrivateKey, skew_minutes: int, status: int
) -> None:
    """oauth_timestamp more than 5 minutes from the sandbox's clock gets 401; within 5 minutes, 200."""

    def skewed() -> datetime:
        return datetime.now(UTC) + timedelta(minutes=skew_minutes)

    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0)
    async with running_sandbox(settings, wall_clock=skewed) as box:
        reply = await _signed_get(client, _listing_url(box, PARTNER), signing_key)
    if status == 401:
        assert _assert_mastercard_error(reply, 401) == "OAuth.Timestamp"
    else:
        assert reply.status == 200


async def test_replayed_nonce_is_refused(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """The same signed header sent twice is accepted once, then refused as a replay."""
    url = _listing_url(sandbox, PARTNER)
    header = authorization_header(url, "GET", CONSUMER_KEY, signing_key)
    first = await _get(client, url, {"Authorization": header})
    second = await _get(client, url, {"Authorization": header})
    assert first.status == 200
    assert _assert_mastercard_error(second, 401) == "OAuth.Nonce"


async def test_key_of_another_certificate_is_refused(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, stranger_key: RSAPrivateKey
) -> None:
    """A correct signature by a key the sandbox's certificate does not match gets 401."""
    reply = await _signed_get(client, _listing_url(sandbox, PARTNER), stranger_key)
    assert _assert_mastercard_error(reply, 401) == "OAuth.Signature"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer abc", 'OAuth oauth_consumer_key="x"', "OAuth garbage"],
    ids=["missing", "bearer", "incomplete", "garbage"],
)
async def test_missing_or_malformed_header_is_refused(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, authorization: str | None
) -> None:
    """No Authorization header, or one that is not a complete OAuth header, gets 401."""
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = await _get(client, _listing_url(sandbox, PARTNER), headers)
    _assert_mastercard_error(reply, 401)


async def test_wrong_body_hash_is_refused(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A GET whose oauth_body_hash is not the hash of an empty body gets 401."""
    url = _listing_url(sandbox, PARTNER)
    header = authorization_header(url, "GET", CONSUMER_KEY, signing_key)
    tampered = header.replace("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "AAAA")
    reply = await _get(client, url, {"Authorization": tampered})
    assert _assert_mastercard_error(reply, 401) == "OAuth.BodyHash"


async def test_refusal_in_xml_when_xml_is_asked(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, stranger_key: RSAPrivateKey
) -> None:
    """A 401 to a client asking XML is Mastercard's error format in XML."""
    reply = await _signed_get(client, _listing_url(sandbox, PARTNER), stranger_key, accept="application/xml")
    assert reply.status == 401
    assert reply.headers["Content-Type"] == "application/xml"
    assert reply.headers.get("correlation-id")
    root = ElementTree.fromstring(reply.body)
    assert root.tag == "Errors"
    assert root.findtext("Error/ReasonCode") == "AUTHENTICATION_FAILED"
    assert root.findtext("Error/Source") == "OAuth.Signature"
    assert root.findtext("Error/Recoverable") == "false"


async def test_only_configured_consumer_keys_are_accepted(
    dev_key: DevKey, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """With consumer_keys set, another consumer key gets 401 even with a good signature."""
    settings = SandboxSettings(
        certificate_path=dev_key.certificate_path, tick_seconds=0, consumer_keys=frozenset({"good-key"})
    )
    async with running_sandbox(settings) as box:
        good = await _signed_get(client, _listing_url(box, PARTNER), signing_key, consumer_key="good-key")
        bad = await _signed_get(client, _listing_url(box, PARTNER), signing_key, consumer_key="other-key")
    assert good.status == 200
    assert _assert_mastercard_error(bad, 401) == "OAuth.ConsumerKey"


# -- Mastercard: answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listing", "accept", "seed_file"),
    [
        (False, "application/json", "mc_account_balance.json"),
        (False, "application/xml", "mc_account_balance.xml"),
        (True, "application/json", "mc_account_balances.json"),
        (True, "application/xml", "mc_account_balances.xml"),
    ],
)
async def test_seed_partner_answers_the_samples_byte_for_byte(
    sandbox: RunningSandbox,
    client: aiohttp.ClientSession,
    signing_key: RSAPrivateKey,
    listing: bool,
    accept: str,
    seed_file: str,
) -> None:
    """Partner SEED answers the API page's samples verbatim, with a fresh correlation-id each time."""
    url = _listing_url(sandbox, "SEED")
    if not listing:
        url = _single_url(sandbox, "SEED", "non_card_token:anything")
    first = await _signed_get(client, url, signing_key, accept=accept)
    second = await _signed_get(client, url, signing_key, accept=accept)
    assert first.status == 200
    assert first.body == _seed(seed_file)
    assert first.headers["Content-Type"] == accept
    assert first.headers["correlation-id"] != second.headers["correlation-id"]


@pytest.mark.parametrize("seed_file", ["mc_account_balance", "mc_account_balances"])
def test_renderers_reproduce_the_seed_layout(seed_file: str) -> None:
    """The JSON and XML the sandbox writes for its world have exactly the seeds' shape and layout."""
    views = mc.views_of_seed(_seed(f"{seed_file}.json"))
    listing = seed_file.endswith("s")
    assert mc.render_json(views, listing=listing) == _seed(f"{seed_file}.json")
    assert mc.render_xml(views, listing=listing) == _seed(f"{seed_file}.xml")


async def test_unknown_token_answers_like_mtf(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A token the world does not know answers 11223344 IN_CREDIT, as Mastercard's MTF does."""
    token = "non_card_token:not-in-the-world"
    reply = await _signed_get(client, _single_url(sandbox, PARTNER, token), signing_key)
    assert reply.status == 200
    account = reply.json()["account_balances"]["account_balance"]
    assert account["balance"] == {"amount": "11223344", "currency": "GBP", "state": "IN_CREDIT"}
    assert account["non_card_token"] == token
    assert account["account_description"] == "Simulated account"


async def test_world_partner_lists_its_accounts(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A partner has 5 accounts with sbx tokens, 2-decimal string amounts, RFC 3339 UTC timestamps."""
    reply = await _signed_get(client, _listing_url(sandbox, PARTNER), signing_key)
    accounts = reply.json()["account-balances"]
    assert [a["non_card_token"] for a in accounts] == [
        f"non_card_token:sbx-{PARTNER}-{n:04d}" for n in range(1, 6)
    ]
    currencies = {a["balance"]["currency"] for a in accounts}
    assert currencies == {"GBP", "EUR"}
    for account in accounts:
        amount = Decimal(account["balance"]["amount"])
        assert amount >= 0
        assert amount == amount.quantize(Decimal("0.01"))
        assert account["balance"]["state"] in ("IN_CREDIT", "IN_DEBIT")
        assert datetime.fromisoformat(account["balance_timestamp"]).tzinfo == UTC
        assert account["balance_timestamp"].endswith("Z")
        single_url = _single_url(sandbox, PARTNER, account["non_card_token"])
        single = await _signed_get(client, single_url, signing_key)
        assert single.json()["account_balances"]["account_balance"]["balance"] == account["balance"]


async def test_unknown_path_under_send_has_mastercard_error_and_correlation_id(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """An unknown /send path answers 404 in Mastercard's format, with a correlation-id."""
    reply = await _get(client, f"{sandbox.mastercard_base_url}/v1/nothing-here")
    _assert_mastercard_error(reply, 404, "RESOURCE_NOT_FOUND")


# -- myPOS --------------------------------------------------------------------------------------------


async def test_mypos_seed_account_answers_the_sample(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """Good headers: 200, the X-Request-ID echoed, the sample body byte for byte (120.260 kept)."""
    headers = _mypos_headers()
    reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, headers)
    assert reply.status == 200
    assert reply.headers["X-Request-ID"] == headers["X-Request-ID"]
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.body == _seed("mypos_balances.json")
    assert b'"amount": 120.260,' in reply.body


async def test_mypos_world_account_has_available_and_booked(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """A world card account reports available and booked balances as exact three-decimal numbers."""
    account = sandbox.world.mypos_accounts()[1].number
    reply = await _mypos_get(client, sandbox, account, _mypos_headers())
    assert reply.status == 200
    document = reply.json()
    assert document["maskedPan"].startswith("453754******")
    assert [b["balanceType"] for b in document["balances"]] == ["available", "booked"]
    for balance in document["balances"]:
        assert isinstance(balance["amount"], Decimal)
        assert balance["amount"].as_tuple().exponent == -3
        assert f'"amount": {balance["amount"]},'.encode() in reply.body


def test_mypos_renderer_reproduces_the_sample_layout(dev_key: DevKey) -> None:
    """The myPOS JSON writer, fed the seed account's balances, writes the sample byte for byte."""
    app = build_sandbox_app(SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0))
    world = app[SANDBOX_STATE].world
    account = world.mypos_account(SEED_MYPOS_ACCOUNT)
    assert account is not None
    assert mypos.render_json(account) == _seed("mypos_balances.json")


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"X_Request_ID": None}, 400, "FORMAT_ERROR"),
        ({"X_Request_ID": "not-a-uuid"}, 400, "FORMAT_ERROR"),
        ({"Consent_ID": None}, 400, "FORMAT_ERROR"),
        ({"Consent_ID": "00000000-0000-4000-8000-000000000000"}, 401, "CONSENT_INVALID"),
        ({"Authorization": None}, 401, "TOKEN_INVALID"),
        ({"Authorization": "Bearer wrong-token"}, 401, "TOKEN_INVALID"),
        ({"API_Key": None}, 401, "CERTIFICATE_INVALID"),
        ({"API_Key": "wrong-key"}, 401, "CERTIFICATE_INVALID"),
    ],
    ids=[
        "no-request-id",
        "request-id-not-uuid",
        "no-consent",
        "wrong-consent",
        "no-token",
        "wrong-token",
        "no-api-key",
        "wrong-api-key",
    ],
)
async def test_mypos_bad_header_is_refused(
    sandbox: RunningSandbox,
    client: aiohttp.ClientSession,
    changes: dict[str, str | None],
    status: int,
    code: str,
) -> None:
    """Each missing or wrong myPOS header gets its status and Berlin Group tppMessages code."""
    headers = _mypos_headers(**changes)
    reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, headers)
    assert reply.status == status
    messages = reply.json()["tppMessages"]
    assert messages[0]["category"] == "ERROR"
    assert messages[0]["code"] == code
    assert messages[0]["text"]
    if headers.get("X-Request-ID"):
        assert reply.headers["X-Request-ID"] == headers["X-Request-ID"]


async def test_mypos_unknown_account_is_404(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    """An account number the world does not hold gets 404 RESOURCE_UNKNOWN."""
    reply = await _mypos_get(client, sandbox, "99999999999", _mypos_headers())
    assert reply.status == 404
    assert reply.json()["tppMessages"][0]["code"] == "RESOURCE_UNKNOWN"


# -- time ---------------------------------------------------------------------------------------------


async def _snapshot(client: aiohttp.ClientSession, box: RunningSandbox) -> Any:
    reply = await _control(client, box, "GET", "accounts")
    document = reply.json()
    return {"mastercard": document["mastercard"], "mypos": document["mypos"]}


async def test_balances_move_with_ticks(dev_key: DevKey, client: aiohttp.ClientSession) -> None:
    """With tick_seconds 2, nothing moves before 2 s; after, balances move; the seed account never does."""
    clock = ManualClock()
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=2)
    async with running_sandbox(settings, clock=clock) as box:
        box.world.mastercard_accounts(PARTNER)
        before = await _snapshot(client, box)
        clock.now += 1.9
        assert await _snapshot(client, box) == before
        clock.now += 0.2
        after = await _snapshot(client, box)
        assert after["mastercard"] != before["mastercard"]
        assert after["mypos"][1:] != before["mypos"][1:]
        assert after["mypos"][0] == before["mypos"][0]  # 50553500971 stays the sample
        seed_reply = await _mypos_get(client, box, SEED_MYPOS_ACCOUNT, _mypos_headers())
        assert seed_reply.body == _seed("mypos_balances.json")


async def test_balances_are_static_at_tick_zero(dev_key: DevKey, client: aiohttp.ClientSession) -> None:
    """With tick_seconds 0, balances do not move however much time passes."""
    clock = ManualClock()
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0)
    async with running_sandbox(settings, clock=clock) as box:
        box.world.mastercard_accounts(PARTNER)
        before = await _snapshot(client, box)
        clock.now += 10_000
        assert await _snapshot(client, box) == before


async def test_world_dips_below_5000_and_into_debit(dev_key: DevKey) -> None:
    """Over a few hundred ticks some account crosses 5000.00 both ways and some goes IN_DEBIT."""
    app = build_sandbox_app(SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0))
    world = app[SANDBOX_STATE].world
    seen: dict[str, list[Decimal]] = {}
    for _ in range(300):
        world.advance(1)
        for account in world.mastercard_accounts(PARTNER):
            seen.setdefault(account.non_card_token, []).append(account.balance.amount)
    crossings = [
        token
        for token, amounts in seen.items()
        if any(a >= 5000 > b or a < 5000 <= b for a, b in itertools.pairwise(amounts))
    ]
    assert crossings
    assert any(min(amounts) < 0 for amounts in seen.values())
    for amounts in seen.values():
        steps = [abs(b - a) for a, b in itertools.pairwise(amounts)]
        assert max(steps) <= Decimal("1500.00")
        assert all(a == a.quantize(Decimal("0.01")) for a in amounts)


async def test_world_is_deterministic(dev_key: DevKey) -> None:
    """Two worlds with the same random seed hold the same balances after the same ticks."""
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=0, random_seed=7)
    worlds = [build_sandbox_app(settings)[SANDBOX_STATE].world for _ in range(2)]
    for world in worlds:
        world.mastercard_accounts(PARTNER)
        world.advance(25)
    amounts = [[a.balance.amount for a in world.mastercard_accounts(PARTNER)] for world in worlds]
    assert amounts[0] == amounts[1]


async def test_freeze_stops_movement(dev_key: DevKey, client: aiohttp.ClientSession) -> None:
    """Frozen, ticks pass without moving anything; unfrozen, movement resumes."""
    clock = ManualClock()
    settings = SandboxSettings(certificate_path=dev_key.certificate_path, tick_seconds=1)
    async with running_sandbox(settings, clock=clock) as box:
        box.world.mastercard_accounts(PARTNER)
        assert (await _control(client, box, "POST", "freeze")).status == 200
        before = await _snapshot(client, box)
        clock.now += 50
        assert await _snapshot(client, box) == before
        assert (await _control(client, box, "POST", "unfreeze")).status == 200
        clock.now += 3
        assert await _snapshot(client, box) != before


async def test_advance_moves_a_static_world(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    """POST /_sandbox/advance moves balances even at tick 0, and healthz reports the tick."""
    sandbox.world.mastercard_accounts(PARTNER)
    before = await _snapshot(client, sandbox)
    reply = await _control(client, sandbox, "POST", "advance", ticks=3)
    assert reply.json() == {"tick": 3}
    assert await _snapshot(client, sandbox) != before
    health = await _control(client, sandbox, "GET", "healthz")
    assert health.json() == {"status": "ok", "tick": 3, "frozen": False}


# -- control: balances --------------------------------------------------------------------------------


async def test_set_mastercard_balance(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A balance set through the control API is what the API answers, IN_DEBIT included, and stays put."""
    token = f"non_card_token:sbx-{PARTNER}-0002"
    reply = await _control(
        client, sandbox, "POST", "mastercard/balance", partner=PARTNER, account=token, amount="4999.99"
    )
    assert reply.status == 200
    answer = await _signed_get(client, _single_url(sandbox, PARTNER, token), signing_key)
    balance = answer.json()["account_balances"]["account_balance"]["balance"]
    assert balance == {"amount": "4999.99", "currency": "GBP", "state": "IN_CREDIT"}
    await _control(
        client, sandbox, "POST", "mastercard/balance",
        partner=PARTNER, account="non_card_token:new", amount="12.50", currency="EUR", state="IN_DEBIT",
    )
    await _control(client, sandbox, "POST", "advance", ticks=5)
    answer = await _signed_get(client, _listing_url(sandbox, PARTNER), signing_key, accept="application/xml")
    root = ElementTree.fromstring(answer.body)
    by_token = {a.findtext("non_card_token"): a for a in root.iter("account_balance")}
    new = by_token["non_card_token:new"]
    assert (new.findtext("balance/amount"), new.findtext("balance/state")) == ("12.50", "IN_DEBIT")
    old = by_token[token]
    assert old.findtext("balance/amount") == "4999.99"


async def test_set_mypos_balance(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    """A myPOS balance set through the control API is answered with its exact digits."""
    reply = await _control(
        client, sandbox, "POST", "mypos/balance", account=SEED_MYPOS_ACCOUNT, amount="99.500"
    )
    assert reply.status == 200
    answer = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
    assert b'"amount": 99.500,' in answer.body
    assert answer.json()["balances"] == [
        {"amount": Decimal("99.500"), "currency": "EUR", "balanceType": "available"}
    ]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("mastercard/balance", {"partner": "P", "account": "t", "amount": "abc"}),
        ("mastercard/balance", {"partner": "SEED", "account": "t", "amount": "1"}),
        ("mastercard/balance", {"partner": "P", "account": "t", "amount": "-1"}),
        ("mastercard/balance", {"partner": "P", "account": "t", "amount": "1", "state": "RICH"}),
        ("mypos/balance", {"amount": "1"}),
        ("faults", {"api": "mastercard", "account": "t", "kind": "explode"}),
        ("faults", {"api": "visa", "account": "t", "kind": "http_500"}),
        ("advance", {"ticks": -1}),
    ],
)
async def test_bad_control_request_is_400(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, path: str, body: dict[str, str]
) -> None:
    """A control request the sandbox cannot follow answers 400 with an error message."""
    reply = await _control(client, sandbox, "POST", path, **body)
    assert reply.status == 400
    assert reply.json()["error"]


# -- control: faults ----------------------------------------------------------------------------------


async def test_mastercard_http_500_fault_is_one_shot(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey
) -> None:
    """A one-shot http_500 fault spoils exactly one request, in Mastercard's error format."""
    reply = await _control(
        client, sandbox, "POST", "faults", api="mastercard", partner=PARTNER, account="*", kind="http_500"
    )
    assert reply.status == 201
    first = await _signed_get(client, _listing_url(sandbox, PARTNER), signing_key)
    second = await _signed_get(client, _listing_url(sandbox, PARTNER), signing_key)
    _assert_mastercard_error(first, 500, "SYSTEM_ERROR")
    assert second.status == 200


@pytest.mark.parametrize("kind", ["malformed_json", "malformed_xml", "wrong_content_type", "missing_field"])
async def test_mastercard_body_faults(
    sandbox: RunningSandbox, client: aiohttp.ClientSession, signing_key: RSAPrivateKey, kind: str
) -> None:
    """Each body fault gives the answer the fault names, with a correlation-id."""
    token = f"non_card_token:sbx-{PARTNER}-0001"
    await _control(client, sandbox, "POST", "faults", api="mastercard", account=token, kind=kind)
    reply = await _signed_get(client, _single_url(sandbox, PARTNER, token), signing_key)
    assert reply.headers.get("correlation-id")
    if kind == "malformed_json":
        assert reply.headers["Content-Type"] == "application/json"
        with pytest.raises(ValueError):  # noqa: PT011 - json's error is a ValueError
            json.loads(reply.body)
    elif kind == "malformed_xml":
        assert reply.headers["Content-Type"] == "application/xml"
        with pytest.raises(ParseError):
            ElementTree.fromstring(reply.body)
    elif kind == "wrong_content_type":
        assert reply.headers["Content-Type"] == "text/html"
    else:
        account = reply.json()["account_balances"]["account_balance"]
        assert "balance" not in account
        assert account["non_card_token"] == token


async def test_persistent_fault_lasts_until_cleared(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """A fault with count null spoils every request until DELETE /_sandbox/faults."""
    await _control(client, sandbox, "POST", "faults", api="mypos", account=SEED_MYPOS_ACCOUNT,
                   kind="http_500", count=None)
    for _ in range(3):
        reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
        assert reply.status == 500
        assert reply.json()["tppMessages"][0]["category"] == "ERROR"
    listed = await _control(client, sandbox, "GET", "faults")
    assert [f["kind"] for f in listed.json()] == ["http_500"]
    assert (await _control(client, sandbox, "DELETE", "faults")).status == 200
    reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
    assert reply.status == 200


async def test_mypos_missing_field_fault(sandbox: RunningSandbox, client: aiohttp.ClientSession) -> None:
    """A missing_field fault on myPOS answers 200 without the balances."""
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "missing_field")
    reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
    assert reply.status == 200
    assert reply.json() == {"maskedPan": "453754******2234"}


async def test_delay_fault_holds_the_answer_back(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """A delay fault answers normally, after the delay."""
    await _control(client, sandbox, "POST", "faults", api="mypos", account=SEED_MYPOS_ACCOUNT,
                   kind="delay", delay_seconds=0.3)
    started = time.monotonic()
    reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
    assert time.monotonic() - started >= 0.3
    assert reply.status == 200


async def test_abandoned_delayed_request_does_not_block_others(
    sandbox: RunningSandbox, client: aiohttp.ClientSession
) -> None:
    """A client that gives up on a long delay does not keep the sandbox from answering others."""
    sandbox.faults.add("mypos", SEED_MYPOS_ACCOUNT, "delay", delay_seconds=30)
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.2):
            await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
    reply = await _mypos_get(client, sandbox, SEED_MYPOS_ACCOUNT, _mypos_headers())
    assert reply.status == 200


# -- running ------------------------------------------------------------------------------------------


async def test_serve_sandbox_runs_until_stopped(dev_key: DevKey, client: aiohttp.ClientSession) -> None:
    """serve_sandbox reports its bound port, answers healthz, and returns once stop is set."""
    stop = asyncio.Event()
    started: list[RunningSandbox] = []
    settings = SandboxSettings(certificate_path=dev_key.certificate_path)
    task = asyncio.create_task(serve_sandbox(settings, "127.0.0.1", 0, stop, on_started=started.append))
    for _ in range(200):
        if started:
            break
        await asyncio.sleep(0.01)
    assert started
    assert started[0].port > 0
    reply = await _control(client, started[0], "GET", "healthz")
    assert reply.json()["status"] == "ok"
    stop.set()
    await asyncio.wait_for(task, timeout=5)


def test_unusable_certificate_is_a_sandbox_error(tmp_path: Path) -> None:
    """A missing or non-PEM certificate raises SandboxError naming the file."""
    missing = tmp_path / "missing.crt"
    with pytest.raises(SandboxError, match=r"missing\.crt"):
        build_sandbox_app(SandboxSettings(certificate_path=missing))
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    with pytest.raises(SandboxError, match=r"garbage\.crt"):
        build_sandbox_app(SandboxSettings(certificate_path=garbage))
