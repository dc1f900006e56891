"""The engine's fast paths give the same results as the full evaluation they skip.

- `assess` returns at once for an observation equal to the known balance when no alert of the key is
  active and no rule watching it is breached (`quiet_when_unchanged`); over generated rules of every
  balance kind, lifecycles, drop histories, alert states and observations, changed or not, its result
  equals `assess_in_full`'s.
- `assess_poll` does not return a success's freshness record when the stored one succeeded less than
  `freshness_resolution` before; staleness then fires no earlier than `after` minus the resolution and
  no later than `after`, and a success still resolves a stale alert.
- `tick` steps only subjects due for the shortest `after` and still finds the freshness of a fresh
  subject whose stale alert sends a reminder.
- `event_id` is uuid5 and `rfc3339`'s memo never returns another moment's text.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.compiled import compile_rules, fingerprint
from rules.engine import assess, assess_in_full, quiet_when_unchanged
from rules.model import Rule, Scope
from rules.schedule import DailyWindow
from rules.staleness import assess_poll
from rules.timeline import tick
from rules.types import (
    IN_CREDIT,
    IN_DEBIT,
    AlertState,
    AlertStatus,
    Balance,
    BalanceKey,
    Freshness,
    KnownBalance,
    Observation,
    PollOutcome,
    subject_key,
)
from watcher.events import _ID_NAMESPACE, event_id, rfc3339

KEY = BalanceKey("mc-gbp", "acct-1")
SOURCE = subject_key("mc-gbp")
T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
# Naive bounds, as hypothesis wants them for st.datetimes; every moment drawn gets a zone.
NAIVE_MIN = datetime(2000, 1, 1)  # noqa: DTZ001
NAIVE_MAX = datetime(2100, 1, 1)  # noqa: DTZ001
FAST_SETTINGS = settings(max_examples=400, deadline=None)

amounts = st.decimals(min_value=-60, max_value=60, places=1)
# Mostly short gaps (inside drop windows and `for` durations), sometimes long ones.
minutes = st.one_of(st.integers(0, 10), st.integers(0, 180)).map(lambda m: timedelta(minutes=m))
lifecycle_minutes = st.sampled_from([0, 0, 1, 5, 30]).map(lambda m: timedelta(minutes=m))


@st.composite
def balances(draw: st.DrawFn) -> Balance:
    """A Mastercard-like balance: a magnitude and IN_CREDIT / IN_DEBIT, in GBP or EUR."""
    signed = draw(amounts)
    return Balance(abs(signed), draw(st.sampled_from(["GBP", "EUR"])), IN_DEBIT if signed < 0 else IN_CREDIT)


@st.composite
def balance_rules(draw: st.DrawFn, name: str) -> Rule:
    """A rule of any balance kind, with any lifecycle (for, keep_firing_for, repeat, a mute window)."""
    kind = draw(st.sampled_from(["below", "above", "state", "change", "drop"]))
    values: dict[str, object] = {
        "scope": Scope(currency=draw(st.sampled_from([None, "GBP", "EUR"]))),
        "for_duration": draw(lifecycle_minutes),
        "keep_firing_for": draw(lifecycle_minutes),
        "repeat": draw(st.none() | st.sampled_from([timedelta(minutes=10), timedelta(hours=1)])),
    }
    if draw(st.booleans()) and draw(st.booleans()):
        values["mute"] = (DailyWindow(frozenset(range(7)), 8 * 60, 10 * 60),)
    if kind in ("below", "above"):
        threshold = draw(amounts)
        band = draw(st.none() | st.decimals(min_value=0, max_value=20, places=1))
        if band is not None:
            values["clear_above" if kind == "below" else "clear_below"] = (
                threshold + band if kind == "below" else threshold - band
            )
        return Rule(name, kind, threshold, **values)  # type: ignore[arg-type]
    if kind == "state":
        return Rule(name, kind, state=draw(st.sampled_from([IN_CREDIT, IN_DEBIT])), **values)  # type: ignore[arg-type]
    if kind == "change":
        change = draw(st.decimals(min_value=Decimal("0.1"), max_value=40, places=1))
        return Rule(name, kind, min_change=change, **values)  # type: ignore[arg-type]
    min_drop = draw(st.none() | st.decimals(min_value=Decimal("0.1"), max_value=40, places=1))
    percent = draw(st.none() | st.decimals(min_value=1, max_value=100, places=0))
    if min_drop is None and percent is None:
        min_drop = Decimal(5)
    window = timedelta(minutes=draw(st.integers(min_value=1, max_value=120)))
    return Rule(name, kind, window=window, min_drop=min_drop, min_drop_percent=percent, **values)  # type: ignore[arg-type]


@st.composite
def histories(draw: st.DrawFn, until: datetime) -> tuple[tuple[datetime, Decimal], ...]:
    """A drop history as the engine keeps it: amounts strictly falling, times rising, before `until`."""
    count = draw(st.integers(min_value=0, max_value=4))
    offsets = sorted(draw(st.lists(st.integers(1, 90), min_size=count, max_size=count, unique=True)))
    levels = sorted(draw(st.lists(amounts, min_size=count, max_size=count, unique=True)), reverse=True)
    return tuple(
        (until - timedelta(minutes=offset), level)
        for offset, level in zip(offsets[::-1], levels, strict=True)
    )


@st.composite
def alert_states(draw: st.DrawFn, names: list[str]) -> dict[str, AlertState]:
    """Stored states for some of the names (balance rules, a stale rule, a removed rule), on the key or
    source-wide, in any status with any lifecycle fields."""
    states: dict[str, AlertState] = {}
    for name in names:
        if not draw(st.booleans()):
            continue
        key = draw(st.sampled_from([KEY, KEY, SOURCE]))
        status: AlertStatus = draw(st.sampled_from(["inactive", "pending", "firing", "resolved"]))
        started = T0 - draw(minutes)
        state = AlertState(
            fingerprint(name, key),
            name,
            key,
            status,
            draw(st.integers(0, 3)),
            started,
            pending_since=started if status == "pending" else None,
            cleared_since=draw(st.none() | st.just(started + timedelta(minutes=1))),
            published=draw(st.booleans()),
            muted=draw(st.booleans()),
            last_sent_at=draw(st.none() | st.just(started)),
        )
        states[state.fingerprint] = state
    return states


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Rule], Observation, KnownBalance, dict[str, AlertState]]:
    """Rules, an observation (equal to the known balance two times out of three), the known balance
    with a drop history, and the key's alert states."""
    rules = [draw(balance_rules(f"r{index}")) for index in range(draw(st.integers(1, 4)))]
    rules.append(Rule("stale", "stale", after=timedelta(minutes=15)))
    known_at = T0 + draw(minutes)
    known = KnownBalance(draw(balances()), known_at, "c0", 3, None, draw(histories(known_at)))
    if draw(st.integers(0, 2)):
        balance = known.balance
        if draw(st.booleans()):  # the same money at another scale: 12.5 and 12.50
            balance = Balance(balance.amount.quantize(Decimal("0.01")), balance.currency, balance.state)
    else:
        balance = draw(balances())
    observation = Observation(KEY, "mastercard-send", balance, known_at + draw(minutes), "c1")
    names = [rule.name for rule in rules] + ["removed"]
    return rules, observation, known, draw(alert_states(names))


