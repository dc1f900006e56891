"""Faults the control API injects into the sandbox's answers, one-shot or persistent."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from aiohttp import web

FaultKind = Literal[
    "http_500", "malformed_json", "malformed_xml", "wrong_content_type", "missing_field", "delay"
]
FaultApi = Literal["mastercard", "mypos"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
FAULT_APIS: tuple[str, ...] = get_args(FaultApi)
LISTING_TARGET = "*"  # the account of a Mastercard partner-wide account-balances call

_MAINTENANCE_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
    b"<body><h1>Service temporarily unavailable</h1><p>Please try again later.</p></body></html>\n"
)


@dataclass(slots=True)
class Fault:
    """One injected fault for one target.

    `account` is a non_card_token or "*" (the listing) for Mastercard, an account number for myPOS.
    `partner` None matches every Mastercard partner. `remaining` None: persistent; else how many more
    requests it spoils. `delay_seconds` is how long a "delay" fault holds the answer back.
    """

    id: int
    api: FaultApi
    account: str
    kind: FaultKind
    partner: str | None = None
    remaining: int | None = 1
    delay_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        return asdict(self)


class FaultBook:
    """The faults in force, matched in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(
        self,
        api: FaultApi,
        account: str,
        kind: FaultKind,
        *,
        partner: str | None = None,
        count: int | None = 1,
        delay_seconds: float = 0.0,
    ) -> Fault:
        """Add a fault for `count` requests (None: until cleared) and return it."""
        fault = Fault(next(self._ids), api, account, kind, partner, count, delay_seconds)
        self._faults.append(fault)
        return fault

    def take(self, api: FaultApi, account: str, partner: str | None = None) -> Fault | None:
        """The first fault matching this request, used up by one if it is counted."""
        for fault in self._faults:
            if fault.api != api or fault.account != account:
                continue
            if fault.partner is not None and fault.partner != partner:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    def clear(self) -> None:
        """Remove every fault."""
        self._faults.clear()

    def all(self) -> list[Fault]:
        """The faults in force."""
        return list(self._faults)


def spoiled_response(
    kind: FaultKind, *, json_body: bytes, xml_body: bytes, error: web.Response
) -> web.Response:
    """The answer for a fault that replaces the response; "delay" and "missing_field" are the caller's.

    `json_body` / `xml_body` are the answers the request would have had; malformed ones are cut in half.
    """
    if kind == "http_500":
        return error
    if kind == "malformed_json":
        return web.Response(body=json_body[: len(json_body) // 2], content_type="application/json")
    if kind == "malformed_xml":
        return web.Response(body=xml_body[: len(xml_body) // 2], content_type="application/xml")
    if kind == "wrong_content_type":
        return web.Response(body=_MAINTENANCE_PAGE, content_type="text/html")
    raise ValueError(f"fault {kind!r} does not replace the response")
