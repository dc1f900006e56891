"""The sandbox's Mastercard Send Account Balance API, under /send, in JSON or XML by the Accept header.

Every response, errors included, carries a fresh `correlation-id` header. Partner `SEED` answers the
API page's samples byte for byte; other partners answer from the simulated world; a token the world
does not know answers 11223344 IN_CREDIT, as Mastercard's MTF does for any account.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from aiohttp import web

from rules.types import IN_CREDIT, IN_DEBIT
from watcher.sandbox.faults import BODY_KINDS, LISTING_TARGET, FaultError, request_fault
from watcher.sandbox.spoil import spoiled_response
from watcher.sandbox.state import SANDBOX_STATE, SandboxState
from watcher.sandbox.world import MastercardAccount

SEED_PARTNER = "SEED"
SIMULATED_AMOUNT = "11223344"
SINGLE_PATH = "/send/v1/partners/{partner_id}/non-card-tokens/{non_card_token}/account-balance"
LISTING_PATH = "/send/v1/partners/{partner_id}/account-balances"
_log = logging.getLogger(__name__)
CORRELATION_ID = web.RequestKey("sandbox_correlation_id", str)  # this answer's correlation-id


@dataclass(frozen=True, slots=True)
class AccountBalanceView:
    """One account_balance element as the API shows it; `amount` is the unsigned text."""

    account_description: str
    amount: str
    currency: str
    state: str
    balance_timestamp: str
    created_date: str
    non_card_token: str


@functools.lru_cache(maxsize=256)  # a listing's accounts share a few tick times: strftime was 1/3 of view_of
def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, with a Z, as Mastercard writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def view_of(account: MastercardAccount) -> AccountBalanceView:
    """The API's view of a world account: a negative balance is a positive amount IN_DEBIT."""
    amount = account.balance.amount
    return AccountBalanceView(
        account_description=account.description,
        amount=format(abs(amount), "f"),
        currency=account.balance.currency,
        state=IN_DEBIT if amount < 0 else IN_CREDIT,
        balance_timestamp=rfc3339(account.updated_at),
        created_date=account.created_date,
        non_card_token=account.non_card_token,
    )


def views_of_seed(body: bytes) -> list[AccountBalanceView]:
    """The accounts of a seed sample (either spelling of the top-level key)."""
    document = json.loads(body)
    if "account_balances" in document:
        items = [document["account_balances"]["account_balance"]]
    else:
        items = document["account-balances"]
    return [
        AccountBalanceView(
            account_description=item["account_description"],
            amount=item["balance"]["amount"],
            currency=item["balance"]["currency"],
            state=item["balance"]["state"],
            balance_timestamp=item["balance_timestamp"],
            created_date=item["created_date"],
            non_card_token=item["non_card_token"],
        )
        for item in items
    ]


def _account_dict(view: AccountBalanceView, with_balance: bool) -> dict[str, object]:
    document: dict[str, object] = {"account_description": view.account_description}
    if with_balance:
        document["balance"] = {"amount": view.amount, "currency": view.currency, "state": view.state}
    document["balance_timestamp"] = view.balance_timestamp
    document["created_date"] = view.created_date
    document["non_card_token"] = view.non_card_token
    return document


def render_json(views: Sequence[AccountBalanceView], *, listing: bool, with_balance: bool = True) -> bytes:
    """The JSON body, in the seed's layout: "account-balances" list, or "account_balances" object."""
    accounts = [_account_dict(view, with_balance) for view in views]
    if listing:
        document: dict[str, object] = {"account-balances": accounts}
    else:
        # One account; more only when a duplicate_accounts fault repeats it.
        document = {"account_balances": {"account_balance": accounts[0] if len(accounts) == 1 else accounts}}
    return (json.dumps(document, indent=3) + "\n").encode("utf-8")


def _account_xml(view: AccountBalanceView, with_balance: bool) -> list[str]:
    lines = ["    <account_balance>"]
    lines.append(f"        <account_description>{escape(view.account_description)}</account_description>")
    if with_balance:
        lines.append("        <balance>")
        lines.append(f"            <amount>{escape(view.amount)}</amount>")
        lines.append(f"            <currency>{escape(view.currency)}</currency>")
        lines.append(f"            <state>{escape(view.state)}</state>")
        lines.append("        </balance>")
    lines.append(f"        <balance_timestamp>{escape(view.balance_timestamp)}</balance_timestamp>")
    lines.append(f"        <created_date>{escape(view.created_date)}</created_date>")
    lines.append(f"        <non_card_token>{escape(view.non_card_token)}</non_card_token>")
    lines.append("    </account_balance>")
    return lines