@FAST_SETTINGS
@given(case=cases())
def test_assess_with_the_fast_path_equals_the_full_evaluation(
    case: tuple[list[Rule], Observation, KnownBalance, dict[str, AlertState]],
) -> None:
    """For any rules, observation, known balance and alert states, `assess` and `assess_in_full`
    return equal assessments: the fast path never drops a change, an alert state or a transition."""
    rules, observation, known, alerts = case
    compiled = compile_rules(rules)
    assert assess(observation, known, compiled, alerts) == assess_in_full(
        observation, known, compiled, alerts
    )


@FAST_SETTINGS
@given(case=cases())
def test_quiet_when_unchanged_means_nothing_happens(
    case: tuple[list[Rule], Observation, KnownBalance, dict[str, AlertState]],
) -> None:
    """Whenever `quiet_when_unchanged` holds, the full evaluation of the unchanged balance yields no
    change, no alert state and no transition, and keeps the known balance as it is."""
    rules, observation, known, alerts = case
    compiled = compile_rules(rules)
    if quiet_when_unchanged(KEY, known, observation.observed_at, compiled, alerts):
        again = Observation(KEY, "mastercard-send", known.balance, observation.observed_at, "c2")
        result = assess_in_full(again, known, compiled, alerts)
        assert (result.change, result.known, result.transitions, result.alerts) == (None, known, (), ())


