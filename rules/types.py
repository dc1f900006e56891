"""The domain values every part of balance-watcher speaks: balances, observations, alert state.

Pure data, no I/O. Money is always Decimal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

IN_CREDIT = "IN_CREDIT"
IN_DEBIT = "IN_DEBIT"


@dataclass(frozen=True, slots=True)
class BalanceKey:
    """Identifies one tracked balance: a source's account, and for myPOS one balance type of it.

    `balance_type` is "" for providers with one balance per account (Mastercard Send).
    """

    source: str
    account: str
    balance_type: str = ""

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
        return (
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
    """

    balance: Balance
    observed_at: datetime
    correlation_id: str
    version: int
    description: str | None = None


AlertStatus = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class AlertState:
    """The state of one alert (rule x balance key) as kept in the store.

    `episode` counts how many times this alert has started firing; together with the fingerprint
    it makes the ids of firing and resolved events deterministic.
    """

    fingerprint: str
    rule: str
    key: BalanceKey
    status: AlertStatus
    episode: int
    started_at: datetime
    resolved_at: datetime | None = None
