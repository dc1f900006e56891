"""Pure evaluation of observations: one observation, the last known balance and the key's alert states
in; what to publish and what to store out. No I/O, no clock: every time comes from the observation.

The daemon compiles its rules once per (re)load with `compile_rules` and calls `assess` per
observation; it publishes `change` and `transitions` and then stores `known` and `alerts`. Polls
(successful or not) go to rules.staleness.assess_poll, time passing to rules.timeline.tick, rules
reloads to rules.timeline.reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from rules.annotations import render_annotations
from rules.compiled import CompiledRule, CompiledRules, KeyWatch, compile_rules, fingerprint
from rules.conditions import History, Reading, remember
from rules.lifecycle import AlertTransition, Settled, TransitionStatus, settle, step
from rules.model import Rule
from rules.types import ACTIVE_STATUSES, AlertState, BalanceKey, KnownBalance, Observation

__all__ = [
    "AlertTransition",
    "Assessment",
    "BalanceChange",
    "CompiledRule",
    "CompiledRules",
    "KeyWatch",
    "TransitionStatus",
    "assess",
    "assess_in_full",
    "compile_rules",
    "fingerprint",
    "order_settled",
    "quiet_when_unchanged",
]

_STATUS_ORDER: Mapping[str | None, int] = {"resolved": 0, "firing": 1, "repeat": 2, None: 3}


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """A balance seen for the first time (`previous` None) or different from the last known one.

    `version` is the key's change counter after this change: 1 on first sight.
    """

    observation: Observation
    previous: KnownBalance | None
    version: int


@dataclass(frozen=True, slots=True)
class Assessment:
    """Everything one observation leads to.

    `known` is what to store for the key; `alerts` the alert states to write (new or changed), pending
    ones included; `transitions` what to publish (pending is never published).
    """

    key: BalanceKey
    change: BalanceChange | None
    known: KnownBalance
    transitions: tuple[AlertTransition, ...]
    alerts: tuple[AlertState, ...]


def order_settled(settled: list[Settled], rules: CompiledRules) -> list[Settled]:
    """Resolves first, then firings, then reminders, then silent state changes; each in rule order."""
    return sorted(settled, key=lambda s: (_STATUS_ORDER[s.status], rules.order(s.rule.name)))


def _stored(observation: Observation, known: KnownBalance | None, rules: CompiledRules) -> KnownBalance:
    """The KnownBalance to store after this observation (`known` itself when nothing changed)."""
    balance = observation.balance
    if known is not None and known.balance.same_as(balance):
        if observation.description is not None and observation.description != known.description:
            # Same money, renamed account: keep the balance as published and its version.
            return replace(known, description=observation.description)
        # Unchanged: the stored balance stays exactly as last published, the `previous` of the next change.
        return known
    history: History = ()
    if known is not None and known.balance.currency == balance.currency:
        history = remember(
            known.history, known.balance.signed_amount, observation.observed_at, rules.history_window
        )
    description = observation.description
    if description is None and known is not None:
        description = known.description
    version = 1 if known is None else known.version + 1
    return KnownBalance(
        balance, observation.observed_at, observation.correlation_id, version, description, history
    )


def _evaluate(
    rules: CompiledRules,
    observation: Observation,
    known: KnownBalance | None,
    stored: KnownBalance,
    alerts: Mapping[str, AlertState],
) -> list[Settled]:
    key = observation.key
    balance = observation.balance
    amount = balance.signed_amount
    watch = rules.watching(key, balance.currency)
    # The key's states by rule name (not by fingerprint: that would hash every rule for every key).
    own = {s.rule: s for s in alerts.values() if s.key == key} if alerts else {}
    at = observation.observed_at
    # While no alert of the key is active and the amount is where every threshold rule is quiet,
    # only the other kinds can start to hold: the common case is two comparisons and a few tests.
    quiet = watch.quiet_low <= amount <= watch.quiet_high and not (
        own and any(s.active for s in own.values())
    )
    if quiet and not watch.others:
        return []
    reading = Reading(balance, amount, None if known is None else known.balance, stored.history, at)
    if quiet and not any(breached(reading) for _, breached, _ in watch.others):
        return []
    stepped: list[tuple[Rule, AlertState | None, AlertState]] = []
    for rule, breached, cleared in watch.watches:
        before = own.get(rule.name)
        if before is None:
            # No state yet: nothing to do unless the condition holds (the common case, without a call).
            created = step(None, rule, None, key, True, at) if breached(reading) else None
            if created is not None:
                stepped.append((rule, None, created))
            continue
        firing = before.status == "firing"
        holds = not cleared(reading) if firing else breached(reading)
        after = step(before, rule, None, key, holds, at)
        if after is not None and (after is not before or (firing and rules.may_publish(before, at))):
            stepped.append((rule, before, after))
    for state in own.values():
        if not state.active or state.rule in watch.names:
            continue
        # Active but no longer watched: the balance's currency changed, or the rule's scope did on
        # reload. Its condition no longer holds here. Alerts of rules that are gone, and `stale` alerts
        # (judged on polls), are not this function's call.
        compiled = rules.get(state.rule)
        if compiled is not None and compiled.rule.watches_balances:
            after = step(state, compiled.rule, None, key, False, at)
            if after is not None:
                stepped.append((compiled.rule, state, after))
    if not stepped:
        return []
    now_by_rule = {**own, **{after.rule: after for _, _, after in stepped}}

    def state_of(name: str, of: BalanceKey) -> AlertState | None:
        if of == key:
            return now_by_rule.get(name)
        # A source-wide alert, given along with the key's.
        return next((s for s in alerts.values() if s.rule == name and s.key == of), None)

    return settle(stepped, at, lambda rule, of: rules.suppressor(rule, of, at, state_of))


def _transition(
    settled: Settled,
    status: TransitionStatus,
    observation: Observation,
    known: KnownBalance | None,
    stored: KnownBalance,
) -> AlertTransition:
    rule, state = settled.rule, settled.after
    balance = observation.balance
    annotations: tuple[tuple[str, str], ...] = ()
    if rule.annotations:
        peak = None
        if rule.kind == "drop" and rule.window is not None:
            peak = Reading(
                balance, balance.signed_amount, None, stored.history, observation.observed_at
            ).peak_within(rule.window)
        annotations = render_annotations(
            rule,
            state.key,
            balance=balance,
            previous=None if known is None else known.balance,
            peak=peak,
            started_at=state.started_at,
        )
    return AlertTransition(status, rule, state, observation, observation.observed_at, balance, annotations)


def quiet_when_unchanged(
    key: BalanceKey,
    known: KnownBalance,
    at: datetime,
    rules: Sequence[Rule],
    alerts: Mapping[str, AlertState],
) -> bool:
    """True when observing `known.balance` again at `at` (same amount, currency, state and balance
    type; no new description) is sure to lead to nothing: no change, no alert state, no transition.
    `assess` then returns `known` and nothing else without evaluating a single rule.

    What it relies on, checked here on every call (nothing is assumed about earlier calls, so it stays
    exact across rules reloads, restarts and lost deliveries):
    - no alert of the key is pending or firing under a rule judged on balances: only an active alert
      can move on an unchanged balance (a pending one fires once `for` has elapsed; a firing one sends
      reminders, ends its mute window or suppression, resolves once `keep_firing_for` has passed, or
      resolves outright: a `change` alert on the next unchanged balance, a `drop` alert whose peak left
      the window). Active `stale` alerts (judged on polls) and alerts of removed rules do not count:
      `assess` leaves them alone;
    - no rule watching the key is breached now, which would create a pending or firing alert:
      `below` / `above` by the amount (the key's quiet range), `state` by the Mastercard state,
      `change` never (it moved by zero), `drop` only while an amount of the history higher than the
      balance is inside the longest window (this check is conservative: it may say False for a fall
      that does not meet the rule, and then `assess` evaluates the rules in full).

    With these rules unchanged since the key's last observation and no alert of the key active, an
    unchanged observation always passes, as far as `below`, `above`, `state` and `change` rules go
    (time-driven work, `for` and reminders of active alerts, is what rules.timeline.tick does every few
    seconds). A caller may therefore leave an unchanged observation out before building it when this
    says True for the rules and alert states it would be assessed with: a listing's parse does
    (watcher.poller, mastercard_accounts.ListingKeys.quiet), and assesses every other key.
    `alerts` is as for `assess`.
    """
    compiled = rules if type(rules) is CompiledRules else compile_rules(rules)
    return _quiet_when_unchanged(compiled, key, known, at, alerts)


def _quiet_when_unchanged(
    rules: CompiledRules,
    key: BalanceKey,
    known: KnownBalance,
    at: datetime,
    alerts: Mapping[str, AlertState],
) -> bool:
    if alerts:
        balance_rules = rules.balance_names
        for state in alerts.values():
            if state.status in ACTIVE_STATUSES and state.rule in balance_rules and state.key == key:
                return False
    return rules.quiet_when_unchanged(key, known.balance, known.history, at)


def assess(
    observation: Observation,
    known: KnownBalance | None,
    rules: Sequence[Rule],
    alerts: Mapping[str, AlertState],
) -> Assessment:
    """Compare an observation with the key's last known balance and evaluate the rules on it.

    `known` in the result is what to store: the new balance, version and drop history after a change,
    else the given `known` itself (the balance as last published, seen first at its `observed_at`).

    `alerts` maps fingerprint to the stored AlertState of this key (resolved ones carry the episode
    count). It may also hold the states of the key's whole source (`subject_key(source)`), so that a
    source-wide alert's suppression applies. Pass a `CompiledRules`, or the same tuple of rules every
    time (its compiled form is reused); any other sequence is compiled on every call.
    Transitions list resolves first, then firings, then reminders, each in rule order.

    Fast path: an observation equal to the known balance, for which `quiet_when_unchanged` holds,
    returns at once (the steady state of a listing, where nearly every balance is as last seen). Its
    result is the one `assess_in_full` computes.
    """
    compiled = rules if type(rules) is CompiledRules else compile_rules(rules)
    if (
        known is not None
        and known.balance.same_as(observation.balance)
        and observation.description in (None, known.description)
        and _quiet_when_unchanged(compiled, observation.key, known, observation.observed_at, alerts)
    ):
        return Assessment(observation.key, None, known, (), ())
    return assess_in_full(observation, known, compiled, alerts)


def assess_in_full(
    observation: Observation,
    known: KnownBalance | None,
    rules: Sequence[Rule],
    alerts: Mapping[str, AlertState],
) -> Assessment:
    """`assess` without its fast path for unchanged observations: every observation is compared and
    every rule watching the key is judged. The reference the fast path is tested against."""
    compiled = rules if isinstance(rules, CompiledRules) else compile_rules(rules)
    stored = _stored(observation, known, compiled)
    change = None
    if stored is not known and (known is None or stored.version != known.version):
        change = BalanceChange(observation, known, stored.version)
    settled = _evaluate(compiled, observation, known, stored, alerts)
    if not settled:
        return Assessment(observation.key, change, stored, (), ())
    ordered = order_settled(settled, compiled)
    transitions = tuple(
        _transition(s, s.status, observation, known, stored) for s in ordered if s.status is not None
    )
    states = tuple(s.after for s in ordered if s.changed)
    return Assessment(observation.key, change, stored, transitions, states)