def test_the_fast_path_is_taken_for_a_healthy_unchanged_balance() -> None:
    """The steady state: a balance between the thresholds, no drop behind it, no active alert, is quiet
    for `below`, `above`, `state` and `change` rules and for a `drop` rule whose peak left the window;
    not while a higher amount is inside the window, nor with an active alert."""
    rules = compile_rules(
        [
            Rule("low", "below", Decimal(10)),
            Rule("high", "above", Decimal(100)),
            Rule("debit", "state", state=IN_DEBIT),
            Rule("moved", "change", min_change=Decimal(5)),
            Rule("drop", "drop", window=timedelta(hours=1), min_drop=Decimal(1000)),
        ]
    )
    history = ((T0, Decimal(60)),)
    known = KnownBalance(Balance(Decimal(50), "GBP", IN_CREDIT), T0, "c", 2, None, history)
    assert not quiet_when_unchanged(KEY, known, T0 + timedelta(minutes=30), rules, {})
    assert quiet_when_unchanged(KEY, known, T0 + timedelta(hours=1), rules, {})
    pending = AlertState(fingerprint("low", KEY), "low", KEY, "pending", 0, T0, pending_since=T0)
    assert not quiet_when_unchanged(
        KEY, known, T0 + timedelta(hours=2), rules, {pending.fingerprint: pending}
    )
    debit = KnownBalance(Balance(Decimal(50), "GBP", IN_DEBIT), T0, "c", 2)
    assert not quiet_when_unchanged(KEY, debit, T0, rules, {})
    observation = Observation(KEY, "mastercard-send", known.balance, T0 + timedelta(hours=1), "c2")
    result = assess(observation, known, rules, {})
    assert result.known is known
    assert result.change is None


def test_an_unchanged_balance_resolves_a_firing_change_alert() -> None:
    """Why the fast path needs no active alert: a `change` alert fires on a movement and resolves on
    the next observation of the same balance (it moved by zero), which is not a change."""
    rules = compile_rules([Rule("moved", "change", min_change=Decimal(5))])
    known = KnownBalance(Balance(Decimal(50), "GBP", IN_CREDIT), T0, "c", 2)
    moved = Observation(KEY, "mastercard-send", Balance(Decimal(80), "GBP", IN_CREDIT), T0, "c1")
    fired = assess(moved, known, rules, {})
    assert [t.status for t in fired.transitions] == ["firing"]
    again = Observation(KEY, "mastercard-send", moved.balance, T0 + timedelta(minutes=1), "c2")
    alerts = {state.fingerprint: state for state in fired.alerts}
    resolved = assess(again, fired.known, rules, alerts)
    assert resolved.change is None
    assert [t.status for t in resolved.transitions] == ["resolved"]


def _poll(
    rules: list[Rule], freshness: dict[BalanceKey, Freshness], at: datetime, ok: bool = True
) -> tuple[Freshness, ...]:
    result = assess_poll(
        PollOutcome("mc-gbp", at, ("acct-1",), ok, None if ok else "HTTP 503"),
        rules,
        freshness.get,
        lambda key: None,
    )
    freshness.update({record.subject: record for record in result.freshness})
    return result.freshness


