"""Rules made ready for fast evaluation: scope tests, conditions, per-key caches, the suppression ladder.

Built once per rules (re)load with `compile_rules`; every entry point of the engine takes them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fnmatch import translate
from typing import overload

from rules.conditions import History, Predicate, judge_of
from rules.model import CONDITIONS, UNBOUNDED, Rule
from rules.schedule import is_muted
from rules.types import ACTIVE_STATUSES, IN_DEBIT, WHOLE_SOURCE, AlertState, Balance, BalanceKey, subject_key

# Past this many distinct keys a per-key cache starts over, so a churn of accounts cannot grow it forever.
_KEY_CACHE_LIMIT = 500_000
_GLOB_SPECIALS = frozenset("*?[")
# The stored last success of a poll subject may lag the true one by up to this fraction of the
# shortest `after` of the stale rules (rules.staleness.assess_poll).
FRESHNESS_FRACTION = 10


def fingerprint(rule_name: str, key: BalanceKey) -> str:
    """The stable id of one alert (rule x balance key): 32 hex chars of a SHA-256.

    Stored with alert state and published in events, so the formula must never change.
    """
    text = "\0".join((rule_name, key.source, key.account, key.balance_type))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _glob_test(pattern: str | None) -> Callable[[str], object] | None:
    """A fast test for a fnmatch-case glob; None when it matches everything."""
    if pattern is None or pattern == "*":
        return None
    if _GLOB_SPECIALS.isdisjoint(pattern):
        return pattern.__eq__
    return re.compile(translate(pattern)).match


def _never(_: object) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its scope and condition turned into ready-to-call tests (no condition for `stale`)."""

    rule: Rule
    source_test: Callable[[str], object] | None
    account_test: Callable[[str], object] | None
    balance_type: str | None
    currency: str | None
    breached: Predicate
    cleared: Predicate
    quiet: tuple[Decimal, Decimal] | None

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        """Compile one rule; ValueError when its kind's parameters are missing."""
        if rule.watches_balances:
            judge = judge_of(rule)
            breached, cleared = judge.breached, judge.cleared
        else:
            breached = cleared = _never
        amount_kind = CONDITIONS.get(rule.kind)
        return cls(
            rule=rule,
            source_test=_glob_test(rule.scope.source),
            account_test=_glob_test(rule.scope.account),
            balance_type=rule.scope.balance_type,
            currency=rule.scope.currency,
            breached=breached,
            cleared=cleared,
            quiet=amount_kind(rule).quiet if amount_kind is not None else None,
        )

    def matches_key(self, key: BalanceKey) -> bool:
        """True when the key is in scope; the currency depends on the balance and is checked apart."""
        return (
            (self.source_test is None or bool(self.source_test(key.source)))
            and (self.account_test is None or bool(self.account_test(key.account)))
            and (self.balance_type is None or self.balance_type == key.balance_type)
        )


# One rule watching a key: the rule, its breach and clear tests.
Watch = tuple[Rule, Predicate, Predicate]


@dataclass(frozen=True, slots=True)
class KeyWatch:
    """The rules watching a key's balance in one currency, in rule order.

    Shared by every key with the same rules in scope, so it holds nothing of a key: fingerprints are
    computed only when an alert state is created. `quiet_low`..`quiet_high` is where no `below` /
    `above` rule is breached (`quiet_low` > `quiet_high` when there is no such range); `others` are the
    rules of the kinds that cannot tell from the amount alone (state, change, drop).
    """

    watches: tuple[Watch, ...]
    names: frozenset[str]
    quiet_low: Decimal
    quiet_high: Decimal
    others: tuple[Watch, ...]
    # For `CompiledRules.quiet_when_unchanged`: the Mastercard states at which a `state` rule is
    # breached, and the longest window of the `drop` rules (None without any). `change` rules need
    # nothing: an unchanged balance has moved by zero, and their min_change is positive.
    breach_states: frozenset[str | None] = frozenset()
    drop_window: timedelta | None = None

    @classmethod
    def of(cls, rules: Sequence[CompiledRule]) -> KeyWatch:
        """The watch of these rules (already known to be in scope)."""
        low, high = -UNBOUNDED, UNBOUNDED
        for compiled in rules:
            if compiled.quiet is not None:
                low, high = max(low, compiled.quiet[0]), min(high, compiled.quiet[1])
        watches = tuple((c.rule, c.breached, c.cleared) for c in rules)
        others = tuple(w for w, c in zip(watches, rules, strict=True) if c.quiet is None)
        states = frozenset(c.rule.state for c in rules if c.rule.kind == "state")
        windows = [c.rule.window for c in rules if c.rule.kind == "drop" and c.rule.window is not None]
        return cls(
            watches,
            frozenset(c.rule.name for c in rules),
            low,
            high,
            others,
            states,
            max(windows) if windows else None,
        )