def render_xml(views: Sequence[AccountBalanceView], *, listing: bool, with_balance: bool = True) -> bytes:
    """The XML body, in the seed's layout: <account-balances> or <account_balances> around the accounts."""
    root = "account-balances" if listing else "account_balances"
    lines = [f"<{root}>"]
    for view in views:
        lines.extend(_account_xml(view, with_balance))
    lines.append(f"</{root}>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def wants_xml(accept: str) -> bool:
    """True when the Accept header prefers XML to JSON; JSON is the default."""
    best_xml = best_json = -1.0
    for position, item in enumerate(accept.split(",")):
        media, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        # An earlier entry wins a tie: a tiny penalty per position keeps the order.
        score = quality - position * 1e-6 if quality > 0 else -1.0
        media = media.lower()
        if media in ("application/xml", "text/xml"):
            best_xml = max(best_xml, score)
        elif media in ("application/json", "application/*", "*/*"):
            best_json = max(best_json, score)
    return best_xml > best_json


def error_response(
    status: int, source: str, reason_code: str, description: str, *, xml: bool, recoverable: bool = False
) -> web.Response:
    """An error in Mastercard's format: {"Errors":{"Error":[...]}}, or its XML equivalent."""
    if xml:
        body = (
            "<Errors>\n    <Error>\n"
            f"        <Source>{escape(source)}</Source>\n"
            f"        <ReasonCode>{escape(reason_code)}</ReasonCode>\n"
            f"        <Description>{escape(description)}</Description>\n"
            f"        <Recoverable>{'true' if recoverable else 'false'}</Recoverable>\n"
            "        <Details/>\n    </Error>\n</Errors>\n"
        )
        return web.Response(status=status, body=body.encode("utf-8"), content_type="application/xml")
    error = {
        "Source": source,
        "ReasonCode": reason_code,
        "Description": description,
        "Recoverable": recoverable,
        "Details": None,
    }
    body = json.dumps({"Errors": {"Error": [error]}})
    return web.Response(status=status, body=body.encode("utf-8"), content_type="application/json")


def _authenticate(request: web.Request, state: SandboxState) -> web.Response | None:
    # The URL as it arrived: what the client signed must be exactly what it sent.
    url = f"{request.scheme}://{request.host}{request.raw_path}"
    failure = state.verifier.verify(request.method, url, request.headers.get("Authorization"))
    if failure is None:
        return None
    return error_response(
        401, failure.source, "AUTHENTICATION_FAILED", failure.description, xml=wants_xml(_accept(request))
    )


def _accept(request: web.Request) -> str:
    return request.headers.get("Accept", "")


def _error_for(xml: bool) -> Callable[[int], web.Response]:
    """Mastercard's error answer for an injected status."""

    def error(status: int) -> web.Response:
        if status == 429:
            return error_response(429, "Gateway", "RATE_LIMIT_EXCEEDED", "Injected fault: too many requests",
                                  xml=xml, recoverable=True)
        if status == 503:
            return error_response(503, "Gateway", "SERVICE_UNAVAILABLE", "Injected fault: try again later",
                                  xml=xml, recoverable=True)
        return error_response(status, "System", "SYSTEM_ERROR", "Injected fault: internal error", xml=xml,
                              recoverable=True)

    return error


def mutated(views: list[AccountBalanceView], kind: str) -> list[AccountBalanceView]:
    """The views as a body fault has them: the first account's amount or state absurd, or repeated."""
    if not views:
        return views
    first, rest = views[0], views[1:]
    if kind == "nan_amount":
        return [replace(first, amount="NaN"), *rest]
    if kind == "huge_number":
        return [replace(first, amount="123456789012345678901234567890"), *rest]
    if kind == "overflow_amount":
        return [replace(first, amount="1e400"), *rest]
    if kind == "unknown_state":
        return [replace(first, state="IN_LIMBO"), *rest]
    if kind == "duplicate_accounts":
        return [*views, replace(first, amount="1.00", account_description="Duplicate entry")]
    return views


Render = Callable[[bool, list[AccountBalanceView], bool], bytes]


async def _answer(
    request: web.Request, state: SandboxState, target: str, views: list[AccountBalanceView], render: Render
) -> web.StreamResponse:
    """Apply any fault for the target (asked by the request, or set by the control API), else answer
    `render(xml, views, with_balance)`."""
    xml = wants_xml(_accept(request))
    try:
        fault = request_fault("mastercard", target, request.headers, request.query)
    except FaultError as exc:
        return error_response(400, "Sandbox", "INVALID_FAULT", str(exc), xml=xml)
    if fault is None:
        fault = state.faults.take("mastercard", target, request.match_info["partner_id"])
    content_type = "application/xml" if xml else "application/json"
    shown, with_balance = views, True
    if fault is not None:
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_seconds)
        elif fault.kind == "missing_field":
            with_balance = False
        elif fault.kind in BODY_KINDS:
            shown = mutated(views, fault.kind)
        else:
            return await spoiled_response(
                request, fault, body=render(xml, views, True), content_type=content_type,
                json_body=render(False, views, True), xml_body=render(True, views, True),
                error=_error_for(xml), headers={"correlation-id": request[CORRELATION_ID]},
            )
    return web.Response(status=200, body=render(xml, shown, with_balance), content_type=content_type)


