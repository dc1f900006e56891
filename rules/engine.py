"""Pure evaluation: one observation, the last known balance and its alert states in; what to publish
and what to store out. No I/O, no clock: every time comes from the observation.

The daemon compiles its rules once per (re)load with `compile_rules` and calls `assess` per
observation; it publishes `change` and `transitions` and then stores `known` and `alerts`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import translate
from typing import overload

from rules.model import UNBOUNDED, Rule
from rules.types import AlertState, AlertStatus, BalanceKey, KnownBalance, Observation

# Past this many distinct keys the per-key cache starts over, so a churn of accounts cannot grow it forever.
_KEY_CACHE_LIMIT = 100_000
_GLOB_SPECIALS = frozenset("*?[")


def fingerprint(rule_name: str, key: BalanceKey) -> str:
    """The stable id of one alert (rule x balance key): 32 hex chars of a SHA-256.

    Stored with alert state and published in events, so the formula must never change.
    """
    text = "\0".join((rule_name, key.source, key.account, key.balance_type))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """A balance seen for the first time (`previous` None) or different from the last known one.

    `version` is the key's change counter after this change: 1 on first sight.
    """

    observation: Observation
    previous: KnownBalance | None
    version: int


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert that started firing or resolved; `state` is its new stored state."""

    status: AlertStatus
    rule: Rule
    state: AlertState
    observation: Observation


@dataclass(frozen=True, slots=True)
class Assessment:
    """Everything one observation leads to.

    `known` is what to store for the key; `alerts` the alert states to write (new or changed).
    """

    key: BalanceKey
    change: BalanceChange | None
    known: KnownBalance
    transitions: tuple[AlertTransition, ...]
    alerts: tuple[AlertState, ...]


def _glob_test(pattern: str | None) -> Callable[[str], object] | None:
    """A fast test for a fnmatch-case glob; None when it matches everything."""
    if pattern is None or pattern == "*":
        return None
    if _GLOB_SPECIALS.isdisjoint(pattern):
        return pattern.__eq__
    return re.compile(translate(pattern)).match


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its scope and condition turned into ready-to-call tests."""

    rule: Rule
    source_test: Callable[[str], object] | None
    account_test: Callable[[str], object] | None
    balance_type: str | None
    currency: str | None
    breached: Callable[[Decimal], bool]
    cleared: Callable[[Decimal], bool]
    quiet: tuple[Decimal, Decimal] | None

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        """Compile one rule."""
        condition = rule.condition
        return cls(
            rule=rule,
            source_test=_glob_test(rule.scope.source),
            account_test=_glob_test(rule.scope.account),
            balance_type=rule.scope.balance_type,
            currency=rule.scope.currency,
            breached=condition.breached,
            cleared=condition.cleared,
            quiet=condition.quiet,
        )

    def matches_key(self, key: BalanceKey) -> bool:
        """True when the key is in scope; the currency depends on the balance and is checked apart."""
        return (
            (self.source_test is None or bool(self.source_test(key.source)))
            and (self.account_test is None or bool(self.account_test(key.account)))
            and (self.balance_type is None or self.balance_type == key.balance_type)
        )


# One rule watching one key in one currency: the rule, its fingerprint, its breach and clear tests.
Watch = tuple[Rule, str, Callable[[Decimal], bool], Callable[[Decimal], bool]]


@dataclass(frozen=True, slots=True)
class KeyWatch:
    """The rules watching one key's balance in one currency, and the amounts at which none is breached.

    `quiet_low` > `quiet_high` when there is no such range (some rule always fires, or a kind cannot
    tell from the amount alone).
    """

    watches: tuple[Watch, ...]
    by_fingerprint: Mapping[str, Watch]
    quiet_low: Decimal
    quiet_high: Decimal

    @classmethod
    def of(cls, key: BalanceKey, rules: Sequence[CompiledRule]) -> KeyWatch:
        """The watch of these rules (already known to be in scope) over that key."""
        low, high = -UNBOUNDED, UNBOUNDED
        for compiled in rules:
            if compiled.quiet is None:
                low, high = UNBOUNDED, -UNBOUNDED
                break
            low, high = max(low, compiled.quiet[0]), min(high, compiled.quiet[1])
        watches = tuple((c.rule, fingerprint(c.rule.name, key), c.breached, c.cleared) for c in rules)
        return cls(watches, {w[1]: w for w in watches}, low, high)


class CompiledRules(Sequence[Rule]):
    """Rules ready for `assess`: compiled tests, and a cache of which rules watch which key.

    A Sequence of the rules it was built from. Build one per rules (re)load and reuse it.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(rules)
        self._compiled = tuple(CompiledRule.of(rule) for rule in self._rules)
        self._by_name = {c.rule.name: c for c in self._compiled}
        if len(self._by_name) != len(self._rules):
            raise ValueError("rule names must be unique: alerts are identified by them")
        self._watches: dict[tuple[str, str, str, str], KeyWatch] = {}

    @overload
    def __getitem__(self, index: int) -> Rule: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Rule]: ...
    def __getitem__(self, index: int | slice) -> Rule | Sequence[Rule]:
        return self._rules[index]

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def get(self, name: str) -> CompiledRule | None:
        """The compiled rule of that name, or None."""
        return self._by_name.get(name)

    def watching(self, key: BalanceKey, currency: str) -> KeyWatch:
        """The rules whose scope takes in this key's balance in that currency, in rule order."""
        # A plain tuple as the cache key: hashing it is much cheaper than the dataclass's __hash__.
        cache_key = (key.source, key.account, key.balance_type, currency)
        found = self._watches.get(cache_key)
        if found is None:
            if len(self._watches) >= _KEY_CACHE_LIMIT:
                self._watches.clear()
            in_scope = [
                c
                for c in self._compiled
                if (c.currency is None or c.currency == currency) and c.matches_key(key)
            ]
            found = self._watches[cache_key] = KeyWatch.of(key, in_scope)
        return found


