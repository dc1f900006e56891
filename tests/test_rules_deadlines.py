"""When time alone can next change a key's alerts (`next_due`, `listing_due`), and the schedule the alert
clock keeps with them (`TickSchedule`): visiting only the keys that are due or changed must give exactly
what a tick over every key gives."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.compiled import active_state_lookup, compile_rules, fingerprint
from rules.deadlines import TickSchedule, listing_due, next_due
from rules.lifecycle import AlertTransition
from rules.model import Rule
from rules.schedule import parse_mute
from rules.staleness import assess_poll, resolving, stale_reason
from rules.timeline import tick
from rules.types import ACTIVE_STATUSES, AlertState, BalanceKey, Freshness, PollOutcome, subject_key

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
SOURCE = "mc-gbp"
KEY = subject_key(SOURCE, "acct-1")
WHOLE = subject_key(SOURCE)
MINUTE = timedelta(minutes=1)

RULES = compile_rules([
    Rule("low", "below", Decimal(5000), for_duration=10 * MINUTE, repeat=30 * MINUTE),
    Rule("critical", "below", Decimal(50), severity="critical", suppresses=("low",)),
    Rule("overdrawn", "state", state="IN_DEBIT", mute=parse_mute({"from": "01:00", "to": "02:00"})),
    Rule("account-stale", "stale", after=15 * MINUTE, for_duration=5 * MINUTE),
    Rule("account-stale-long", "stale", after=2 * 60 * MINUTE, repeat=60 * MINUTE),
    Rule("source-down", "stale", after=15 * MINUTE, per="source", suppresses=("account-stale",)),
])


def no_states(name: str, key: BalanceKey) -> AlertState | None:
    return None


def firing(rule: str, key: BalanceKey = KEY, **values: object) -> AlertState:
    base = AlertState(fingerprint(rule, key), rule, key, "firing", 1, T0, pending_since=T0, published=True,
                      last_sent_at=T0)
    return replace(base, **values)  # type: ignore[arg-type]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- next_due, case by case -------------------------------------------------------------------------------


def test_a_published_firing_alert_without_reminders_is_never_due() -> None:
    """A firing alert nothing withholds, whose rule sends no reminders, waits for an observation."""
    assert next_due(RULES, KEY, [firing("critical")], None, at(5), no_states) is None


def test_a_pending_alert_is_due_when_its_for_elapses() -> None:
    """A pending alert is due the moment its `for` has elapsed since it became pending."""
    pending = firing("low", status="pending", published=False, pending_since=at(3), started_at=at(3))
    assert next_due(RULES, KEY, [pending], None, at(5), no_states) == at(13)


def test_a_reminder_is_due_repeat_after_the_last_one_sent() -> None:
    """A firing alert whose rule repeats is due `repeat` after its latest firing or reminder."""
    assert next_due(RULES, KEY, [firing("low", last_sent_at=at(20))], None, at(25), no_states) == at(50)


def test_withheld_or_muted_alerts_are_due_at_every_tick() -> None:
    """An unpublished firing that nothing withholds any more, or a rule with mute windows: every tick."""
    assert next_due(RULES, KEY, [firing("critical", published=False)], None, at(5), no_states) == at(5)
    assert next_due(RULES, KEY, [firing("overdrawn")], None, at(5), no_states) == at(5)


def test_a_suppressed_alert_waits_for_its_suppressor() -> None:
    """An alert withheld by a firing suppressor is not due by time; once the suppressor no longer fires
    (as looked up), it is due at once."""
    held = firing("low", published=False, suppressed_by="critical")
    critical = firing("critical")
    critical_fires = lambda name, key: critical if name == "critical" else None  # noqa: E731
    assert next_due(RULES, KEY, [held, critical], None, at(5), critical_fires) is None
    assert next_due(RULES, KEY, [held], None, at(5), no_states) == at(5)


def test_a_fresh_record_is_due_when_it_turns_stale_for_each_rule() -> None:
    """A subject that answered is due `after` later, for the shortest rule first; once that rule's alert
    fires for the same reason, for the next rule."""
    record = Freshness(KEY, at(0), last_success_at=at(10))
    assert next_due(RULES, KEY, [], record, at(12), no_states) == at(25)
    stale = firing("account-stale", reason=stale_reason(RULES.get("account-stale").rule, record))  # type: ignore[union-attr]
    assert next_due(RULES, KEY, [stale], record, at(30), no_states) == at(130)
    other_reason = replace(stale, reason="no successful poll since long ago")
    assert next_due(RULES, KEY, [other_reason], record, at(30), no_states) == at(25)


def test_a_revoked_subject_is_due_at_once_until_its_alerts_fire() -> None:
    """Revoked access makes every stale rule due now, until its alert carries the revocation and fires: a
    pending one with that very reason is due at once too, as a revocation fires whatever is left of its
    `for` (found by the property below)."""
    record = Freshness(KEY, at(0), last_success_at=at(10), last_error="consent expired", access_revoked=True)
    assert next_due(RULES, KEY, [], record, at(12), no_states) == at(12)
    only = compile_rules([Rule("account-stale", "stale", after=15 * MINUTE, for_duration=5 * MINUTE)])
    reason = stale_reason(only.get("account-stale").rule, record)  # type: ignore[union-attr]
    pending = firing("account-stale", status="pending", published=False, pending_since=at(11),
                     started_at=at(11), reason=reason)  # its `for` would end at 16
    assert next_due(only, KEY, [pending], record, at(12), no_states) == at(12)


def test_a_listed_accounts_record_is_its_sources_business() -> None:
    """A listed account's record adds no moment; its source's listing is due `after` old, rule by rule."""
    listed = Freshness(KEY, at(0), last_success_at=at(0), listed=True)
    assert next_due(RULES, KEY, [], listed, at(5), no_states) is None
    source = Freshness(WHOLE, at(0), last_success_at=at(10), last_listing_at=at(10))
    assert listing_due(RULES, source, at(12)) == at(25)
    assert listing_due(RULES, source, at(25)) == at(130)
    assert listing_due(RULES, source, at(130)) is None
    assert listing_due(RULES, replace(source, last_listing_at=None), at(12)) is None


# --- next_due is never late ---------------------------------------------------------------------------------

STATUSES = st.sampled_from([None, "inactive", "pending", "firing", "resolved"])


@st.composite
def key_states(
    draw: st.DrawFn, key: BalanceKey, names: Collection[str], record: Freshness | None
) -> list[AlertState]:
    states = []
    for name in names:
        status = draw(STATUSES)
        if status is None:
            continue
        started = at(draw(st.integers(0, 200)))
        rule = RULES.get(name)
        assert rule is not None
        reasons = [None, "some other reason"]
        if record is not None and rule.rule.kind == "stale":
            reasons.append(stale_reason(rule.rule, record))
        states.append(AlertState(
            fingerprint(name, key), name, key, status, draw(st.integers(0, 3)), started,  # type: ignore[arg-type]
            pending_since=draw(st.sampled_from([None, started])),
            cleared_since=draw(st.sampled_from([None, started + MINUTE])),
            published=draw(st.booleans()),
            muted=draw(st.booleans()),
            suppressed_by=draw(st.sampled_from([None, "critical", "source-down"])),
            last_sent_at=draw(st.sampled_from([None, started, started + 45 * MINUTE])),
            reason=draw(st.sampled_from(reasons)),
            kind=rule.rule.kind,
        ))
    return states


@st.composite
def subjects(draw: st.DrawFn) -> tuple[Freshness | None, list[AlertState], list[AlertState], datetime]:
    record = None
    if draw(st.booleans()):
        success = draw(st.sampled_from([None, at(draw(st.integers(0, 300)))]))
        error = draw(st.sampled_from([None, "timeout"]))
        record = Freshness(KEY, at(0), success, error, draw(st.booleans()) if error else False)
    states = draw(key_states(KEY, [r.name for r in RULES if r.per == "account"], record))
    whole = draw(key_states(WHOLE, ["source-down"], None))
    return record, states, whole, at(draw(st.integers(0, 400)))


@settings(max_examples=300, deadline=None)
@given(subjects(), st.floats(0, 1, exclude_max=True), st.integers(0, 3 * 24 * 60))
def test_nothing_changes_before_a_key_is_due(
    subject: tuple[Freshness | None, list[AlertState], list[AlertState], datetime], fraction: float,
    beyond: int,
) -> None:
    """For any states and record of a key (consistent or not) and any moment from `now` until the key is
    due (any later moment when it never is), a tick of that key changes nothing and publishes nothing,
    while the suppressors' states stay as they are."""
    record, states, whole, now = subject
    by_key = {KEY: {s.fingerprint: s for s in states}, WHOLE: {s.fingerprint: s for s in whole}}

    state_of = active_state_lookup(lambda key: by_key.get(key, {}))
    due = next_due(RULES, KEY, states, record, now, state_of)
    if due is not None and due <= now:
        return  # due at once: nothing to check
    if due is None:
        later = now + timedelta(minutes=beyond)
    else:  # before `due`, even where the fraction rounds up to it
        later = min(now + fraction * (due - now), due - timedelta(microseconds=1))
    update = tick(
        later, RULES, [s for s in states if s.status in ACTIVE_STATUSES], [record] if record else [],
        stored=lambda k: by_key.get(k, {}), freshness_of=lambda k: record if k == KEY else None,
    )
    assert update.transitions == ()
    assert update.alerts == ()