async def account_balance(request: web.Request) -> web.StreamResponse:
    """GET .../non-card-tokens/{non_card_token}/account-balance: one account."""
    state = request.app[SANDBOX_STATE]
    refused = _authenticate(request, state)
    if refused is not None:
        return refused
    partner = request.match_info["partner_id"]
    token = request.match_info["non_card_token"]
    state.world.sync()
    seeds = state.seeds
    if partner == SEED_PARTNER:
        views = views_of_seed(seeds.mc_account_balance_json)
    else:
        account = state.world.mastercard_account(partner, token)
        views = [view_of(account) if account is not None else _simulated(token, state.wall_clock())]

    def render(xml: bool, shown: list[AccountBalanceView], with_balance: bool) -> bytes:
        if partner == SEED_PARTNER and with_balance and shown is views:
            return seeds.mc_account_balance_xml if xml else seeds.mc_account_balance_json
        return (render_xml if xml else render_json)(shown, listing=False, with_balance=with_balance)

    return await _answer(request, state, token, views, render)


async def account_balances(request: web.Request) -> web.StreamResponse:
    """GET .../partners/{partner_id}/account-balances: every account of the partner."""
    state = request.app[SANDBOX_STATE]
    refused = _authenticate(request, state)
    if refused is not None:
        return refused
    partner = request.match_info["partner_id"]
    state.world.sync()
    seeds = state.seeds
    if partner == SEED_PARTNER:
        views = views_of_seed(seeds.mc_account_balances_json)
    else:
        views = [view_of(account) for account in state.world.mastercard_accounts(partner)]

    def render(xml: bool, shown: list[AccountBalanceView], with_balance: bool) -> bytes:
        if partner == SEED_PARTNER and with_balance and shown is views:
            return seeds.mc_account_balances_xml if xml else seeds.mc_account_balances_json
        return (render_xml if xml else render_json)(shown, listing=True, with_balance=with_balance)

    return await _answer(request, state, LISTING_TARGET, views, render)


def _simulated(token: str, now: datetime) -> AccountBalanceView:
    return AccountBalanceView(
        account_description="Simulated account",
        amount=SIMULATED_AMOUNT,
        currency="GBP",
        state=IN_CREDIT,
        balance_timestamp=rfc3339(now),
        created_date=rfc3339(now),
        non_card_token=token,
    )


@web.middleware
async def mastercard_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Under /send: a correlation-id on every response, and errors in Mastercard's format."""
    if not request.path.startswith("/send/") and request.path != "/send":
        return await handler(request)
    xml = wants_xml(_accept(request))
    # Made first: a streamed answer sends its headers before the handler returns.
    request[CORRELATION_ID] = str(uuid.uuid4())
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = "RESOURCE_NOT_FOUND" if exc.status == 404 else "INVALID_REQUEST"
        response = error_response(exc.status, "Gateway", reason, exc.reason, xml=xml)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.exception("sandbox handler failed for %s", request.path)
        response = error_response(500, "System", "SYSTEM_ERROR", "internal error", xml=xml, recoverable=True)
    if not response.prepared:
        response.headers["correlation-id"] = request[CORRELATION_ID]
    return response
