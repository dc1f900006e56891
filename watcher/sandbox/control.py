"""The sandbox's control API, for tests and demos: JSON in, JSON out, under /_sandbox/.

It is not authenticated: bind the sandbox to 127.0.0.1. Amounts are decimal strings (JSON numbers
are read exactly too, never through a float). A bad request answers 400 {"error": "..."}.

    GET    /_sandbox/healthz             {"status": "ok", "tick": 12, "frozen": false}
    GET    /_sandbox/accounts            every simulated account and balance:
                                         {"tick", "frozen", "mastercard": {partner: [...]}, "mypos": [...]}
    POST   /_sandbox/mastercard/balance  {"partner": "P1", "account": "non_card_token:...",
                                          "amount": "4999.99", "currency": "GBP", "state": "IN_CREDIT",
                                          "description": "...", "keep_moving": false}
                                         amount is the magnitude, state IN_CREDIT (default) or IN_DEBIT;
                                         currency defaults to GBP; creates the account if needed. The
                                         balance then stays put unless keep_moving is true.
    POST   /_sandbox/mypos/balance       {"account": "50553500971", "balance_type": "available",
                                          "amount": "120.260", "currency": "EUR", "keep_moving": false}
                                         balance_type defaults to "available", currency to EUR; creates
                                         the account or balance type if needed (the seed account then
                                         answers from its balances instead of the sample file).
    POST   /_sandbox/freeze              stop every movement; ticks that pass are skipped
    POST   /_sandbox/unfreeze            resume movement from now
    POST   /_sandbox/advance             {"ticks": 3}: move every balance 3 steps now, frozen or not
    GET    /_sandbox/faults              the faults in force
    POST   /_sandbox/faults              {"api": "mastercard" | "mypos", "account": "...", "partner": "P1",
                                          "kind": "http_500", "count": 1, "delay_seconds": 0,
                                          "retry_after": "2"}
                                         -> 201 with the fault. account: the non_card_token, "*" for the
                                         partner-wide account-balances call, or the myPOS account number;
                                         partner (Mastercard only) absent or null: any partner.
                                         count: how many requests it spoils (default 1); null: persistent.
    DELETE /_sandbox/faults              remove every fault
    GET    /_sandbox/mypos/auth          the myPOS access tokens, refresh tokens and consents, and how
                                         many refresh grants the token endpoint gave
    POST   /_sandbox/mypos/expire-token  {"token": "..."}: that access token expires (absent: every one);
                                         the API then answers 401 TOKEN_EXPIRED until the client refreshes
                                         it at POST /oauth/token (see watcher.sandbox.mypos_auth)
    POST   /_sandbox/mypos/consent       {"consent_id": "...", "status": "valid" | "expired" | "invalid"}:
                                         give, expire (401 CONSENT_EXPIRED) or revoke (401 CONSENT_INVALID)
                                         a consent; consent_id defaults to the configured one

Fault kinds (every kind works on both APIs unless marked; errors are in the API's own format):
    http_500            500 (Mastercard SYSTEM_ERROR, myPOS INTERNAL_SERVER_ERROR)
    http_503            503 SERVICE_UNAVAILABLE, with Retry-After when retry_after is given
    http_429            429 (Mastercard RATE_LIMIT_EXCEEDED, myPOS ACCESS_EXCEEDED) with Retry-After:
                        retry_after, default "1"; seconds or an HTTP date
    malformed_json      200, the JSON answer cut in half
    malformed_xml       200, the XML answer cut in half
    wrong_content_type  200, an HTML maintenance page as text/html
    truncated_body      200 announcing the whole body's Content-Length; half is sent, then the
                        connection drops
    huge_body           200, a chunked body of 40 MiB: beyond every client limit
    slow_body           200, the right body trickled 8 bytes every delay_seconds (default 0.25): no read
                        timeout fires, only the total one
    xml_entity_bomb     200, a "billion laughs" DTD as application/xml
    delay               the right answer, after delay_seconds
    missing_field       200, the answer without its balance (Mastercard) or balances (myPOS)
    nan_amount          200, the first amount NaN ("NaN" for Mastercard, a bare NaN for myPOS)
    huge_number         200, the first amount a 30-digit number
    overflow_amount     200, the first amount 1e400
    unknown_state       200, the first state IN_LIMBO (Mastercard) / balanceType "sideways" (myPOS)
    duplicate_accounts  200, the first account (Mastercard) / balance (myPOS) repeated with another amount
    token_expired       myPOS only: the presented access token expires for good; 401 TOKEN_EXPIRED
    consent_expired     myPOS only: the presented consent expires for good; 401 CONSENT_EXPIRED

One request can ask for a fault itself, before any set here: the header
`X-Sandbox-Fault: http_429; retry_after=5` (parameters delay_seconds and retry_after), or the query
`?fault=slow_body&fault_delay_seconds=0.1` (Mastercard signs the query, so sign the URL with it).
`balance-watcher sandbox --faults FILE` loads a JSON list of fault objects, as POSTed here, at start.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from aiohttp import web

from rules.types import IN_CREDIT, IN_DEBIT
from watcher.sandbox.faults import FaultBook, FaultError, check_delay, check_kind, check_retry_after
from watcher.sandbox.mastercard import SEED_PARTNER, view_of
from watcher.sandbox.mypos import number_text
from watcher.sandbox.mypos_auth import CONSENT_STATUSES, ConsentStatus
from watcher.sandbox.state import SANDBOX_STATE

PREFIX = "/_sandbox"


class _BadRequest(ValueError):
    """A control request the sandbox cannot follow; the message says why."""


def add_control_routes(app: web.Application) -> None:
    """Register every /_sandbox/ route on the app."""
    app.router.add_get(f"{PREFIX}/healthz", healthz)
    app.router.add_get(f"{PREFIX}/accounts", accounts)
    app.router.add_post(f"{PREFIX}/mastercard/balance", set_mastercard_balance)
    app.router.add_post(f"{PREFIX}/mypos/balance", set_mypos_balance)
    app.router.add_post(f"{PREFIX}/freeze", freeze)
    app.router.add_post(f"{PREFIX}/unfreeze", unfreeze)
    app.router.add_post(f"{PREFIX}/advance", advance)
    app.router.add_get(f"{PREFIX}/faults", list_faults)
    app.router.add_post(f"{PREFIX}/faults", add_fault)
    app.router.add_delete(f"{PREFIX}/faults", clear_faults)
    app.router.add_get(f"{PREFIX}/mypos/auth", mypos_auth)
    app.router.add_post(f"{PREFIX}/mypos/expire-token", expire_token)
    app.router.add_post(f"{PREFIX}/mypos/consent", set_consent)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, indent=2), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    try:
        data = json.loads(text or "{}", parse_float=Decimal)
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{name} must be a non-empty string")
    return value


def _amount(data: dict[str, Any]) -> Decimal:
    value = data.get("amount")
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise _BadRequest("amount must be a decimal string such as \"4999.99\"")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise _BadRequest(f"amount {value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise _BadRequest(f"amount {value!r} is not a finite number")
    return amount


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise _BadRequest(f"{name} must be true or false")
    return value


@web.middleware
async def control_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Under /_sandbox/: a _BadRequest becomes 400 {"error": "..."}."""
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _json({"error": str(exc)}, status=400)


