"""Time alone (`tick`) and rules reloads (`reconcile`): what they may and may not do to alerts."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.compiled import fingerprint
from rules.model import Rule, Scope
from rules.timeline import REMOVED_REASON, reconcile, tick
from rules.types import ACTIVE_STATUSES, IN_CREDIT, AlertState, Balance, BalanceKey, KnownBalance

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
KEY = BalanceKey("mc-gbp", "acct-1")
LATER = T0 + timedelta(hours=5)


def below(name: str, **values: object) -> Rule:
    return Rule(name, "below", Decimal(5000), **values)  # type: ignore[arg-type]


def alert(rule: str, status: str, **values: object) -> AlertState:
    base = AlertState(fingerprint(rule, KEY), rule, KEY, "firing", 1, T0, pending_since=T0, last_sent_at=T0)
    return replace(base, status=status, **values)  # type: ignore[arg-type]


def test_tick_never_resolves() -> None:
    """However long a firing alert waits, with or without keep_firing_for, time alone resolves nothing."""
    rules = [below("a"), below("b", keep_firing_for=timedelta(minutes=1))]
    states = [alert("a", "firing"), alert("b", "firing", cleared_since=T0)]
    update = tick(LATER, rules, states)
    assert (update.transitions, update.alerts) == ((), ())


def test_tick_leaves_alerts_of_unknown_rules_alone() -> None:
    """Pending or firing alerts whose rule is not loaded are reconcile's business, not the tick's."""
    update = tick(LATER, [below("other")], [alert("gone", "pending"), alert("gone2", "firing")])
    assert update.transitions == ()
    assert update.alerts == ()


def test_tick_does_not_fire_alerts_out_of_their_rules_scope() -> None:
    """A pending alert whose rule a reload scoped away from its key does not fire on time alone."""
    rule = Rule(
        "slow", "below", Decimal(5000), scope=Scope(source="mypos-*"), for_duration=timedelta(minutes=5)
    )
    pending = AlertState(fingerprint("slow", KEY), "slow", KEY, "pending", 0, T0, pending_since=T0)
    assert tick(LATER, [rule], [pending]).transitions == ()


def test_tick_fills_in_the_balance_and_annotations_from_known_balances() -> None:
    """A firing published by time alone carries the last known balance and rendered annotations."""
    rule = below("slow", for_duration=timedelta(minutes=5), annotations=(("summary", "{amount} {currency}"),))
    known = KnownBalance(Balance(Decimal("4000"), "GBP", IN_CREDIT), T0, "c", 2)
    pending = AlertState(fingerprint("slow", KEY), "slow", KEY, "pending", 0, T0, pending_since=T0)
    (transition,) = tick(LATER, [rule], [pending], balances={KEY: known}).transitions
    assert (transition.status, transition.balance, transition.at) == ("firing", known.balance, LATER)
    assert transition.annotations == (("summary", "4000 GBP"),)


def test_reconcile_resolves_alerts_of_removed_rules() -> None:
    """After a reload, a firing alert of a removed rule resolves (published, described by the old rule);
    a pending one just stops; alerts of rules that remain keep their state untouched."""
    old = [below("kept"), below("removed", severity="critical"), below("removed-pending")]
    states = [
        alert("kept", "firing"),
        alert("removed", "firing"),
        alert("removed-pending", "pending"),
        alert("kept-resolved", "resolved", resolved_at=T0),
    ]
    update = reconcile(states, [below("kept"), below("kept-resolved")], LATER, old_rules=old)
    (transition,) = update.transitions
    assert transition.status == "resolved"
    assert transition.rule == old[1]
    assert transition.state.resolved_at == LATER
    assert transition.state.reason == REMOVED_REASON
    assert transition.firing_for == timedelta(hours=5)
    assert {(s.rule, s.status) for s in update.alerts} == {
        ("removed", "resolved"),
        ("removed-pending", "inactive"),
    }


def test_reconcile_of_an_unpublished_alert_is_silent() -> None:
    """A removed rule's alert that was withheld (muted, suppressed) resolves without an event."""
    update = reconcile([alert("gone", "firing", published=False)], [], LATER)
    assert update.transitions == ()
    assert [s.status for s in update.alerts] == ["resolved"]