def test_a_success_soon_after_a_stored_success_is_not_stored() -> None:
    """With `after` 10m the resolution is 1m: a success 30s after the stored one returns no record, one
    a minute after returns both records; a failure, and the success after it, are always returned."""
    rules = [Rule("stale", "stale", after=timedelta(minutes=10))]
    assert compile_rules(rules).freshness_resolution == timedelta(minutes=1)
    freshness: dict[BalanceKey, Freshness] = {}
    assert len(_poll(rules, freshness, T0)) == 2
    assert _poll(rules, freshness, T0 + timedelta(seconds=30)) == ()
    assert freshness[KEY].last_success_at == T0
    assert len(_poll(rules, freshness, T0 + timedelta(minutes=1))) == 2
    assert len(_poll(rules, freshness, T0 + timedelta(seconds=70), ok=False)) == 2
    assert len(_poll(rules, freshness, T0 + timedelta(seconds=80))) == 2
    assert freshness[KEY] == Freshness(KEY, T0, T0 + timedelta(seconds=80))


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=30))
def test_staleness_fires_within_the_resolution_of_after(gaps: list[int]) -> None:
    """Successes at any times (seconds apart), then silence: the stale alert fires at the first tick
    at least `after` minus the resolution after the true last success, and never before it."""
    after = timedelta(minutes=10)
    rules = compile_rules([Rule("stale", "stale", after=after)])
    freshness: dict[BalanceKey, Freshness] = {}
    moment = T0
    _poll(list(rules), freshness, moment)
    for gap in gaps:
        moment += timedelta(seconds=gap)
        _poll(list(rules), freshness, moment)
    earliest = moment + after - rules.freshness_resolution
    for second in range(0, 11 * 60, 5):
        now = moment + timedelta(seconds=second)
        fired = [t for t in tick(now, rules, [], list(freshness.values())).transitions if t.state.key == KEY]
        if fired:
            assert earliest <= now <= moment + after
            return
    raise AssertionError("never went stale")


def test_a_success_resolves_a_stale_alert_even_soon_after_a_stored_success() -> None:
    """A stale alert firing on a subject that answered just before (a reload shortened `after` in
    between) resolves on the next success, and that success's record is returned with it."""
    rules = compile_rules([Rule("stale", "stale", after=timedelta(minutes=10))])
    freshness = {KEY: Freshness(KEY, T0, T0)}
    firing = AlertState(fingerprint("stale", KEY), "stale", KEY, "firing", 1, T0, kind="stale")
    outcome = PollOutcome("mc-gbp", T0 + timedelta(seconds=5), ("acct-1",), True)
    result = assess_poll(
        outcome, rules, freshness.get, lambda key: {firing.fingerprint: firing} if key == KEY else None
    )
    assert [t.status for t in result.transitions] == ["resolved"]
    assert Freshness(KEY, T0, T0 + timedelta(seconds=5)) in result.freshness


def test_tick_over_many_fresh_subjects_steps_only_the_due_ones() -> None:
    """A big table: 10,000 fresh subjects and one silent for `after`; only the silent one fires. A
    firing stale alert with reminders on a fresh subject still names its last success."""
    summary = (("summary", "{last_success}"),)
    rules = compile_rules(
        [
            Rule(
                "stale",
                "stale",
                after=timedelta(minutes=15),
                repeat=timedelta(minutes=5),
                annotations=summary,
            )
        ]
    )
    now = T0 + timedelta(hours=1)
    records = [
        Freshness(subject_key("mc-gbp", f"a{i}"), T0, now - timedelta(seconds=10)) for i in range(10_000)
    ]
    silent = subject_key("mc-gbp", "silent")
    records.append(Freshness(silent, T0, now - timedelta(minutes=15)))
    reminded = records[17].subject
    firing = AlertState(fingerprint("stale", reminded), "stale", reminded, "firing", 1, T0, last_sent_at=T0)
    update = tick(now, rules, [firing], iter(records))
    assert sorted((t.status, t.state.key.account) for t in update.transitions) == [
        ("firing", "silent"),
        ("repeat", "a17"),
    ]
    (repeat,) = [t for t in update.transitions if t.status == "repeat"]
    assert repeat.annotations == (("summary", rfc3339(now - timedelta(seconds=10))),)


