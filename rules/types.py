"""The domain values every part of balance-watcher speaks: balances, observations, alert state.

Pure data, no I/O. Money is always Decimal.
"""

from __future__ import annotations

from collections.abc import KeysView
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, NamedTuple

IN_CREDIT = "IN_CREDIT"
IN_DEBIT = "IN_DEBIT"


class BalanceKey(NamedTuple):
    """Identifies one tracked balance: a source's account, and for myPOS one balance type of it.

    `balance_type` is "" for providers with one balance per account (Mastercard Send).

    A tuple underneath: it is hashed in C (keys are looked up several times per observation) and holds
    three references, no more (100,000 accounts hold a few keys each). But a key is not a plain tuple of
    its fields: it equals only keys.
    """

    source: str
    account: str
    balance_type: str = ""

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return type(other) is BalanceKey and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    @property
    def event_key(self) -> str:
        """The Kafka message key: every event of one account lands on one partition, in order."""
        return f"{self.source}:{self.account}"


@dataclass(frozen=True, slots=True)
class Balance:
    """One balance as the provider reported it.

    `state` is Mastercard's IN_CREDIT / IN_DEBIT (None for myPOS); `balance_type` is myPOS's
    balanceType such as "available" (None for Mastercard). `amount` is the magnitude the provider sent.
    """

    amount: Decimal
    currency: str
    state: str | None = None
    balance_type: str | None = None

    @property
    def signed_amount(self) -> Decimal:
        """The amount with its sign: IN_DEBIT means the account is overdrawn by `amount`."""
        return -self.amount if self.state == IN_DEBIT else self.amount

    def same_as(self, other: Balance) -> bool:
        """True when amount, currency and state are equal; 1000 and 1000.00 are the same money."""
        return self is other or (
            self.amount == other.amount
            and self.currency == other.currency
            and self.state == other.state
            and self.balance_type == other.balance_type
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """One balance of one account, seen at `observed_at` (UTC) by one API call.

    `provider_timestamp` is the provider's own balance timestamp: parsed when valid, else None with the
    raw text kept in `provider_timestamp_text` (a seed sample has a time with 80 seconds).
    """

    key: BalanceKey
    provider: str
    balance: Balance
    observed_at: datetime
    correlation_id: str
    description: str | None = None
    provider_timestamp: datetime | None = None
    provider_timestamp_text: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class KnownBalance:
    """The last balance the state store holds for a key, and how many changes it has seen.

    `version` counts published changes of this key; it makes event ids deterministic: a change that
    is observed again after a failed publish gets the same version, so the same `ce_id`.

    `history` is what `drop` rules look back on: earlier signed amounts, each with the time it stopped
    being the balance (the next change), oldest first. The engine keeps it short: only amounts still
    inside the largest `window` of the rules, and only those higher than every later one (a lower
    earlier amount can never be the peak a drop is measured from). Empty without `drop` rules.
    It changes only when the balance changes, so storing `known` on every change keeps it.
    """

    balance: Balance
    observed_at: datetime
    correlation_id: str
    version: int
    description: str | None = None
    history: tuple[tuple[datetime, Decimal], ...] = ()


# "inactive": not pending nor firing and never fired since it last was (a pending alert whose
# condition stopped before its `for` elapsed); "resolved": fired, then resolved.
AlertStatus = Literal["inactive", "pending", "firing", "resolved"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "firing"})


@dataclass(frozen=True, slots=True)
class AlertState:
    """The state of one alert (rule x balance key) as kept in the store: everything its lifecycle needs,
    so that a restart neither fires a firing alert again nor forgets a pending one.

    `episode` counts how many times this alert has started firing; together with the fingerprint
    it makes the ids of firing and resolved events deterministic (and `repeats` those of reminders).
    `started_at` is when the latest episode started firing; for a pending alert (and an inactive one
    whose pending lapsed), when it became pending.

    Lifecycle fields (all defaulted, so a state written before they existed reads as a plain one):
    - `pending_since`: since when the condition holds without a break (the `for` clock);
    - `cleared_since`: a firing alert whose condition stopped holding then (the `keep_firing_for` clock);
    - `published`: whether this episode's firing was published; False while it is withheld (muted or
      suppressed since it fired). A resolve is published only when the firing was;
    - `muted`, `suppressed_by`: why it is withheld now (a mute window; the name of a firing rule that
      suppresses it);
    - `last_sent_at`, `repeats`: when the firing or the latest reminder was published, and how many
      reminders this episode had;
    - `reason`: for `stale` alerts, why (the provider's reason when access was revoked);
    - `kind`, `severity`: of the rule when the state was written, so that an alert whose rule was
      removed can still be resolved faithfully.
    """

    fingerprint: str
    rule: str
    key: BalanceKey
    status: AlertStatus
    episode: int
    started_at: datetime
    resolved_at: datetime | None = None
    pending_since: datetime | None = None
    cleared_since: datetime | None = None
    published: bool = True
    muted: bool = False
    suppressed_by: str | None = None
    last_sent_at: datetime | None = None
    repeats: int = 0
    reason: str | None = None
    kind: str | None = None
    severity: str | None = None

    @property
    def active(self) -> bool:
        """Pending or firing: time alone can move it on."""
        return self.status in ACTIVE_STATUSES


# The account key of a whole source, for alerts about the source rather than one account.
WHOLE_SOURCE = "*"


def subject_key(source: str, account: str = WHOLE_SOURCE) -> BalanceKey:
    """The key of a poll subject: an account of a source (all its balance types), or the whole source."""
    return BalanceKey(source, account)


@dataclass(frozen=True, slots=True)
class Freshness:
    """When a poll subject last answered: an account (`subject_key(source, account)`) or a whole source
    (`subject_key(source)`). What `stale` rules are judged on; kept by the engine, stored by the daemon.

    `watched_since` is the first poll attempt: a subject that never answered goes stale counting from it.
    `last_error` is the latest failure's reason while failing (None after a success); `access_revoked`
    says the provider answered that access is no longer possible (expired consent or token, revoked key).

    A partner-wide listing answers for every account at once, so its success is kept as one fact, not
    one record per account: the source's record holds `last_listing_at`, and an account that answered
    in that listing is `listed`: its last success is its source's `last_listing_at` (its own
    `last_success_at` is when it was first listed). `rules.staleness.resolve_listed` gives the record
    with that time filled in. An account that drops out of a listing, or fails, stops being listed.
    """

    subject: BalanceKey
    watched_since: datetime
    last_success_at: datetime | None = None
    last_error: str | None = None
    access_revoked: bool = False
    listed: bool = False
    last_listing_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """One call to a balance API as the engine sees it: which source, which accounts, and how it went.

    `accounts` are the accounts the call covered, each once, in order: the one asked for; for a
    partner-wide listing, those it returned, or when it failed, those known for the source. A tuple, or
    a dict's keys (a listing's 100,000 accounts are not copied again). `reason` is why it failed, in the
    provider's words where there are any. `listing` says the call asked for the whole source: when it
    succeeded, `accounts` are all the accounts the source has now.
    """

    source: str
    at: datetime
    accounts: tuple[str, ...] | KeysView[str]
    ok: bool
    reason: str | None = None
    access_revoked: bool = False
    listing: bool = False
