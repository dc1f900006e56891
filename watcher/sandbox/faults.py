"""Faults the sandbox injects into its answers: from the control API (one-shot or persistent, per
target), or for one request by query parameter (`?fault=http_429&fault_retry_after=2`) or header
(`X-Sandbox-Fault: slow_body; delay_seconds=0.1`). See watcher.sandbox.control for each kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

FaultKind = Literal[
    # answers in the API's error format
    "http_500",
    "http_503",
    "http_429",
    # broken bodies and transports
    "malformed_json",
    "malformed_xml",
    "wrong_content_type",
    "truncated_body",
    "huge_body",
    "slow_body",
    "xml_entity_bomb",
    "delay",
    # well-formed bodies with hostile content
    "missing_field",
    "nan_amount",
    "huge_number",
    "overflow_amount",
    "unknown_state",
    "duplicate_accounts",
    # myPOS only: the access token or the consent stops being valid
    "token_expired",
    "consent_expired",
]
FaultApi = Literal["mastercard", "mypos"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
FAULT_APIS: tuple[str, ...] = get_args(FaultApi)
# Kinds that change the sandbox's auth state rather than one answer; myPOS only.
AUTH_KINDS: frozenset[str] = frozenset({"token_expired", "consent_expired"})
# Kinds the API module renders itself (a changed body); the others are spoil.py's.
BODY_KINDS: frozenset[str] = frozenset(
    {"missing_field", "nan_amount", "huge_number", "overflow_amount", "unknown_state", "duplicate_accounts"}
)
LISTING_TARGET = "*"  # the account of a Mastercard partner-wide account-balances call
FAULT_HEADER = "X-Sandbox-Fault"
FAULT_QUERY = "fault"
DEFAULT_SLOW_BODY_INTERVAL_S = 0.25
MAX_DELAY_S = 600.0


class FaultError(ValueError):
    """A fault description the sandbox cannot follow; the message says why."""


@dataclass(slots=True)
class Fault:
    """One injected fault for one target.

    `account` is a non_card_token or "*" (the listing) for Mastercard, an account number for myPOS.
    `partner` None matches every Mastercard partner. `remaining` None: persistent; else how many more
    requests it spoils. `delay_seconds`: how long a "delay" holds the answer back, or the pause between
    the pieces of a "slow_body" (default 0.25). `retry_after`: the Retry-After header of http_429 (default
    "1") and http_503 (none by default), delay-seconds or an HTTP date.
    """

    id: int
    api: FaultApi
    account: str
    kind: FaultKind
    partner: str | None = None
    remaining: int | None = 1
    delay_seconds: float = 0.0
    retry_after: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        return asdict(self)


def check_kind(api: str, kind: str) -> tuple[FaultApi, FaultKind]:
    """The api and kind, validated; FaultError names what is wrong."""
    if api not in FAULT_APIS:
        raise FaultError(f"api must be one of {', '.join(FAULT_APIS)}")
    if kind not in FAULT_KINDS:
        raise FaultError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    if kind in AUTH_KINDS and api != "mypos":
        raise FaultError(f"kind {kind} applies to the mypos api only (Mastercard has no token or consent)")
    return cast(FaultApi, api), cast(FaultKind, kind)


def check_delay(value: object) -> float:
    """delay_seconds: a number from 0 to 600."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FaultError("delay_seconds must be a number from 0 to 600") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= MAX_DELAY_S:
        raise FaultError("delay_seconds must be a number from 0 to 600")
    return float(value)


def check_retry_after(value: object) -> str | None:
    """retry_after: absent, a whole number of seconds, or an HTTP date (sent as it is)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FaultError("retry_after must be a whole number of seconds or an HTTP date")
    text = str(value).strip()
    if not text or len(text) > 64 or any(not (" " <= c <= "~") for c in text):
        raise FaultError("retry_after must be a whole number of seconds or an HTTP date")
    return text


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
        retry_after: str | None = None,
    ) -> Fault:
        """Add a fault for `count` requests (None: until cleared) and return it."""
        fault = Fault(next(self._ids), api, account, kind, partner, count, delay_seconds, retry_after)
        self._faults.append(fault)
        return fault

    def take(
        self,
        api: FaultApi,
        account: str,
        partner: str | None = None,
        *,
        kinds: Collection[str] | None = None,
        skip: Collection[str] = (),
    ) -> Fault | None:
        """The first fault matching this request (of `kinds` if given, none of `skip`), used up by one
        if it is counted."""
        for fault in self._faults:
            if fault.api != api or fault.account != account:
                continue
            if fault.partner is not None and fault.partner != partner:
                continue
            if (kinds is not None and fault.kind not in kinds) or fault.kind in skip:
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


def _parameters(text: str) -> tuple[str, dict[str, str]]:
    """`kind; name=value; ...` as the kind and its parameters."""
    kind, *rest = (part.strip() for part in text.split(";"))
    parameters: dict[str, str] = {}
    for item in rest:
        name, sep, value = item.partition("=")
        if not sep:
            raise FaultError(f"fault parameter {item!r} is not name=value")
        parameters[name.strip().lower()] = value.strip()
    return kind, parameters


def request_fault(
    api: FaultApi, account: str, headers: Mapping[str, str], query: Mapping[str, str]
) -> Fault | None:
    """The fault one request asks for by header or query parameter, or None.

    Header: `X-Sandbox-Fault: kind[; delay_seconds=N][; retry_after=N]`. Query: `fault=kind`, with
    `fault_delay_seconds` and `fault_retry_after`. Raises FaultError for a fault it cannot follow.
    """
    if FAULT_HEADER in headers:
        kind, parameters = _parameters(headers[FAULT_HEADER])
    elif FAULT_QUERY in query:
        kind = query[FAULT_QUERY].strip()
        parameters = {
            name.removeprefix("fault_"): value for name, value in query.items() if name.startswith("fault_")
        }
    else:
        return None
    api, checked = check_kind(api, kind)
    unknown = set(parameters) - {"delay_seconds", "retry_after"}
    if unknown:
        raise FaultError(f"unknown fault parameter {sorted(unknown)[0]!r}: use delay_seconds or retry_after")
    delay = check_delay(parameters.get("delay_seconds", "0"))
    return Fault(0, api, account, checked, None, 1, delay, check_retry_after(parameters.get("retry_after")))
