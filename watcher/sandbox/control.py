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
                                          "kind": "http_500", "count": 1, "delay_seconds": 0}
                                         -> 201 with the fault. account: the non_card_token, "*" for the
                                         partner-wide account-balances call, or the myPOS account number;
                                         partner (Mastercard only) absent or null: any partner.
                                         kind: http_500 (error in the API's format), malformed_json,
                                         malformed_xml (the answer cut in half), wrong_content_type (an
                                         HTML page, 200), missing_field (the answer without its balance),
                                         delay (answer normally after delay_seconds).
                                         count: how many requests it spoils (default 1); null: persistent.
    DELETE /_sandbox/faults              remove every fault
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from aiohttp import web

from rules.types import IN_CREDIT, IN_DEBIT
from watcher.sandbox.faults import FAULT_APIS, FAULT_KINDS, FaultApi, FaultKind
from watcher.sandbox.mastercard import SEED_PARTNER, view_of
from watcher.sandbox.mypos import number_text
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


async def add_fault(request: web.Request) -> web.Response:
    """Inject a fault."""
    data = await _body(request)
    api = _text(data, "api")
    if api not in FAULT_APIS:
        raise _BadRequest(f"api must be one of {', '.join(FAULT_APIS)}")
    kind = _text(data, "kind")
    if kind not in FAULT_KINDS:
        raise _BadRequest(f"kind must be one of {', '.join(FAULT_KINDS)}")
    partner = data.get("partner")
    if partner is not None and not isinstance(partner, str):
        raise _BadRequest("partner must be a string or null")
    count = data.get("count", 1)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise _BadRequest("count must be a whole number of at least 1, or null for a persistent fault")
    delay = data.get("delay_seconds", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | Decimal) or not 0 <= delay <= 600:
        raise _BadRequest("delay_seconds must be a number from 0 to 600")
    fault = request.app[SANDBOX_STATE].faults.add(
        cast(FaultApi, api),
        _text(data, "account"),
        cast(FaultKind, kind),
        partner=partner,
        count=count,
        delay_seconds=float(delay),
    )
    return _json(fault.as_json(), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    """Remove every fault."""
    request.app[SANDBOX_STATE].faults.clear()
    return _json({"faults": []})
