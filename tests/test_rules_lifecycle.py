"""The alert lifecycle: inactive -> pending -> firing -> resolved with `for` and `keep_firing_for`,
what is published when (reminders, mute windows, suppression), and that the stored state is enough
to carry on after a restart."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from rules.compiled import compile_rules, fingerprint
from rules.engine import assess
from rules.lifecycle import AlertTransition, publish, step
from rules.model import Rule
from rules.schedule import parse_mute
from rules.timeline import tick
from rules.types import IN_CREDIT, AlertState, Balance, BalanceKey, KnownBalance, Observation

KEY = BalanceKey("mc-gbp", "acct-1")
T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)  # a Monday
MIN = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def below(name: str = "low", threshold: str = "5000", **values: object) -> Rule:
    return Rule(name, "below", Decimal(threshold), **values)  # type: ignore[arg-type]


def state(status: str, **values: object) -> AlertState:
    """A stored state of rule "low" on KEY, started at T0, episode 1."""
    base = AlertState(fingerprint("low", KEY), "low", KEY, "firing", 1, T0, pending_since=T0, last_sent_at=T0)
    return replace(base, status=status, **values)  # type: ignore[arg-type]


# -- step: every transition of the state machine ----------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "before", "holds", "when", "expected"),
    [
        # inactive: nothing holds -> nothing; holds -> firing at once without `for`, else pending
        (below(), None, False, at(0), None),
        (below(), None, None, at(0), None),
        (below(), None, True, at(0), "firing"),
        (below(for_duration=5 * MIN), None, True, at(0), "pending"),
        (below(for_duration=5 * MIN), state("resolved", resolved_at=T0), True, at(1), "pending"),
        (below(for_duration=5 * MIN), state("inactive"), True, at(1), "pending"),
        # pending: still holds before `for` -> pending; at `for` -> firing; stops -> inactive
        (below(for_duration=5 * MIN), state("pending"), True, at(4), "pending"),
        (below(for_duration=5 * MIN), state("pending"), True, at(5), "firing"),
        (below(for_duration=5 * MIN), state("pending"), False, at(4), "inactive"),
        # pending and time alone: fires once `for` has elapsed (the balance stays as last seen)
        (below(for_duration=5 * MIN), state("pending"), None, at(4), "pending"),
        (below(for_duration=5 * MIN), state("pending"), None, at(5), "firing"),
        # firing: holds -> firing; clears -> resolved, or only after keep_firing_for
        (below(), state("firing"), True, at(3), "firing"),
        (below(), state("firing"), False, at(3), "resolved"),
        (below(), state("firing"), None, at(300), "firing"),
        (below(keep_firing_for=10 * MIN), state("firing"), False, at(3), "firing"),
        (below(keep_firing_for=10 * MIN), state("firing", cleared_since=at(3)), False, at(12), "firing"),
        (below(keep_firing_for=10 * MIN), state("firing", cleared_since=at(3)), False, at(13), "resolved"),
        (below(keep_firing_for=10 * MIN), state("firing", cleared_since=at(3)), None, at(60), "firing"),
        # resolved stays resolved while nothing holds
        (below(), state("resolved", resolved_at=T0), False, at(3), "resolved"),
    ],
)
def test_step(
    rule: Rule, before: AlertState | None, holds: bool | None, when: datetime, expected: str | None
) -> None:
    """Each (status, verdict, time) gives the documented next status; time alone (verdict None) can
    fire a pending alert but never resolves anything."""
    after = step(before, rule, fingerprint(rule.name, KEY), KEY, holds, when)
    assert (None if after is None else after.status) == expected


def test_pending_keeps_its_clock_and_firing_counts_the_episode() -> None:
    """A pending alert fires with the next episode, started when it fired, its `for` clock kept."""
    rule = below(for_duration=5 * MIN)
    pending = step(
        state("resolved", episode=3, resolved_at=T0), rule, fingerprint("low", KEY), KEY, True, at(1)
    )
    assert pending is not None
    assert (pending.status, pending.pending_since, pending.episode) == ("pending", at(1), 3)
    assert (pending.started_at, pending.resolved_at) == (at(1), None)
    fired = step(pending, rule, pending.fingerprint, KEY, True, at(6))
    assert fired is not None
    assert (fired.status, fired.episode, fired.started_at, fired.pending_since) == ("firing", 4, at(6), at(1))
    assert fired.resolved_at is None


def test_pending_state_from_an_older_store_keeps_its_clock() -> None:
    """A store that does not keep pending_since yet reads a pending state without it; its started_at
    (when it became pending) keeps the `for` clock running."""
    rule = below(for_duration=5 * MIN)
    pending = AlertState(fingerprint("low", KEY), "low", KEY, "pending", 0, at(1))
    assert step(pending, rule, None, KEY, True, at(5)) is pending
    fired = step(pending, rule, None, KEY, None, at(6))
    assert fired is not None
    assert (fired.status, fired.pending_since, fired.started_at) == ("firing", at(1), at(6))


def test_condition_back_while_keep_firing_resets_the_clock() -> None:
    """A firing alert whose condition returns within keep_firing_for keeps firing, clock reset."""
    rule = below(keep_firing_for=10 * MIN)
    before = state("firing", cleared_since=at(3))
    after = step(before, rule, before.fingerprint, KEY, True, at(5))
    assert after is not None
    assert (after.status, after.cleared_since) == ("firing", None)


def test_unchanged_state_is_the_same_object() -> None:
    """When nothing changes, step returns the state given, so nothing needs storing."""
    before = state("firing")
    assert step(before, below(), before.fingerprint, KEY, True, at(1)) is before


def test_immediate_skips_for() -> None:
    """A verdict marked immediate (access revoked) fires without waiting for `for`."""
    after = step(None, below(for_duration=60 * MIN), "fp", KEY, True, at(0), immediate=True)
    assert after is not None
    assert after.status == "firing"


# -- publish: what on-call sees --------------------------------------------------------------------


NIGHTLY = parse_mute([{"from": "01:00", "to": "02:00", "timezone": "Europe/London"}])
MUTED_AT = datetime(2024, 5, 6, 0, 30, tzinfo=UTC)  # 01:30 in London (BST)


@pytest.mark.parametrize(
    ("rule", "before", "after", "when", "suppressed_by", "status", "published"),
    [
        # a new firing publishes, unless muted or suppressed
        (below(), None, state("firing", published=False, last_sent_at=None), T0, None, "firing", True),
        (below(mute=NIGHTLY), None, state("firing", published=False), MUTED_AT, None, None, False),
        (below(), None, state("firing", published=False), T0, "crit", None, False),
        # a withheld firing publishes once no longer withheld
        (
            below(mute=NIGHTLY),
            state("firing", published=False),
            state("firing", published=False),
            MUTED_AT + 60 * MIN,
            None,
            "firing",
            True,
        ),
        (
            below(),
            state("firing", published=False),
            state("firing", published=False),
            at(5),
            "crit",
            None,
            False,
        ),
        # reminders: every `repeat` while firing and not withheld
        (below(repeat=60 * MIN), state("firing"), state("firing"), at(59), None, None, True),
        (below(repeat=60 * MIN), state("firing"), state("firing"), at(60), None, "repeat", True),
        (below(repeat=60 * MIN), state("firing"), state("firing"), at(60), "crit", None, True),
        (below(), state("firing"), state("firing"), at(600), None, None, True),
        # resolves publish only what was published
        (below(), state("firing"), state("resolved", resolved_at=at(3)), at(3), None, "resolved", True),
        (
            below(),
            state("firing", published=False),
            state("resolved", resolved_at=at(3), published=False),
            at(3),
            None,
            None,
            False,
        ),
        # pending and inactive are never published
        (below(), None, state("pending"), at(0), None, None, True),
        (below(), state("pending"), state("inactive"), at(1), None, None, True),
    ],
)
def test_publish(
    rule: Rule,
    before: AlertState | None,
    after: AlertState,
    when: datetime,
    suppressed_by: str | None,
    status: str | None,
    published: bool,
) -> None:
    """Firings publish unless muted or suppressed, and late when that ends; reminders come every
    `repeat` while not withheld; a resolve is published exactly when its firing was; pending never."""
    final, got = publish(before, after, rule, when, suppressed_by)
    assert got == status
    assert final.published is published


def test_publishing_records_when_and_how_often() -> None:
    """A published firing records last_sent_at; each reminder counts up `repeats` (for its event id)."""
    rule = below(repeat=60 * MIN)
    first, _ = publish(None, state("firing", published=False, last_sent_at=None), rule, at(0), None)
    assert (first.last_sent_at, first.repeats) == (at(0), 0)
    second, status = publish(first, first, rule, at(61), None)
    assert (status, second.last_sent_at, second.repeats) == ("repeat", at(61), 1)
    third, status = publish(second, second, rule, at(121), None)
    assert (status, third.repeats) == ("repeat", 2)


def test_withholding_is_recorded() -> None:
    """A withheld alert records why: muted, or the name of the rule suppressing it."""
    muted, _ = publish(None, state("firing", published=False), below(mute=NIGHTLY), MUTED_AT, None)
    assert (muted.muted, muted.suppressed_by) == (True, None)
    suppressed, _ = publish(None, state("firing", published=False), below(), T0, "crit")
    assert (suppressed.muted, suppressed.suppressed_by) == (False, "crit")


# -- through the engine: observations and ticks -------------------------------------------------------


class Ledger:
    """The daemon's part, in memory: runs observations and ticks through the engine, stores what it
    says to store, and keeps every published transition."""

    def __init__(self, rules: list[Rule], key: BalanceKey = KEY) -> None:
        self.rules = compile_rules(rules)
        self.key = key
        self.known: KnownBalance | None = None
        self.alerts: dict[str, AlertState] = {}
        self.published: list[AlertTransition] = []

    def observe(self, minutes: float, amount: str) -> list[tuple[str, str]]:
        observation = Observation(
            self.key,
            "mastercard-send",
            Balance(Decimal(amount), "GBP", IN_CREDIT),
            at(minutes),
            f"c{minutes}",
        )
        result = assess(observation, self.known, self.rules, self.alerts)
        self.known = result.known
        return self._keep(result.transitions, result.alerts)

    def tick(self, minutes: float) -> list[tuple[str, str]]:
        update = tick(at(minutes), self.rules, list(self.alerts.values()))
        return self._keep(update.transitions, update.alerts)

    def _keep(
        self, transitions: tuple[AlertTransition, ...], alerts: tuple[AlertState, ...]
    ) -> list[tuple[str, str]]:
        self.published += transitions
        self.alerts.update({a.fingerprint: a for a in alerts})
        return [(t.status, t.rule.name) for t in transitions]

    def status(self, name: str) -> str:
        return self.alerts[fingerprint(name, self.key)].status


def test_for_holds_the_alert_pending_then_fires_on_time() -> None:
    """With `for`, a breach is pending (stored, not published) and fires once it has lasted `for`,
    by a later observation or by a tick."""
    ledger = Ledger([below(for_duration=5 * MIN)])
    assert ledger.observe(0, "4000") == []
    assert ledger.status("low") == "pending"
    assert ledger.tick(4) == []
    assert ledger.tick(5) == [("firing", "low")]
    (fired,) = ledger.published
    assert fired.trigger is None
    assert fired.at == at(5)
    assert fired.state.started_at == at(5)


def test_for_restarts_when_the_condition_breaks() -> None:
    """A pending alert whose condition stops before `for` goes back to inactive; the clock restarts."""
    ledger = Ledger([below(for_duration=5 * MIN)])
    ledger.observe(0, "4000")
    ledger.observe(3, "6000")
    assert ledger.status("low") == "inactive"
    ledger.observe(4, "4000")
    assert ledger.tick(8) == []
    assert ledger.tick(9) == [("firing", "low")]


def test_keep_firing_for_delays_the_resolve_until_an_observation() -> None:
    """With keep_firing_for, a cleared alert keeps firing; it resolves at the first observation after
    the condition has been clear that long, never on a tick."""
    ledger = Ledger([below(keep_firing_for=10 * MIN)])
    assert ledger.observe(0, "4000") == [("firing", "low")]
    assert ledger.observe(1, "6000") == []
    assert ledger.tick(30) == []
    assert ledger.status("low") == "firing"
    assert ledger.observe(31, "6000") == [("resolved", "low")]
    resolved = ledger.published[-1]
    assert resolved.firing_for == 31 * MIN
    assert resolved.state.resolved_at == at(31)


def test_repeat_reminds_while_firing() -> None:
    """`repeat` re-publishes a firing alert at its interval, same fingerprint and episode."""
    ledger = Ledger([below(repeat=60 * MIN)])
    ledger.observe(0, "4000")
    assert ledger.tick(59) == []
    assert ledger.tick(60) == [("repeat", "low")]
    assert ledger.observe(61, "4000") == []
    assert ledger.observe(120, "4000") == [("repeat", "low")]
    first, *reminders = ledger.published
    assert {t.state.fingerprint for t in ledger.published} == {first.state.fingerprint}
    assert [(t.state.episode, t.state.repeats, t.reminder) for t in reminders] == [(1, 1, True), (1, 2, True)]


def test_mute_window_withholds_and_publishes_on_unmute() -> None:
    """A firing during a mute window is stored but not published; it publishes when the window ends
    if still firing, as a delayed firing with its real start."""
    ledger = Ledger([below(mute=NIGHTLY)])
    ledger.key = KEY
    start = (MUTED_AT - T0).total_seconds() / 60
    assert ledger.observe(start, "4000") == []
    assert ledger.status("low") == "firing"
    assert ledger.tick(start + 29) == []
    assert ledger.tick(start + 30) == [("firing", "low")]
    (late,) = ledger.published
    assert late.delayed
    assert late.state.started_at == MUTED_AT


def test_alert_resolved_while_muted_is_never_published() -> None:
    """An alert that fires and resolves inside a mute window publishes nothing at all."""
    ledger = Ledger([below(mute=NIGHTLY)])
    start = (MUTED_AT - T0).total_seconds() / 60
    ledger.observe(start, "4000")
    assert ledger.observe(start + 10, "6000") == []
    assert ledger.status("low") == "resolved"
    assert ledger.tick(start + 60) == []


def test_critical_suppresses_warning_on_the_same_account() -> None:
    """While the critical alert fires, the warning it suppresses is evaluated but not published; it
    publishes when the critical resolves if it still fires."""
    ledger = Ledger([below("warn", "5000"), below("crit", "1000", suppresses=("warn",))])
    assert ledger.observe(0, "900") == [("firing", "crit")]
    assert ledger.alerts[fingerprint("warn", KEY)].suppressed_by == "crit"
    assert ledger.observe(1, "3000") == [("resolved", "crit"), ("firing", "warn")]
    assert ledger.observe(2, "6000") == [("resolved", "warn")]


def test_suppressed_alert_that_clears_with_its_suppressor_stays_silent() -> None:
    """A suppressed warning that resolves together with the critical is never published."""
    ledger = Ledger([below("warn", "5000"), below("crit", "1000", suppresses=("warn",))])
    ledger.observe(0, "900")
    assert ledger.observe(1, "9000") == [("resolved", "crit")]


def test_a_warning_already_published_is_not_repeated_when_suppressed() -> None:
    """A warning published before the critical fires stays as it is (no second firing, no resolve),
    and its reminders wait while the critical fires."""
    ledger = Ledger([below("warn", "5000", repeat=10 * MIN), below("crit", "1000", suppresses=("warn",))])
    assert ledger.observe(0, "4000") == [("firing", "warn")]
    assert ledger.observe(1, "900") == [("firing", "crit")]
    assert ledger.tick(30) == []
    assert ledger.observe(31, "3000") == [("resolved", "crit"), ("repeat", "warn")]


def test_a_muted_suppressor_does_not_suppress() -> None:
    """A critical alert inside its own mute window does not silence the warning: someone is paged."""
    ledger = Ledger([below("warn", "5000"), below("crit", "1000", suppresses=("warn",), mute=NIGHTLY)])
    start = (MUTED_AT - T0).total_seconds() / 60
    assert ledger.observe(start, "900") == [("firing", "warn")]
    assert ledger.tick(start + 30) == [("firing", "crit")]


def test_restart_keeps_pending_and_firing() -> None:
    """Everything the lifecycle needs is in the stored states: a new engine run with them neither
    fires a firing alert again nor forgets a pending one (its `for` clock keeps running)."""
    ledger = Ledger([below("warn", "5000"), below("slow", "5000", for_duration=10 * MIN)])
    ledger.observe(0, "4000")
    stored_alerts, stored_known = dict(ledger.alerts), ledger.known
    restarted = Ledger([below("warn", "5000"), below("slow", "5000", for_duration=10 * MIN)])
    restarted.alerts, restarted.known = stored_alerts, stored_known
    assert restarted.observe(3, "4000") == []
    assert restarted.tick(10) == [("firing", "slow")]


def test_annotations_are_rendered_into_the_transition() -> None:
    """A rule's annotations come with every published transition, placeholders filled in."""
    summary = "{account}@{source}: {amount} {currency} under {threshold} ({rule}, {severity})"
    ledger = Ledger([below(annotations=(("summary", summary),))])
    ledger.observe(0, "4000")
    ledger.observe(1, "6000")
    assert [dict(t.annotations)["summary"] for t in ledger.published] == [
        "acct-1@mc-gbp: 4000 GBP under 5000 (low, warning)",
        "acct-1@mc-gbp: 6000 GBP under 5000 (low, warning)",
    ]