async def healthz(request: web.Request) -> web.Response:
    """Liveness, the current tick and whether movement is frozen."""
    world = request.app[SANDBOX_STATE].world
    world.sync()
    return _json({"status": "ok", "tick": world.tick, "frozen": world.frozen})


async def accounts(request: web.Request) -> web.Response:
    """Every simulated account: what a demo's config can point at."""
    world = request.app[SANDBOX_STATE].world
    world.sync()
    mastercard = {
        partner: [
            {
                "non_card_token": view.non_card_token,
                "description": view.account_description,
                "amount": view.amount,
                "currency": view.currency,
                "state": view.state,
            }
            for view in (view_of(account) for account in world.mastercard_accounts(partner))
        ]
        for partner in world.mastercard_partners()
    }
    mypos = [
        {
            "account": account.number,
            "masked_pan": account.masked_pan,
            "balances": [
                {"balance_type": kind, "amount": number_text(balance.amount), "currency": balance.currency}
                for kind, balance in account.balances.items()
            ],
        }
        for account in world.mypos_accounts()
    ]
    return _json({"tick": world.tick, "frozen": world.frozen, "mastercard": mastercard, "mypos": mypos})


async def set_mastercard_balance(request: web.Request) -> web.Response:
    """Put a Mastercard account at a balance."""
    data = await _body(request)
    partner = _text(data, "partner")
    if partner == SEED_PARTNER:
        raise _BadRequest(f"partner {SEED_PARTNER} always answers the seed samples; use another partner")
    token = _text(data, "account")
    amount = _amount(data)
    if amount < 0:
        raise _BadRequest("amount is the magnitude; use state IN_DEBIT for an overdraft")
    state = _text(data, "state", IN_CREDIT)
    if state not in (IN_CREDIT, IN_DEBIT):
        raise _BadRequest(f"state must be {IN_CREDIT} or {IN_DEBIT}")
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise _BadRequest("description must be a string")
    account = request.app[SANDBOX_STATE].world.set_mastercard_balance(
        partner,
        token,
        -amount if state == IN_DEBIT else amount,
        _text(data, "currency", "GBP"),
        description=description,
        keep_moving=_flag(data, "keep_moving"),
    )
    view = view_of(account)
    return _json(
        {"partner": partner, "account": token, "amount": view.amount, "currency": view.currency,
         "state": view.state}
    )


