"""Alert rules as data: what a rule watches (its scope), when it holds (its kind and parameters), and
how its alerts live (`for`, `keep_firing_for`, `repeat`, suppression, mute windows, annotations).

Kinds: `below` / `above` (a threshold, with a clear point for hysteresis), `drop` (a fall within a
window), `change` (a movement of at least an amount), `state` (a Mastercard state such as IN_DEBIT) and
`stale` (no successful poll for a while). The threshold kinds are a pair of predicates on the signed
amount (`CONDITIONS`); the others are judged in rules.conditions. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Literal

from rules.schedule import MuteWindow
from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey

RuleKind = Literal["below", "above", "drop", "change", "state", "stale"]
Severity = Literal["info", "warning", "critical"]
StalePer = Literal["account", "source"]

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
RULE_KINDS: tuple[RuleKind, ...] = ("below", "above", "drop", "change", "state", "stale")
BALANCE_STATES: tuple[str, ...] = (IN_CREDIT, IN_DEBIT)
STALE_PER: tuple[StalePer, ...] = ("account", "source")
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
    """One alert rule, validated: money as exact Decimals, durations as timedeltas.

    Which parameters a rule has depends on its kind (the loader checks them):
    - `below` / `above`: `threshold`. Hysteresis: a `below` rule that fired resolves only once the amount
      is back at or above `clear_above` (the threshold when unset); an `above` rule at or below
      `clear_below`. A band between threshold and clear point keeps a hovering balance from flapping.
    - `drop`: `window` and `min_drop` and/or `min_drop_percent` (both must be met when both are set):
      the amount fell at least that much from its highest point within the window.
    - `change`: `min_change`: the amount moved at least that much since the previous observation.
    - `state`: `state` (IN_CREDIT / IN_DEBIT), the Mastercard state of the balance.
    - `stale`: `after`: no successful poll of the account (`per = "account"`) or of the whole source
      (`per = "source"`) for that long, or at once when the provider says access was revoked.

    Lifecycle, for every kind: the condition must hold for `for_duration` before the alert fires
    (pending meanwhile); a firing alert keeps firing until the condition has been clear for
    `keep_firing_for`; `repeat` re-publishes a firing alert at that interval; while a rule named in
    `suppresses` fires (and is not muted) on the same account, or a source-wide alert of it fires on the
    account's source, those rules' alerts are withheld; during a `mute` window the rule's alerts are
    withheld. Withheld alerts are still evaluated, and publish when no longer withheld if still firing.
    `annotations` are texts with placeholders ({amount}, {threshold}, ...) rendered into each alert.
    """

    name: str
    kind: RuleKind
    threshold: Decimal | None = None
    severity: Severity = "warning"
    scope: Scope = field(default_factory=Scope)
    clear_above: Decimal | None = None
    clear_below: Decimal | None = None
    description: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    min_drop: Decimal | None = None
    min_drop_percent: Decimal | None = None
    window: timedelta | None = None
    min_change: Decimal | None = None
    state: str | None = None
    after: timedelta | None = None
    per: StalePer = "account"
    for_duration: timedelta = timedelta(0)
    keep_firing_for: timedelta = timedelta(0)
    repeat: timedelta | None = None
    suppresses: tuple[str, ...] = ()
    mute: tuple[MuteWindow, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def clear_threshold(self) -> Decimal:
        """The amount at which a firing alert of a `below` / `above` rule resolves."""
        clear = self.clear_above if self.kind == "below" else self.clear_below
        if clear is not None:
            return clear
        if self.threshold is None:
            raise ValueError(f"rule {self.name!r} of kind {self.kind!r} has no threshold")
        return self.threshold

    @property
    def condition(self) -> Condition:
        """This rule's breach and clear predicates on the amount; only for `below` and `above`."""
        build = CONDITIONS.get(self.kind)
        if build is None:
            raise ValueError(f"a {self.kind!r} rule is not judged on the amount alone")
        return build(self)

    @property
    def watches_balances(self) -> bool:
        """False for `stale` rules, which are judged on polls and time rather than on balances."""
        return self.kind != "stale"

    def matches(self, key: BalanceKey, balance: Balance) -> bool:
        """True when this rule watches that balance of that key."""
        return self.scope.matches(key, balance)

    def breached(self, balance: Balance) -> bool:
        """True when the balance meets the firing condition (scope aside); `below`/`above`/`state` only."""
        if self.kind == "state":
            return balance.state == self.state
        return self.condition.breached(balance.signed_amount)

    def cleared(self, balance: Balance) -> bool:
        """True when a firing alert would resolve at this balance (scope aside); as `breached`."""
        if self.kind == "state":
            return balance.state != self.state
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


def _threshold(rule: Rule) -> Decimal:
    if rule.threshold is None:
        raise ValueError(f"rule {rule.name!r} of kind {rule.kind!r} needs a threshold")
    return rule.threshold


def _below(rule: Rule) -> Condition:
    # amount < threshold fires; amount >= clear point resolves.
    threshold = _threshold(rule)
    return Condition(
        breached=threshold.__gt__,
        cleared=rule.clear_threshold.__le__,
        quiet=(threshold, UNBOUNDED),
    )


def _above(rule: Rule) -> Condition:
    # amount > threshold fires; amount <= clear point resolves.
    threshold = _threshold(rule)
    return Condition(
        breached=threshold.__lt__,
        cleared=rule.clear_threshold.__ge__,
        quiet=(-UNBOUNDED, threshold),
    )


# The kinds judged on the amount alone; rules.conditions judges every kind, these through this table.
CONDITIONS: Mapping[RuleKind, Callable[[Rule], Condition]] = {"below": _below, "above": _above}


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
