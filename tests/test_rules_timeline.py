"""Time alone (`tick`) and rules reloads (`reconcile`): what they may and may not do to alerts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rules.compiled import fingerprint
from rules.model import Rule, Scope
from rules.timeline import REMOVED_REASON, reconcile, tick
from rules.types import IN_CREDIT, AlertState, Balance, BalanceKey, KnownBalance

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
