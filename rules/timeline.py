"""What time alone and rules reloads do to alerts: `tick` and `reconcile`. Pure: `now` is an argument.

`tick(now, ...)`, called every few seconds by the daemon, fires pending alerts whose `for` has elapsed,
makes subjects that stopped answering stale, publishes alerts whose mute window or suppression ended,
and sends `repeat` reminders. It never resolves anything: resolving needs an observation.

`reconcile(alerts, new_rules, now, old_rules=...)`, called when the rules are (re)loaded, resolves the
alerts of rules that are gone; alerts of rules that remain keep their state as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from rules.annotations import render_annotations
from rules.compiled import active_state_lookup, compile_rules
from rules.conditions import Reading
from rules.lifecycle import AlertTransition, Settled, settle, step
from rules.model import RULE_KINDS, SEVERITIES, Rule, RuleKind, Severity
from rules.staleness import resolve_listed, resolving, stale_transition, stale_verdicts
from rules.types import (
    ACTIVE_STATUSES,
    WHOLE_SOURCE,
    AlertState,
    BalanceKey,
    Freshness,
    KnownBalance,
    subject_key,
)

REMOVED_REASON = "the rule was removed from the rules files"


@dataclass(frozen=True, slots=True)
class AlertUpdate:
    """Transitions to publish and alert states to store (publish first, then store)."""

    transitions: tuple[AlertTransition, ...] = ()
    alerts: tuple[AlertState, ...] = ()


def _balance_transition(settled: Settled, at: datetime, known: KnownBalance | None) -> AlertTransition:
    assert settled.status is not None
    rule, state = settled.rule, settled.after
    balance = None if known is None else known.balance
    annotations: tuple[tuple[str, str], ...] = ()
    if rule.annotations:
        peak = None
        if known is not None and rule.kind == "drop" and rule.window is not None:
            amount = known.balance.signed_amount
            peak = Reading(known.balance, amount, None, known.history, at).peak_within(rule.window)
        annotations = render_annotations(
            rule, state.key, balance=balance, peak=peak, reason=state.reason, started_at=state.started_at
        )
    return AlertTransition(settled.status, rule, state, None, at, balance, annotations)


def tick(
    now: datetime,
    rules: Sequence[Rule],
    alerts: Iterable[AlertState],
    freshness: Iterable[Freshness] = (),
    balances: Mapping[BalanceKey, KnownBalance] | None = None,
    *,
    stored: Callable[[BalanceKey], Mapping[str, AlertState]] | None = None,
    freshness_of: Callable[[BalanceKey], Freshness | None] | None = None,
    listed_of: Callable[[str], Collection[str]] | None = None,
) -> AlertUpdate:
    """Move every alert on by time alone, up to `now`.

    `alerts` are every stored alert state (resolved ones too: they carry the episode counts),
    `freshness` every stored Freshness, `balances` the known balances (optional: they fill in the
    balance and the annotations of the transitions; only looked up for the transitions, with `get`).

    A caller that indexes its states may pass only the active (pending and firing) ones as `alerts`,
    or only those of some keys (a slice: all the active states of each of its keys; the suppressors
    of other keys are then read through `stored`), with `stored`, the look-up of all the states of one
    key (resolved ones included), and
    `freshness_of`, the look-up of one subject's record: then nothing is walked but the active states
    and the freshness records. Without them, both are indexed from `alerts` and `freshness`. A caller
    that also passes `listed_of` (the accounts of a source whose records are listed) may leave the
    listed records out of `freshness`: they are looked up only when their source's last listing is due.

    Cost: one pass over `alerts` (two tests per state) and, with stale rules, one comparison per
    freshness record; only active alerts and subjects due for the shortest `after` (or revoked) are
    stepped.
    """
    compiled = compile_rules(rules)
    stale_names = compiled.stale_names
    alerts = alerts if isinstance(alerts, (list, tuple)) else list(alerts)
    records = freshness if isinstance(freshness, (list, tuple)) else list(freshness)
    by_key: dict[BalanceKey, dict[str, AlertState]] = {}
    if stored is None:  # every state was given: index them by key
        for state in alerts:
            by_key.setdefault(state.key, {})[state.fingerprint] = state
    if freshness_of is None:
        freshness_of = {record.subject: record for record in records}.get
    record_of_stored = resolving(freshness_of)
    if listed_of is None:  # every record was given: index the listed ones by source
        listed: dict[str, set[str]] = {}
        for record in records:
            if record.listed:
                listed.setdefault(record.subject.source, set()).add(record.subject.account)
        listed_of = lambda source: listed.get(source, ())  # noqa: E731

    def stale_of(subject: BalanceKey) -> dict[str, AlertState]:
        states = by_key.get(subject, {}) if stored is None else stored(subject)
        return {fp: a for fp, a in states.items() if a.rule in stale_names}

    current: dict[tuple[str, BalanceKey], AlertState] = {}
    active: list[AlertState] = []
    for state in alerts:
        if state.status in ACTIVE_STATUSES:
            active.append(state)
            current[(state.rule, state.key)] = state

    stepped: list[tuple[Rule, AlertState | None, AlertState]] = []
    due: dict[BalanceKey, Freshness] = {}
    shortest = compiled.shortest_stale_after
    if stale_names:
        # Fresh for every stale rule: answered after the cutoff and not revoked. One comparison for the
        # common case; no per-record work beyond it.
        cutoff = None if shortest is None else now - shortest
        for record in records:
            if record.listed:
                continue  # reached below through its source, if that is due
            if cutoff is not None and not record.access_revoked:
                since = record.last_success_at or record.watched_since
                if since > cutoff:
                    continue
            due[record.subject] = record
            stepped += stale_verdicts(compiled, record, now, stale_of)
        for of_source in [r for r in records if r.subject.account == WHOLE_SOURCE]:
            listed_at = of_source.last_listing_at
            if listed_at is None or (cutoff is not None and listed_at > cutoff):
                continue  # listed in a listing answered since the cutoff: fresh (never revoked)
            source = of_source.subject.source
            for account in list(listed_of(source)):
                record = freshness_of(subject_key(source, account))
                if record is None or not record.listed:
                    continue
                record = resolve_listed(record, listed_at)
                due[record.subject] = record
                stepped += stale_verdicts(compiled, record, now, stale_of)
    done = {after.fingerprint for _, _, after in stepped}
    for state in active:
        if state.fingerprint in done:
            continue
        compiled_rule = compiled.get(state.rule)
        if compiled_rule is None:
            continue  # its rule is gone: `reconcile` resolves it
        if compiled_rule.rule.watches_balances and not compiled_rule.matches_key(state.key):
            continue  # a reload moved the rule's scope away: the next observation resolves it
        after = step(state, compiled_rule.rule, state.fingerprint, state.key, None, now)
        if after is not None and (after is not state or compiled.may_publish(after, now)):
            stepped.append((compiled_rule.rule, state, after))
    if not stepped:
        return AlertUpdate()
    current.update({(after.rule, after.key): after for _, _, after in stepped})

    stored_state_of = None if stored is None else active_state_lookup(stored)

    def state_of(name: str, key: BalanceKey) -> AlertState | None:
        found = current.get((name, key))
        if found is not None or stored_state_of is None:
            return found
        # Not among the states given (a caller that ticks a slice of the keys at a time): as stored.
        return stored_state_of(name, key)

    def record_of(subject: BalanceKey) -> Freshness | None:
        # A due subject's record, else (a reminder of a stale alert whose subject is fresh again) the
        # stored one.
        return due.get(subject) or record_of_stored(subject)

    settled = settle(stepped, now, lambda rule, key: compiled.suppressor(rule, key, now, state_of))
    settled.sort(key=lambda s: (compiled.order(s.rule.name), s.after.key.source, s.after.key.account))
    transitions: list[AlertTransition] = []
    for item in settled:
        if item.status is None:
            continue
        if item.rule.kind == "stale":
            transitions.append(stale_transition(item, now, record_of(item.after.key)))
        else:
            known = None if balances is None else balances.get(item.after.key)
            transitions.append(_balance_transition(item, now, known))
    return AlertUpdate(tuple(transitions), tuple(s.after for s in settled if s.changed))


def _stand_in(state: AlertState) -> Rule:
    """A rule for the resolve of an alert whose rule is gone and was not given: its kind and severity
    as the state recorded them."""
    kind: RuleKind = next((k for k in RULE_KINDS if k == state.kind), "below")
    severity: Severity = next((s for s in SEVERITIES if s == state.severity), "warning")
    return Rule(state.rule, kind, severity=severity, description=REMOVED_REASON)


def reconcile(
    alerts: Iterable[AlertState],
    new_rules: Sequence[Rule],
    now: datetime,
    *,
    old_rules: Sequence[Rule] = (),
    balances: Mapping[BalanceKey, KnownBalance] | None = None,
) -> AlertUpdate:
    """After a rules (re)load: resolve the alerts of rules no longer in `new_rules` (a firing one
    publishes its resolve if its firing was published; a pending one just stops). Alerts of rules that
    remain are untouched: they keep firing, pending or resolved as they were, with their clocks.

    `old_rules` are the rules in force before (the resolve events describe the rule from them; else
    from the kind and severity the state recorded). Call it at start too, with the stored states.
    """
    names = {rule.name for rule in new_rules}
    previous = {rule.name: rule for rule in old_rules}
    transitions: list[AlertTransition] = []
    changed: list[AlertState] = []
    for state in alerts:
        if state.rule in names or not state.active:
            continue
        if state.status == "pending":
            changed.append(replace(state, status="inactive", pending_since=None))
            continue
        resolved = replace(
            state,
            status="resolved",
            resolved_at=now,
            cleared_since=None,
            muted=False,
            suppressed_by=None,
            reason=REMOVED_REASON,
        )
        changed.append(resolved)
        if state.published:
            rule = previous.get(state.rule) or _stand_in(state)
            known = None if balances is None else balances.get(state.key)
            balance = None if known is None else known.balance
            transitions.append(AlertTransition("resolved", rule, resolved, None, now, balance))
    return AlertUpdate(tuple(transitions), tuple(changed))