def test_reconcile_without_the_old_rule_uses_what_the_state_recorded() -> None:
    """At start-up the old rules are unknown: the resolve describes the rule by the kind and severity
    its state recorded."""
    state = alert("gone", "firing", kind="drop", severity="critical")
    (transition,) = reconcile([state], [], LATER).transitions
    assert (transition.rule.name, transition.rule.kind, transition.rule.severity) == (
        "gone",
        "drop",
        "critical",
    )
    assert transition.rule.description == REMOVED_REASON


def test_reconcile_keeps_everything_when_no_rule_is_removed() -> None:
    """Reloading the same rules changes nothing: no transition, nothing to store."""
    rules = [below("a"), below("b")]
    update = reconcile([alert("a", "firing"), alert("b", "pending")], rules, LATER, old_rules=rules)
    assert (update.transitions, update.alerts) == ((), ())


# --- the daemon's alert clock ticks a slice of the keys at a time ---------------------------------------

SLICE_RULES = [
    below("low", for_duration=timedelta(minutes=10), repeat=timedelta(minutes=30)),
    Rule("critical", "below", Decimal(50), severity="critical", for_duration=timedelta(minutes=5),
         suppresses=("low",)),
    Rule("account-stale", "stale", after=timedelta(minutes=15), for_duration=timedelta(minutes=5)),
    Rule("source-down", "stale", after=timedelta(minutes=15), per="source", suppresses=("account-stale",)),
]
SLICE_STATES = st.sampled_from([None, "pending", "firing"])


def _state(rule: str, key: BalanceKey, status: str, minutes: int) -> AlertState:
    at = LATER - timedelta(minutes=minutes)
    return AlertState(fingerprint(rule, key), rule, key, status, 1, at, pending_since=at,  # type: ignore[arg-type]
                      last_sent_at=at if status == "firing" else None, published=status == "firing")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(SLICE_STATES, SLICE_STATES, SLICE_STATES, st.integers(0, 40)), min_size=1,
             max_size=12),
    st.sampled_from([None, "pending", "firing"]),
    st.integers(1, 5),
    st.randoms(use_true_random=False),
)
def test_a_tick_in_slices_of_keys_equals_one_tick(
    accounts: list[tuple[str | None, str | None, str | None, int]],
    source_down: str | None,
    size: int,
    shuffle: random.Random,
) -> None:
    """Ticking the keys a slice at a time, each slice's states stored before the next is read, and the
    sources' own keys first, ends with the same states and publishes the same transitions as one tick
    over every key: suppressors in an earlier slice (a source-wide stale alert over its accounts' ones)
    are read as stored."""
    store: dict[BalanceKey, dict[str, AlertState]] = {}
    for i, (low, critical, stale_state, minutes) in enumerate(accounts):
        key = BalanceKey("mc-gbp", f"acct-{i}")
        for rule, status in (("low", low), ("critical", critical), ("account-stale", stale_state)):
            if status is not None:
                store.setdefault(key, {})[fingerprint(rule, key)] = _state(rule, key, status, minutes)
    if source_down is not None:
        whole = BalanceKey("mc-gbp", "*")
        store[whole] = {fingerprint("source-down", whole): _state("source-down", whole, source_down, 20)}
    active = [s for by_fp in store.values() for s in by_fp.values() if s.status in ACTIVE_STATUSES]

    whole_tick = tick(LATER, SLICE_RULES, active, stored=lambda k: store.get(k, {}))
    expected = {k: dict(v) for k, v in store.items()}
    for state in whole_tick.alerts:
        expected.setdefault(state.key, {})[state.fingerprint] = state

    sliced = {k: dict(v) for k, v in store.items()}
    keys = list(dict.fromkeys(s.key for s in active))
    shuffle.shuffle(keys)
    keys.sort(key=lambda key: key.account != "*")  # as the daemon does: a source's own alerts first
    transitions = []
    for start in range(0, len(keys), size):
        states = [s for k in keys[start:start + size] for s in sliced.get(k, {}).values()
                  if s.status in ACTIVE_STATUSES]
        update = tick(LATER, SLICE_RULES, states, stored=lambda k: sliced.get(k, {}))
        for state in update.alerts:
            sliced.setdefault(state.key, {})[state.fingerprint] = state
        transitions += update.transitions
    assert sliced == expected
    assert sorted(map(repr, transitions)) == sorted(map(repr, whole_tick.transitions))
