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


# Whether observing a key's known balance again, unchanged, at a moment leads to nothing: no change, no
# alert state, no transition (rules.engine.quiet_when_unchanged, with the poller's rules and the key's
# alert states). The poller gives it to the sources that share known objects.
QuietUnchanged = Callable[[BalanceKey, KnownBalance, datetime], bool]


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
    # Accounts answered with their balance as already known, for which nothing would follow (see
    # mastercard_accounts.ListingKeys.quiet): counted, not built as observations.
    unchanged: int = 0


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
    # A listing's accounts answered unchanged and left out of `observations` (see ParsedBalances); they
    # are among `accounts`, which a result with any must therefore carry.
    unchanged: int = 0


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
    (memory only: the values, and so the results, are the same), and can leave out of a listing's
    observations the accounts whose unchanged balance would lead to nothing."""

    def share_known(self, known: Callable[[BalanceKey], KnownBalance | None], quiet: QuietUnchanged) -> None:
        """`known`: the last known balance of a key (the state store's look-up), or None. `quiet`: see
        QuietUnchanged."""
