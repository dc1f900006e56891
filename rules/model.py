"""Threshold rules as data: what a rule watches (its scope) and when it fires and clears (its kind).

A rule's kind names a condition: a pair of predicates on the signed amount, one saying when the rule
is breached and one saying when a firing alert clears. New kinds are new entries in `CONDITIONS`;
nothing else has to know them. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Literal

from rules.types import Balance, BalanceKey

RuleKind = Literal["below", "above"]
Severity = Literal["info", "warning", "critical"]

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
UNBOUNDED = Decimal("Infinity")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which balances a rule watches; a field left None matches everything.

    `source` and `account` are case-sensitive globs (fnmatch: *, ?, [..]); `currency` and
    `balance_type` are exact. `balance_type` is the key's: myPOS's balanceType, "" for Mastercard.
    """

    source: str | None = None
    account: str | None = None
    currency: str | None = None
    balance_type: str | None = None

    def matches_key(self, key: BalanceKey) -> bool:
        """True when the key's source, account and balance type are in scope (currency aside)."""
        return (
            (self.source is None or fnmatchcase(key.source, self.source))
            and (self.account is None or fnmatchcase(key.account, self.account))
            and (self.balance_type is None or key.balance_type == self.balance_type)
        )

    def matches(self, key: BalanceKey, balance: Balance) -> bool:
        """True when the balance of that key is in scope."""
        return (self.currency is None or balance.currency == self.currency) and self.matches_key(key)


@dataclass(frozen=True, slots=True)
class Rule:
    """One threshold rule, validated: `threshold` and the clear points are exact Decimals.

    Hysteresis: a `below` rule that fired resolves only once the amount is back at or above
    `clear_above` (the threshold when unset); an `above` rule resolves at or below `clear_below`.
    A band between threshold and clear point keeps a balance hovering at the line from flapping.
    """

    name: str
    kind: RuleKind
    threshold: Decimal
    severity: Severity = "warning"
    scope: Scope = field(default_factory=Scope)
    clear_above: Decimal | None = None
    clear_below: Decimal | None = None
    description: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def clear_threshold(self) -> Decimal:
        """The amount at which a firing alert of this rule resolves."""
        clear = self.clear_above if self.kind == "below" else self.clear_below
        return self.threshold if clear is None else clear

    @property
    def condition(self) -> Condition:
        """This rule's breach and clear predicates, as its kind defines them."""
        return CONDITIONS[self.kind](self)

    def matches(self, key: BalanceKey, balance: Balance) -> bool:
        """True when this rule watches that balance of that key."""
        return self.scope.matches(key, balance)

    def breached(self, balance: Balance) -> bool:
        """True when the balance meets the firing condition (scope aside)."""
        return self.condition.breached(balance.signed_amount)

    def cleared(self, balance: Balance) -> bool:
        """True when a firing alert of this rule would resolve at this balance (scope aside)."""
        return self.condition.cleared(balance.signed_amount)


@dataclass(frozen=True, slots=True)
class Condition:
    """A kind's verdict for one rule, as two predicates on the signed amount.

    Built once per rule; the engine calls them for every observation, so they are plain bound
    methods of Decimal where possible.
    """

    breached: Callable[[Decimal], bool]
    cleared: Callable[[Decimal], bool]
    # The inclusive range of amounts at which the rule is surely not breached, -Infinity/Infinity for
    # unbounded; None when the kind cannot tell from the amount alone. It lets the engine dismiss
    # every rule of a healthy balance with two comparisons.
    quiet: tuple[Decimal, Decimal] | None = None


def _below(rule: Rule) -> Condition:
    # amount < threshold fires; amount >= clear point resolves.
    return Condition(
        breached=rule.threshold.__gt__,
        cleared=rule.clear_threshold.__le__,
        quiet=(rule.threshold, UNBOUNDED),
    )


def _above(rule: Rule) -> Condition:
    # amount > threshold fires; amount <= clear point resolves.
    return Condition(
        breached=rule.threshold.__lt__,
        cleared=rule.clear_threshold.__ge__,
        quiet=(-UNBOUNDED, rule.threshold),
    )


# A new kind is a new entry here (and in RuleKind); the loader and the engine take it from this table.
CONDITIONS: Mapping[RuleKind, Callable[[Rule], Condition]] = {"below": _below, "above": _above}
RULE_KINDS: tuple[RuleKind, ...] = tuple(CONDITIONS)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every loaded rule, in file order, and the file each one came from (`origins[i]` for `rules[i]`)."""

    rules: tuple[Rule, ...] = ()
    origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.rules) != len(self.origins):
            raise ValueError("a RuleSet needs one origin per rule")

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> Rule | None:
        """The rule of that name, or None."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    def origin_of(self, name: str) -> str | None:
        """The file the rule of that name came from, or None when there is no such rule."""
        for rule, origin in zip(self.rules, self.origins, strict=True):
            if rule.name == name:
                return origin
        return None
