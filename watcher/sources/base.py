"""The one small Protocol every balance API adapter implements, and what a fetch returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from rules.types import BalanceKey, KnownBalance, Observation

# The last three are calls the source refused to make: "circuit_open" while the source's breaker holds
# a failing API off, "budget_exhausted" when a PSD2 account's daily access budget is used up,
# "access_revoked" once the provider said the consent is expired or invalid (until a config reload).
FetchOutcome = Literal[
    "ok",
    "http_error",
    "bad_response",
    "network_error",
    "timeout",
    "circuit_open",
    "budget_exhausted",
    "access_revoked",
]


class ParseError(ValueError):
    """A response body that does not have the documented shape; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class ParsedBalances:
    """What a parser made of one body: the usable balances, and one message per entry it left out.

    A listing with one bad account still yields the others; each `rejected` message names the entry
    and the field at fault, so the caller can log it.
    """

    observations: tuple[Observation, ...]
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one API call produced: the balances it carried, or why it carried none.

    `target` is the account the call asked for, or "*" for a partner-wide listing.
    `correlation_id` is the provider's correlation-id header (Mastercard) or the X-Request-ID we sent
    (myPOS); "" when the call never got that far.
    """

    source: str
    target: str
    outcome: FetchOutcome
    correlation_id: str
    observations: tuple[Observation, ...] = ()
    # Entries of a response that were unusable (each a reason naming the entry); the rest are kept.
    rejected: tuple[str, ...] = ()
    http_status: int | None = None
    error: str | None = None
    duration_s: float = 0.0
    # The provider's own error code: Mastercard's ReasonCode, or the Berlin Group tppMessages code.
    reason_code: str | None = None
    # True when the provider withdrew access to this account (consent expired or invalid): the source
    # no longer polls it until the config is reloaded with a new consent.
    access_revoked: bool = False
    # Seconds from the end of the call before another call can help: the server's Retry-After, the
    # breaker's remaining cool-down, or the wait until the access budget allows one more.
    retry_after_s: float | None = None
    # Requests actually sent for this call, retries included; 0 when the source refused to call.
    attempts: int = 1
    # A listing's accounts, each once in the order answered, with their observations' key: the source's
    # own index when it keeps one (else None, and the poller makes it from the observations).
    accounts: Mapping[str, BalanceKey] | None = None


class BalanceSource(Protocol):
    """A configured balance API: which calls a poll round makes, and how to make one."""

    @property
    def name(self) -> str:
        """The configured source name, unique; part of every account key."""

    @property
    def provider(self) -> str:
        """The source type from the config, e.g. "mastercard-send"."""

    @property
    def max_concurrency(self) -> int:
        """How many calls of this source may be in flight at once."""

    def targets(self) -> Sequence[str]:
        """The calls one poll round makes: account ids, or ["*"] for one partner-wide listing."""

    async def fetch(self, target: str) -> FetchResult:
        """Make one call. Never raises for a bad response or a network failure: it is in the result."""


@runtime_checkable
class PacedSource(Protocol):
    """A source that can tell the scheduler when a call for a target may next be made."""

    def next_allowed(self, target: str, now: datetime) -> datetime | None:
        """The earliest moment a call for `target` will not be refused (`now` or later).

        None: never, until the source is rebuilt from a reloaded config (access revoked).
        """


@runtime_checkable
class SharesKnown(Protocol):
    """A source whose parse can take the objects of balances already known instead of equal new ones
    (memory only: the values, and so the results, are the same)."""

    def share_known(self, known: Callable[[BalanceKey], KnownBalance | None]) -> None:
        """`known`: the last known balance of a key (the state store's look-up), or None."""