# --- the schedule, against a tick over every key ------------------------------------------------------------

ACCOUNTS = [f"acct-{i}" for i in range(4)]


class World:
    """The daemon's part, in memory: polls and listings through `assess_poll`, balance alerts set as an
    observation would leave them, and the alert clock, either over every key (`full`) or, as the daemon
    does, over the keys the schedule says are due, a slice at a time, sources first."""

    def __init__(self, *, scheduled: bool) -> None:
        self.alerts: dict[BalanceKey, dict[str, AlertState]] = {}
        self.freshness: dict[BalanceKey, Freshness] = {}
        self.schedule = TickSchedule() if scheduled else None

    def _keep(self, records: Collection[Freshness], states: Collection[AlertState]) -> None:
        for record in records:
            self.freshness[record.subject] = record
        for state in states:
            self.alerts.setdefault(state.key, {})[state.fingerprint] = state
        if self.schedule is not None:
            sources = [s.key.source for s in states if s.key.account == "*"]
            # As the state store reports them: a record that is listed touches nothing (its source's
            # listing makes it due), any other change of freshness or alerts touches its key.
            touched = [r.subject for r in records if not r.listed] + [s.key for s in states]
            self.schedule.touch(touched, sources)

    def listed_of(self, source: str) -> set[str]:
        return {k.account for k, f in self.freshness.items() if f.listed and k.source == source}

    def active(self) -> list[AlertState]:
        return [a for by_fp in self.alerts.values() for a in by_fp.values() if a.active]

    def active_keys(self) -> list[BalanceKey]:
        return [key for key, by_fp in self.alerts.items() if any(a.active for a in by_fp.values())]

    def poll(self, outcome: PollOutcome) -> list[AlertTransition]:
        result = assess_poll(outcome, RULES, self.freshness.get, self.alerts.get, listed_of=self.listed_of,
                             active_keys=self.active_keys)
        self._keep(result.freshness, result.alerts)
        return list(result.transitions)

    def observe(self, account: str, rule: str, status: str, minutes: int) -> None:
        """A balance alert as an observation at `minutes` leaves it (published when it fired)."""
        key = subject_key(SOURCE, account)
        state = AlertState(fingerprint(rule, key), rule, key, status, 1, at(minutes),  # type: ignore[arg-type]
                           pending_since=at(minutes), published=status == "firing",
                           last_sent_at=at(minutes) if status == "firing" else None, kind="below")
        self._keep([], [state])

    def state_of(self, name: str, key: BalanceKey) -> AlertState | None:
        return active_state_lookup(lambda k: self.alerts.get(k, {}))(name, key)

    def tick(self, now: datetime, size: int) -> list[AlertTransition]:
        plan = None
        if self.schedule is not None:
            changed = self.schedule.take_changed(RULES)
            resolved_now = resolving(self.freshness.get)
            for key in changed or ():  # as the daemon does: rescheduled first, ticked only if due now
                self.schedule.settle(key, self.alerts.get(key, {}).values(), resolved_now(key), now,
                                     self.state_of)
            plan = self.schedule.due(RULES, now)
        if plan is None:
            keys = {s.key for s in self.active()} | {k for k, f in self.freshness.items() if not f.listed}
            listed_of: object = self.listed_of
        else:
            keys, sources = plan
            listed_of = lambda s: self.listed_of(s) if s in sources else ()  # noqa: E731
        ordered = sorted(keys, key=lambda k: (k.account != "*", k.account))
        transitions: list[AlertTransition] = []
        for start in range(0, len(ordered), size):
            part = ordered[start:start + size]
            update = tick(
                now, RULES, [s for k in part for s in self.alerts.get(k, {}).values() if s.active],
                [f for f in map(self.freshness.get, part) if f is not None and not f.listed],
                stored=lambda k: self.alerts.get(k, {}), freshness_of=self.freshness.get,
                listed_of=listed_of,  # type: ignore[arg-type]
            )
            for state in update.alerts:
                self.alerts.setdefault(state.key, {})[state.fingerprint] = state
            transitions += update.transitions
            if self.schedule is not None:
                resolved = resolving(self.freshness.get)
                for key in set(part) | {s.key for s in update.alerts}:
                    states = self.alerts.get(key, {}).values()
                    self.schedule.settle(key, states, resolved(key), now, self.state_of)
        return transitions


