"""The sandbox's myPOS PSD2 card-account balances API: GET /v1/card-accounts/{accountNumber}/balances.

Headers are checked as a Berlin Group ASPSP does, errors answer {"tppMessages": [...]}, and the
X-Request-ID is echoed on every answer. Amounts are JSON numbers written from their Decimal text, so
120.260 keeps its trailing zero. Account 50553500971 answers the API page's sample byte for byte
until the control API sets one of its balances.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from xml.sax.saxutils import escape

from aiohttp import web

from watcher.sandbox.faults import AUTH_KINDS, BODY_KINDS, Fault, FaultError, request_fault
from watcher.sandbox.mypos_auth import MyposAuth, oauth_error
from watcher.sandbox.settings import SandboxSettings
from watcher.sandbox.spoil import spoiled_response
from watcher.sandbox.state import SANDBOX_STATE
from watcher.sandbox.world import MyposAccount

BALANCES_PATH = "/v1/card-accounts/{account_number}/balances"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def tpp_error(status: int, code: str, text: str) -> web.Response:
    """A Berlin Group error: {"tppMessages": [{"category": "ERROR", "code": ..., "text": ...}]}."""
    body = json.dumps({"tppMessages": [{"category": "ERROR", "code": code, "text": text}]})
    return web.Response(status=status, body=body.encode("utf-8"), content_type="application/json")


def check_headers(
    headers: Mapping[str, str], settings: SandboxSettings, auth: MyposAuth
) -> web.Response | None:
    """None when the request's headers are acceptable, else the error answer.

    Format first (400 FORMAT_ERROR), then who calls (API-Key), then the token (TOKEN_INVALID, or
    TOKEN_EXPIRED for one that was good), then the consent (CONSENT_EXPIRED, CONSENT_INVALID).
    """
    request_id = headers.get("X-Request-ID")
    if not request_id:
        return tpp_error(400, "FORMAT_ERROR", "X-Request-ID header is missing")
    if not _UUID.match(request_id):
        return tpp_error(400, "FORMAT_ERROR", "X-Request-ID header is not a UUID")
    consent_id = headers.get("Consent-ID")
    if not consent_id:
        return tpp_error(400, "FORMAT_ERROR", "Consent-ID header is missing")
    # The API-Key identifies the TPP, which PSD2 otherwise does with its certificate.
    if headers.get("API-Key") != settings.mypos_api_key:
        return tpp_error(401, "CERTIFICATE_INVALID", "API-Key header is missing or not known")
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    status = auth.token_status(token.strip()) if scheme.lower() == "bearer" else "unknown"
    if status == "expired":
        return tpp_error(401, "TOKEN_EXPIRED", "The access token has expired; refresh it")
    if status != "valid":
        return tpp_error(401, "TOKEN_INVALID", "Authorization bearer token is missing or not valid")
    consent = auth.consent_status(consent_id)
    if consent == "expired":
        return tpp_error(401, "CONSENT_EXPIRED", "The consent has expired; the user must give a new one")
    if consent != "valid":
        return tpp_error(401, "CONSENT_INVALID", "Consent-ID is not valid for this access token")
    return None


def number_text(amount: Decimal) -> str:
    """A Decimal as a JSON number with all its digits: 120.260 stays 120.260, never 1.2026E+2."""
    text = format(amount, "f")
    return text.removeprefix("-") if amount == 0 else text  # no "-0.000"


@dataclass(frozen=True, slots=True)
class Entry:
    """One balance as the body writes it: the amount is the JSON number's text, as sent."""

    amount: str
    currency: str
    balance_type: str


def entries_of(account: MyposAccount) -> list[Entry]:
    """The account's balances, in the order they are reported."""
    return [Entry(number_text(b.amount), b.currency, kind) for kind, b in account.balances.items()]


def render_entries(masked_pan: str, entries: list[Entry] | None) -> bytes:
    """The balances body in the sample's layout (None: without balances), written by hand so that
    amounts never pass through a float."""
    lines = ["{", f"    \"maskedPan\": {json.dumps(masked_pan)}" + ("," if entries is not None else "")]
    if entries is not None:
        items = [
            "        {\n"
            f"            \"amount\": {entry.amount},\n"
            f"            \"currency\": {json.dumps(entry.currency)},\n"
            f"            \"balanceType\": {json.dumps(entry.balance_type)}\n"
            "        }"
            for entry in entries
        ]
        lines.append("    \"balances\": [" + ("\n" + ",\n".join(items) + "\n    ]" if items else "]"))
    lines.append("}")
    return "\n".join(lines).encode("utf-8")


def render_json(account: MyposAccount, *, with_balances: bool = True) -> bytes:
    """The balances body of an account."""
    return render_entries(account.masked_pan, entries_of(account) if with_balances else None)