async def set_mypos_balance(request: web.Request) -> web.Response:
    """Put one balance type of a myPOS card account at an amount."""
    data = await _body(request)
    number = _text(data, "account")
    balance_type = _text(data, "balance_type", "available")
    amount = _amount(data)
    currency = _text(data, "currency", "EUR")
    request.app[SANDBOX_STATE].world.set_mypos_balance(
        number, balance_type, amount, currency, keep_moving=_flag(data, "keep_moving")
    )
    return _json(
        {"account": number, "balance_type": balance_type, "amount": number_text(amount), "currency": currency}
    )


async def freeze(request: web.Request) -> web.Response:
    """Stop every movement."""
    world = request.app[SANDBOX_STATE].world
    world.sync()
    world.frozen = True
    return _json({"frozen": True, "tick": world.tick})


async def unfreeze(request: web.Request) -> web.Response:
    """Resume movement; the ticks that passed while frozen are not replayed."""
    world = request.app[SANDBOX_STATE].world
    world.sync()
    world.frozen = False
    return _json({"frozen": False, "tick": world.tick})


async def advance(request: web.Request) -> web.Response:
    """Move every balance some ticks now."""
    data = await _body(request)
    ticks = data.get("ticks", 1)
    if isinstance(ticks, bool) or not isinstance(ticks, int) or not 0 <= ticks <= 100_000:
        raise _BadRequest("ticks must be a whole number from 0 to 100000")
    world = request.app[SANDBOX_STATE].world
    world.sync()
    world.advance(ticks)
    return _json({"tick": world.tick})


async def list_faults(request: web.Request) -> web.Response:
    """The faults in force."""
    return _json([fault.as_json() for fault in request.app[SANDBOX_STATE].faults.all()])


def add_fault_from_json(book: FaultBook, data: dict[str, Any]) -> dict[str, Any]:
    """Add the fault a control request (or a scenario file's entry) describes; ValueError says why not."""
    try:
        api, kind = check_kind(_text(data, "api"), _text(data, "kind"))
        partner = data.get("partner")
        if partner is not None and not isinstance(partner, str):
            raise _BadRequest("partner must be a string or null")
        count = data.get("count", 1)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise _BadRequest("count must be a whole number of at least 1, or null for a persistent fault")
        delay = data.get("delay_seconds", 0)
        fault = book.add(
            api,
            _text(data, "account"),
            kind,
            partner=partner,
            count=count,
            delay_seconds=check_delay(float(delay) if isinstance(delay, Decimal) else delay),
            retry_after=check_retry_after(data.get("retry_after")),
        )
    except FaultError as exc:
        raise _BadRequest(str(exc)) from None
    return fault.as_json()


async def add_fault(request: web.Request) -> web.Response:
    """Inject a fault."""
    data = await _body(request)
    return _json(add_fault_from_json(request.app[SANDBOX_STATE].faults, data), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    """Remove every fault."""
    request.app[SANDBOX_STATE].faults.clear()
    return _json({"faults": []})


async def mypos_auth(request: web.Request) -> web.Response:
    """The myPOS tokens and consents the sandbox accepts."""
    return _json(request.app[SANDBOX_STATE].auth.as_json())


async def expire_token(request: web.Request) -> web.Response:
    """Expire one myPOS access token, or all."""
    data = await _body(request)
    token = data.get("token")
    if token is not None and (not isinstance(token, str) or not token):
        raise _BadRequest("token must be a non-empty string, or absent for every token")
    expired = request.app[SANDBOX_STATE].auth.expire_tokens(token)
    return _json({"expired": expired})


async def set_consent(request: web.Request) -> web.Response:
    """Give, expire or revoke a myPOS consent."""
    data = await _body(request)
    state = request.app[SANDBOX_STATE]
    consent_id = _text(data, "consent_id", state.settings.mypos_consent_id)
    status = _text(data, "status")
    if status not in CONSENT_STATUSES:
        raise _BadRequest(f"status must be one of {', '.join(CONSENT_STATUSES)}")
    state.auth.set_consent(consent_id, cast(ConsentStatus, status))
    return _json({"consent_id": consent_id, "status": status})
