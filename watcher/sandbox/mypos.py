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
from decimal import Decimal
from xml.sax.saxutils import escape

from aiohttp import web

from watcher.sandbox.faults import spoiled_response
from watcher.sandbox.settings import SandboxSettings
from watcher.sandbox.state import SANDBOX_STATE
from watcher.sandbox.world import MyposAccount

BALANCES_PATH = "/v1/card-accounts/{account_number}/balances"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def tpp_error(status: int, code: str, text: str) -> web.Response:
    """A Berlin Group error: {"tppMessages": [{"category": "ERROR", "code": ..., "text": ...}]}."""
    body = json.dumps({"tppMessages": [{"category": "ERROR", "code": code, "text": text}]})
    return web.Response(status=status, body=body.encode("utf-8"), content_type="application/json")


def check_headers(headers: Mapping[str, str], settings: SandboxSettings) -> web.Response | None:
    """None when the request's headers are acceptable, else the error answer.

    Format first (400 FORMAT_ERROR), then who calls (API-Key), then the token, then the consent.
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
    if scheme.lower() != "bearer" or token.strip() != settings.mypos_access_token:
        return tpp_error(401, "TOKEN_INVALID", "Authorization bearer token is missing or not valid")
    if consent_id != settings.mypos_consent_id:
        return tpp_error(401, "CONSENT_INVALID", "Consent-ID is not valid for this access token")
    return None


def number_text(amount: Decimal) -> str:
    """A Decimal as a JSON number with all its digits: 120.260 stays 120.260, never 1.2026E+2."""
    text = format(amount, "f")
    return text.removeprefix("-") if amount == 0 else text  # no "-0.000"


def render_json(account: MyposAccount, *, with_balances: bool = True) -> bytes:
    """The balances body in the sample's layout, written by hand so amounts never pass through a float."""
    lines = ["{", f"    \"maskedPan\": {json.dumps(account.masked_pan)}" + ("," if with_balances else "")]
    if with_balances:
        items = []
        for balance_type, balance in account.balances.items():
            items.append(
                "        {\n"
                f"            \"amount\": {number_text(balance.amount)},\n"
                f"            \"currency\": {json.dumps(balance.currency)},\n"
                f"            \"balanceType\": {json.dumps(balance_type)}\n"
                "        }"
            )
        lines.append("    \"balances\": [" + ("\n" + ",\n".join(items) + "\n    ]" if items else "]"))
    lines.append("}")
    return "\n".join(lines).encode("utf-8")


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


async def card_account_balances(request: web.Request) -> web.Response:
    """GET /v1/card-accounts/{accountNumber}/balances."""
    response = await _balances(request)
    request_id = request.headers.get("X-Request-ID")
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


async def _balances(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    refused = check_headers(request.headers, state.settings)
    if refused is not None:
        return refused
    number = request.match_info["account_number"]
    state.world.sync()
    account = state.world.mypos_account(number)
    fault = state.faults.take("mypos", number)
    with_balances = True
    if fault is not None:
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_seconds)
        elif fault.kind == "missing_field":
            with_balances = False
        else:
            # A fault on an unknown account spoils an empty answer: faults work on any target.
            shown = account if account is not None else MyposAccount(number, "", {})
            error = tpp_error(500, "INTERNAL_SERVER_ERROR", "Injected fault: internal error")
            return spoiled_response(
                fault.kind, json_body=render_json(shown), xml_body=_render_xml(shown), error=error
            )
    if account is None:
        return tpp_error(404, "RESOURCE_UNKNOWN", f"card account {number} is not known")
    if account.verbatim is not None and with_balances:
        body = account.verbatim
    else:
        body = render_json(account, with_balances=with_balances)
    return web.Response(status=200, body=body, content_type="application/json")