def mutated(entries: list[Entry], kind: str) -> list[Entry]:
    """The entries as a body fault has them: the first amount absurd, an unknown balance type, or the
    first balance repeated with another amount."""
    if not entries:
        return entries
    first, rest = entries[0], entries[1:]
    if kind == "nan_amount":
        return [replace(first, amount="NaN"), *rest]
    if kind == "huge_number":
        return [replace(first, amount="123456789012345678901234567890"), *rest]
    if kind == "overflow_amount":
        return [replace(first, amount="1e400"), *rest]
    if kind == "unknown_state":
        return [replace(first, balance_type="sideways"), *rest]
    if kind == "duplicate_accounts":
        return [*entries, replace(first, amount="1.000")]
    return entries


def _render_xml(account: MyposAccount) -> bytes:
    # myPOS never answers XML; this only feeds the malformed_xml fault.
    parts = [f"<cardAccountBalances><maskedPan>{escape(account.masked_pan)}</maskedPan><balances>"]
    for balance_type, balance in account.balances.items():
        parts.append(
            f"<balance><amount>{number_text(balance.amount)}</amount><currency>{escape(balance.currency)}"
            f"</currency><balanceType>{escape(balance_type)}</balanceType></balance>"
        )
    parts.append("</balances></cardAccountBalances>")
    return "".join(parts).encode("utf-8")


async def card_account_balances(request: web.Request) -> web.StreamResponse:
    """GET /v1/card-accounts/{accountNumber}/balances."""
    request_id = request.headers.get("X-Request-ID")
    echo = {"X-Request-ID": request_id} if request_id else {}
    response = await _balances(request, echo)
    if not response.prepared:
        response.headers.update(echo)
    return response


def _take_fault(request: web.Request, number: str, *, auth: bool) -> Fault | None:
    """The request's own fault (header or query) if of the wanted sort, else the control API's."""
    faults = request.app[SANDBOX_STATE].faults
    asked = request_fault("mypos", number, request.headers, request.query)
    if asked is not None:
        return asked if (asked.kind in AUTH_KINDS) == auth else None
    if auth:
        return faults.take("mypos", number, kinds=AUTH_KINDS)
    return faults.take("mypos", number, skip=AUTH_KINDS)


def _apply_auth_fault(request: web.Request, fault: Fault) -> None:
    """An auth fault changes the state for good: the presented token or consent stops being valid."""
    auth = request.app[SANDBOX_STATE].auth
    if fault.kind == "token_expired":
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            auth.expire_tokens(token.strip())
    elif fault.kind == "consent_expired":
        consent = request.headers.get("Consent-ID")
        if consent and auth.consent_status(consent) == "valid":
            auth.set_consent(consent, "expired")


async def _balances(request: web.Request, echo: dict[str, str]) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    number = request.match_info["account_number"]
    try:
        auth_fault = _take_fault(request, number, auth=True)
    except FaultError as exc:
        return tpp_error(400, "FORMAT_ERROR", f"sandbox fault: {exc}")
    if auth_fault is not None:
        _apply_auth_fault(request, auth_fault)
    refused = check_headers(request.headers, state.settings, state.auth)
    if refused is not None:
        return refused
    state.world.sync()
    account = state.world.mypos_account(number)
    fault = _take_fault(request, number, auth=False)
    # A fault on an unknown account spoils an empty answer: faults work on any target.
    shown = account if account is not None else MyposAccount(number, "", {})
    entries: list[Entry] | None = entries_of(shown)
    if fault is not None:
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_seconds)
        elif fault.kind == "missing_field":
            entries = None
        elif fault.kind in BODY_KINDS:
            entries = mutated(entries_of(shown), fault.kind)
        else:
            body = render_json(shown)
            return await spoiled_response(
                request, fault, body=body, content_type="application/json", json_body=body,
                xml_body=_render_xml(shown), error=_error_for, headers=echo,
            )
    if account is None:
        return tpp_error(404, "RESOURCE_UNKNOWN", f"card account {number} is not known")
    if account.verbatim is not None and (fault is None or fault.kind == "delay"):
        body = account.verbatim
    else:
        body = render_entries(account.masked_pan, entries)
    return web.Response(status=200, body=body, content_type="application/json")


def _error_for(status: int) -> web.Response:
    """The Berlin Group error of an injected status."""
    if status == 429:
        return tpp_error(429, "ACCESS_EXCEEDED", "Injected fault: too many requests")
    if status == 503:
        return tpp_error(503, "SERVICE_UNAVAILABLE", "Injected fault: try again later")
    return tpp_error(status, "INTERNAL_SERVER_ERROR", "Injected fault: internal error")


async def token_endpoint(request: web.Request) -> web.Response:
    """POST /oauth/token: the refresh_token grant (see watcher.sandbox.mypos_auth)."""
    if request.content_type != "application/x-www-form-urlencoded":
        return oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    posted = await request.post()
    form = {name: value for name, value in posted.items() if isinstance(value, str)}
    return request.app[SANDBOX_STATE].auth.grant(request, form)