# Recently compiled rule tuples, by identity: a caller that keeps passing the same tuple to `assess`
# gets the compiled rules and their per-key cache without holding them itself. Tuples only, since
# they cannot change behind our back; each entry keeps its tuple alive, so an id is never reused.
_RECENT: dict[int, tuple[tuple[Rule, ...], CompiledRules]] = {}
_RECENT_LIMIT = 8


def compile_rules(rules: Sequence[Rule]) -> CompiledRules:
    """Compile rules for many `assess` calls; raise ValueError on duplicate rule names.

    Cheap to call again with the same CompiledRules or the same tuple: the compiled form is reused.
    """
    if isinstance(rules, CompiledRules):
        return rules
    if type(rules) is not tuple:
        return CompiledRules(rules)
    recent = _RECENT.get(id(rules))
    if recent is not None and recent[0] is rules:
        return recent[1]
    compiled = CompiledRules(rules)
    if len(_RECENT) >= _RECENT_LIMIT:
        _RECENT.clear()
    _RECENT[id(rules)] = (rules, compiled)
    return compiled


def _fire(rule: Rule, fp: str, previous: AlertState | None, observation: Observation) -> AlertTransition:
    episode = 1 if previous is None else previous.episode + 1
    state = AlertState(fp, rule.name, observation.key, "firing", episode, observation.observed_at)
    return AlertTransition("firing", rule, state, observation)


def _resolve(rule: Rule, firing: AlertState, observation: Observation) -> AlertTransition:
    state = AlertState(
        firing.fingerprint,
        firing.rule,
        firing.key,
        "resolved",
        firing.episode,
        firing.started_at,
        observation.observed_at,
    )
    return AlertTransition("resolved", rule, state, observation)


def _transitions(
    rules: CompiledRules, observation: Observation, alerts: Mapping[str, AlertState]
) -> tuple[AlertTransition, ...]:
    balance = observation.balance
    amount = balance.signed_amount
    watch = rules.watching(observation.key, balance.currency)
    found: list[AlertTransition] = []
    firing = {fp: state for fp, state in alerts.items() if state.status == "firing"} if alerts else None
    if firing:
        for fp, state in firing.items():
            watched = watch.by_fingerprint.get(fp)
            if watched is not None:
                if watched[3](amount):
                    found.append(_resolve(watched[0], state, observation))
                continue
            # Firing but no longer watched: the balance's currency changed, or the rule's scope did on
            # reload. It resolves; the alerts of rules that are gone are not this function's call.
            out_of_scope = rules.get(state.rule)
            if out_of_scope is not None:
                found.append(_resolve(out_of_scope.rule, state, observation))
    # While the amount is where every rule is quiet, nothing new can fire: the common case is two
    # comparisons, however many rules there are.
    if not watch.quiet_low <= amount <= watch.quiet_high:
        for rule, fp, breached, _ in watch.watches:
            if breached(amount) and not (firing and fp in firing):
                found.append(_fire(rule, fp, alerts.get(fp), observation))
    return tuple(found) if found else ()


def assess(
    observation: Observation,
    known: KnownBalance | None,
    rules: Sequence[Rule],
    alerts: Mapping[str, AlertState],
) -> Assessment:
    """Compare an observation with the key's last known balance and evaluate the rules on it.

    `known` in the result is what to store: the new balance and version after a change, else the
    given `known` itself (the balance as last published, seen first at its `observed_at`).

    `alerts` maps fingerprint to the stored AlertState of this key (resolved ones carry the episode
    count). Pass a `CompiledRules`, or the same tuple of rules every time (its compiled form is
    reused); any other sequence is compiled on every call.
    Transitions list resolves first, then new firings in rule order.
    """
    compiled = rules if isinstance(rules, CompiledRules) else compile_rules(rules)
    balance = observation.balance
    change: BalanceChange | None = None
    if known is None or not known.balance.same_as(balance):
        version = 1 if known is None else known.version + 1
        change = BalanceChange(observation, known, version)
        description = observation.description
        if description is None and known is not None:
            description = known.description
        stored = KnownBalance(
            balance, observation.observed_at, observation.correlation_id, version, description
        )
    elif observation.description is not None and observation.description != known.description:
        # Same money, renamed account: keep the balance as published and its version, take the new name.
        stored = KnownBalance(
            known.balance, known.observed_at, known.correlation_id, known.version, observation.description
        )
    else:
        # Unchanged: the stored balance stays exactly as last published, the `previous` of the next change.
        stored = known
    transitions = _transitions(compiled, observation, alerts)
    states = tuple([t.state for t in transitions]) if transitions else ()
    return Assessment(observation.key, change, stored, transitions, states)