# A look-up of the firing (or any) state of a rule on a key, as the caller keeps them.
StateLookup = Callable[[str, BalanceKey], AlertState | None]


def active_state_lookup(stored: Callable[[BalanceKey], Mapping[str, AlertState]]) -> StateLookup:
    """A StateLookup over `stored`, the look-up of all the states of one key by fingerprint (a store's
    view): the pending or firing state of a rule on a key, or None."""

    def lookup(name: str, key: BalanceKey) -> AlertState | None:
        for state in stored(key).values():
            if state.rule == name and state.key == key and state.status in ACTIVE_STATUSES:
                return state
        return None

    return lookup


def _suppression_cycle(rules: Sequence[Rule]) -> list[str] | None:
    """A cycle in the `suppresses` graph (each name suppressing the next), or None."""
    edges = {rule.name: rule.suppresses for rule in rules}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in edges.get(name, ()):
            found = visit(target, [*path, name])
            if found is not None:
                return found
        done.add(name)
        return None

    for rule in rules:
        cycle = visit(rule.name, [])
        if cycle is not None:
            return cycle
    return None


def check_suppressions(rules: Sequence[Rule]) -> list[tuple[str, str]]:
    """Every problem with the rules' `suppresses` lists, as (rule name, message): unknown names, a rule
    naming itself, cycles (alerts that suppress each other would never page)."""
    names = {rule.name for rule in rules}
    problems: list[tuple[str, str]] = []
    for rule in rules:
        for name in rule.suppresses:
            if name == rule.name:
                problems.append((rule.name, "a rule cannot suppress itself"))
            elif name not in names:
                problems.append((rule.name, f"no rule is named {name!r}"))
    if not problems:
        cycle = _suppression_cycle(rules)
        if cycle is not None:
            problems.append((cycle[0], f"a cycle ({' -> '.join(cycle)}): none of these would ever page"))
    return problems