STEPS = st.one_of(
    st.tuples(st.just("tick"), st.integers(1, 40)),
    st.tuples(st.just("poll"), st.integers(0, 30), st.sampled_from(ACCOUNTS),
              st.sampled_from(["ok", "fail", "revoked"])),
    st.tuples(st.just("listing"), st.integers(0, 30), st.lists(st.sampled_from(ACCOUNTS), unique=True),
              st.booleans()),
    st.tuples(st.just("observe"), st.integers(0, 30), st.sampled_from(ACCOUNTS),
              st.sampled_from(["low", "critical"]), st.sampled_from(["pending", "firing", "resolved"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STEPS, min_size=1, max_size=30), st.integers(1, 3))
def test_ticking_only_the_due_keys_equals_ticking_every_key(
    steps: list[tuple[object, ...]], size: int
) -> None:
    """Through polls that answer, fail or are revoked, listings that drop and add accounts, balance alerts
    that start and stop, and ticks minutes apart: the alert clock that visits only the keys due or
    changed publishes the same transitions and keeps the same states as one that visits every key."""
    full, scheduled = World(scheduled=False), World(scheduled=True)
    minutes = 0
    for step in steps:
        kind = step[0]
        if kind == "tick":
            minutes += int(step[1])  # type: ignore[call-overload]
            now = at(minutes)
            expected = full.tick(now, size=1000)
            got = scheduled.tick(now, size)
            assert sorted(map(repr, got)) == sorted(map(repr, expected))
            assert scheduled.alerts == full.alerts
            continue
        moment = at(minutes + int(step[1]) / 10)  # type: ignore[call-overload]
        for world in (full, scheduled):
            if kind == "poll":
                _, _, account, how = step
                outcome = PollOutcome(SOURCE, moment, (str(account),), how == "ok",
                                      None if how == "ok" else f"{how} at {moment:%H:%M}", how == "revoked")
                world.poll(outcome)
            elif kind == "listing":
                _, _, accounts, ok = step
                world.poll(PollOutcome(SOURCE, moment, tuple(accounts), bool(ok),  # type: ignore[arg-type]
                                       None if ok else "listing failed", listing=True))
            else:
                _, _, account, rule, status = step
                world.observe(str(account), str(rule), str(status), minutes)
    assert scheduled.freshness == full.freshness