@settings(max_examples=300, deadline=None)
@given(identity=st.text())
def test_event_id_is_uuid5(identity: str) -> None:
    """The ids of events are exactly uuid5 of their identity in the fixed namespace."""
    assert event_id(identity) == str(uuid.uuid5(_ID_NAMESPACE, identity))


@settings(max_examples=300, deadline=None)
@given(
    moments=st.lists(
        st.datetimes(min_value=NAIVE_MIN, max_value=NAIVE_MAX).flatmap(
            lambda naive: st.sampled_from(
                [naive.replace(tzinfo=UTC), naive.replace(tzinfo=timezone(timedelta(hours=2)))]
            )
        ),
        min_size=1,
        max_size=6,
    )
)
def test_rfc3339_memo_returns_each_moments_own_text(moments: list[datetime]) -> None:
    """However moments repeat or alternate, each gets its own UTC text with a Z."""
    for moment in moments + moments[::-1]:
        assert rfc3339(moment) == moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


statuses = st.sampled_from(["pending", "firing", "resolved", "inactive"])


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.sampled_from(["a1", "a2", "a3", "*"]),
            st.sampled_from(["stale", "low", "source-down"]),
            statuses,
            st.integers(0, 40),
        ),
        max_size=12,
    ),
    silences=st.lists(st.integers(0, 40), min_size=4, max_size=4),
    revoked=st.lists(st.booleans(), min_size=4, max_size=4),
    later=st.integers(0, 60),
)
def test_tick_over_the_active_index_equals_tick_over_every_state(
    data: list[tuple[str, str, str, int]], silences: list[int], revoked: list[bool], later: int
) -> None:
    """The alert clock hands `tick` only the active states, with look-ups of a key's states and of a
    subject's freshness: the update is the same as with every state and every record walked."""
    rules = compile_rules(
        [
            Rule("stale", "stale", after=timedelta(minutes=15), repeat=timedelta(minutes=5)),
            Rule("source-down", "stale", per="source", after=timedelta(minutes=10)),
            Rule("low", "below", threshold=Decimal("10"), for_duration=timedelta(minutes=5),
                 repeat=timedelta(minutes=20)),
        ]
    )
    states: dict[BalanceKey, dict[str, AlertState]] = {}
    for account, rule, status, minutes_ago in data:
        key = subject_key("mc-gbp", account) if rule != "low" else BalanceKey("mc-gbp", account, "")
        if (account == "*" and rule == "stale") or (account != "*" and rule == "source-down"):
            continue
        fp = fingerprint(rule, key)
        started = T0 - timedelta(minutes=minutes_ago)
        states.setdefault(key, {})[fp] = AlertState(
            fp, rule, key, status, 1, started, kind="stale" if rule != "low" else "below",
            pending_since=started if status == "pending" else None,
            last_sent_at=started if status == "firing" else None,
            resolved_at=started if status == "resolved" else None,
        )
    records = {
        subject_key("mc-gbp", account): Freshness(
            subject_key("mc-gbp", account), T0 - timedelta(hours=1), T0 - timedelta(minutes=silence),
            None, gone,
        )
        for account, silence, gone in zip(["a1", "a2", "a3", "*"], silences, revoked, strict=True)
    }
    every = [a for by_fp in states.values() for a in by_fp.values()]
    active = [a for a in every if a.status in ("pending", "firing")]
    now = T0 + timedelta(minutes=later)
    walked = tick(now, rules, every, list(records.values()))
    indexed = tick(
        now, rules, active, list(records.values()),
        stored=lambda key: states.get(key, {}), freshness_of=records.get,
    )
    assert indexed == walked