class CompiledRules(Sequence[Rule]):
    """Rules ready for the engine: compiled tests, per-key caches, who suppresses whom.

    A Sequence of the rules it was built from. Build one per rules (re)load and reuse it.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(rules)
        self._compiled = tuple(CompiledRule.of(rule) for rule in self._rules)
        self._by_name = {c.rule.name: c for c in self._compiled}
        if len(self._by_name) != len(self._rules):
            raise ValueError("rule names must be unique: alerts are identified by them")
        problems = check_suppressions(self._rules)
        if problems:
            raise ValueError("; ".join(f"rule {name!r}: suppresses: {text}" for name, text in problems))
        self._stale_rules = tuple(c for c in self._compiled if not c.rule.watches_balances)
        suppressed_by: dict[str, list[str]] = {}
        for rule in self._rules:
            for name in rule.suppresses:
                suppressed_by.setdefault(name, []).append(rule.name)
        self._suppressed_by = {name: tuple(by) for name, by in suppressed_by.items()}
        # What a firing alert may have to publish without a change of state: reminders, the end of a
        # mute window. (The end of a suppression comes with a change of the suppressor's state.)
        self._repeats = {rule.name: rule.repeat for rule in self._rules if rule.repeat is not None}
        # The rules whose alerts time may mute or unmute at any moment.
        self.muted_names = frozenset(rule.name for rule in self._rules if rule.mute)
        windows = [rule.window for rule in self._rules if rule.kind == "drop" and rule.window is not None]
        self.history_window: timedelta | None = max(windows) if windows else None
        self._order = {rule.name: index for index, rule in enumerate(self._rules)}
        self.stale_names = frozenset(c.rule.name for c in self._stale_rules)
        # The rules judged on balances: only their active alerts can move on an observation.
        self.balance_names = frozenset(rule.name for rule in self._rules if rule.watches_balances)
        # Every distinct stale `after`, shortest first: the ages at which subjects turn stale for more rules.
        self.stale_afters: tuple[timedelta, ...] = tuple(
            sorted({c.rule.after for c in self._stale_rules if c.rule.after is not None})
        )
        # Below this long without an answer, no subject is stale (revocations aside).
        self.shortest_stale_after: timedelta | None = self.stale_afters[0] if self.stale_afters else None
        # How stale a stored last success may be allowed to get while a subject keeps answering: a
        # success this soon after the stored one, with nothing else new, is not stored (see
        # rules.staleness.assess_poll). A tenth of the shortest `after`; zero without stale rules.
        self.freshness_resolution: timedelta = (
            self.shortest_stale_after / FRESHNESS_FRACTION
            if self.shortest_stale_after is not None
            else timedelta(0)
        )
        # Per currency and key, which rules watch it; the values are shared between keys (one per set of
        # rules). By currency, then by the key itself (its hash computed once, no tuple made per look-up);
        # or by (source, balance type) when no balance rule that may take in the source's keys names
        # accounts, as then that is all a scope can tell apart (100,000 accounts: a few entries, not
        # 100,000). The same for the stale rules, by (source, whole source or not).
        self._watches: dict[str, dict[object, KeyWatch]] = {}
        self._watch_count = 0
        self._shared_watches: dict[tuple[int, ...], KeyWatch] = {}
        self._balance_scopes_name_accounts: dict[str, bool] = {}
        self._stale_scopes_name_accounts: dict[str, bool] = {}
        self._stale: dict[object, tuple[Rule, ...]] = {}
        self._shared_stale: dict[tuple[int, ...], tuple[Rule, ...]] = {}

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

    def order(self, name: str) -> int:
        """The rule's position in the rules files (for a stable order of transitions)."""
        return self._order.get(name, len(self._rules))

    @property
    def has_stale_rules(self) -> bool:
        """True when some rule is of kind `stale`."""
        return bool(self._stale_rules)

    def watching(self, key: BalanceKey, currency: str) -> KeyWatch:
        """The balance rules whose scope takes in this key's balance in that currency, in rule order."""
        # The key's fields and the currency: one balance rule scope per key and currency.
        of_currency = self._watches.get(currency)
        by_account = self._balance_scopes_name_accounts.get(key.source)
        if by_account is None:
            by_account = self._balance_scopes_name_accounts[key.source] = self._scopes_name_accounts(
                key.source, balance_rules=True
            )
        cache_key: object = key if by_account else (key.source, key.balance_type)
        found = of_currency.get(cache_key) if of_currency is not None else None
        if found is None:
            if self._watch_count >= _KEY_CACHE_LIMIT:
                self._watches.clear()
                self._watch_count = 0
                of_currency = None
            in_scope = tuple(
                index
                for index, c in enumerate(self._compiled)
                if c.rule.watches_balances
                and (c.currency is None or c.currency == currency)
                and c.matches_key(key)
            )
            found = self._shared_watches.get(in_scope)
            if found is None:
                found = KeyWatch.of([self._compiled[index] for index in in_scope])
                self._shared_watches[in_scope] = found
            if of_currency is None:
                of_currency = self._watches[currency] = {}
            of_currency[cache_key] = found
            self._watch_count += 1
        return found

    def quiet_when_unchanged(self, key: BalanceKey, balance: Balance, history: History, at: datetime) -> bool:
        """True when no rule watching the key is breached by `balance` observed again, unchanged, at `at`
        with the key's drop `history` as stored with it (alert states aside: see
        rules.engine.quiet_when_unchanged). Exact for `below` / `above` (the quiet range) and `state`
        (the breaching states): their verdict is a function of the balance; and for `change`: an
        unchanged balance moved by zero, and min_change is positive. Conservative for `drop`: False
        whenever an amount of the history higher than the balance is still inside the longest window,
        whether or not the fall meets the rule."""
        watch = self.watching(key, balance.currency)
        amount = -balance.amount if balance.state == IN_DEBIT else balance.amount
        if not watch.quiet_low <= amount <= watch.quiet_high or balance.state in watch.breach_states:
            return False
        window = watch.drop_window
        # The history falls in amount and rises in time: its first amount is its highest, its last
        # entry the latest to leave a window. Either bound alone puts every window's peak at `amount`.
        return window is None or not history or history[0][1] <= amount or history[-1][0] <= at - window

    def stale_watching(self, subject: BalanceKey) -> tuple[Rule, ...]:
        """The `stale` rules watching a poll subject (an account, or a whole source), in rule order."""
        whole_source = subject.account == WHOLE_SOURCE
        by_account = self._stale_scopes_name_accounts.get(subject.source)
        if by_account is None:
            by_account = self._stale_scopes_name_accounts[subject.source] = self._scopes_name_accounts(
                subject.source, balance_rules=False
            )
        cache_key = (subject.source, subject.account) if by_account else (subject.source, whole_source)
        found = self._stale.get(cache_key)
        if found is None:
            if len(self._stale) >= _KEY_CACHE_LIMIT:
                self._stale.clear()
            in_scope = tuple(
                index
                for index, c in enumerate(self._compiled)
                if not c.rule.watches_balances
                and (c.rule.per == "source") == whole_source
                and c.matches_key(subject)
            )
            found = self._shared_stale.setdefault(in_scope, tuple(self._compiled[i].rule for i in in_scope))
            self._stale[cache_key] = found
        return found

    def _scopes_name_accounts(self, source: str, *, balance_rules: bool) -> bool:
        """Whether a balance rule (or a stale rule) whose scope may take in `source`'s keys names accounts:
        only then can two keys of the source with one balance type be watched by different rules."""
        return any(
            c.account_test is not None and (c.source_test is None or bool(c.source_test(source)))
            for c in self._compiled
            if c.rule.watches_balances == balance_rules
        )

    def may_publish(self, firing: AlertState, at: datetime) -> bool:
        """Whether an alert that keeps firing unchanged may have something to publish (or to record)
        at `at`: it is withheld, its rule has mute windows, or a reminder is due."""
        if not firing.published or firing.muted or firing.suppressed_by is not None:
            return True
        if firing.rule in self.muted_names:
            return True
        repeat = self._repeats.get(firing.rule)
        return repeat is not None and at - (firing.last_sent_at or firing.started_at) >= repeat

    def suppressors_of(self, name: str) -> tuple[Rule, ...]:
        """The rules that list rule `name` in their `suppresses`."""
        return tuple(self._by_name[by].rule for by in self._suppressed_by.get(name, ()))

    def suppressor(self, rule: Rule, key: BalanceKey, at: datetime, firing: StateLookup) -> str | None:
        """The name of a rule suppressing `rule`'s alert on `key` at `at`: one listing it in `suppresses`
        that fires, unmuted, on the same key or source-wide on the key's source."""
        names = self._suppressed_by.get(rule.name)
        if not names:
            return None
        whole_source = subject_key(key.source)
        for name in names:
            state = firing(name, key)
            if (state is None or state.status != "firing") and key != whole_source:
                state = firing(name, whole_source)
            if state is None or state.status != "firing":
                continue
            suppressing = self._by_name[name].rule
            if not (suppressing.mute and is_muted(suppressing.mute, at)):
                return name
        return None


# Recently compiled rule tuples, by identity: a caller that keeps passing the same tuple to `assess`
# gets the compiled rules and their per-key cache without holding them itself. Tuples only, since
# they cannot change behind our back; each entry keeps its tuple alive, so an id is never reused.
_RECENT: dict[int, tuple[tuple[Rule, ...], CompiledRules]] = {}
_RECENT_LIMIT = 8


def compile_rules(rules: Sequence[Rule]) -> CompiledRules:
    """Compile rules for the engine; ValueError on duplicate names, a kind's missing parameters, or
    `suppresses` naming unknown rules or forming a cycle.

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
