"""The daemon's alert clock over the real store: visiting only the keys that are due or changed gives the
events and states that visiting every key gives, and a tick with nothing due visits nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from loop_turns import counting_loop_turns

import watcher.alerting as alerting
from rules.loader import parse_rules
from rules.staleness import assess_poll
from rules.types import AlertState, BalanceKey, PollOutcome, subject_key
from watcher.alerting import AlertClock, SliceSizer
from watcher.app import Components
from watcher.events import Event
from watcher.packed import ON_DISK
from watcher.poller import OutboxDelivery, RulesHolder
from watcher.store import StagedCommit, StateStore, StateUpdate

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
SOURCE = "mc"
ACCOUNTS = [f"tok-{i:03d}" for i in range(60)]
RULES = parse_rules({"rules": [
    {"name": "account-stale", "kind": "stale", "after": "15m", "for": "5m", "repeat": "1h"},
    {"name": "source-down", "kind": "stale", "after": "15m", "per": "source",
     "suppresses": ["account-stale"]},
]}, "test.toml")


class Daemon:
    """The parts of a daemon the alert clock works with: the real store, the outbox delivery, the lock."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.events: list[Event] = []
        self.now = T0
        components = SimpleNamespace(
            settings=SimpleNamespace(sources=[SimpleNamespace(name=SOURCE, type="mastercard-send")]),
            store=store, lock=asyncio.Lock(), rules=RulesHolder(RULES),
            delivery=OutboxDelivery(store, wake=lambda: None, on_event=self.events.append),
        )
        self.clock = AlertClock(cast(Components, components), lambda: self.now)

    async def poll(self, minutes: float, accounts: list[str], ok: bool) -> None:
        """What a poll of these accounts stores (the poller's path, without a source)."""
        outcome = PollOutcome(SOURCE, T0 + timedelta(minutes=minutes), tuple(accounts), ok,
                              None if ok else "HTTP 503")
        result = assess_poll(outcome, RULES, self.store.freshness, self.store.alerts_view)
        await self.store.commit(StateUpdate(balances=(), alerts=result.alerts, freshness=result.freshness))

    async def tick(self, minutes: float, *, every_key: bool) -> list[tuple[str, str, str]]:
        self.now = T0 + timedelta(minutes=minutes)
        if every_key:
            self.clock._schedule.touch_all()  # as after a start: every key
        before = len(self.events)
        await self.clock.tick()
        return [(e.key, e.type, e.id) for e in self.events[before:]]


def _by_fingerprint(states: list[AlertState]) -> list[AlertState]:
    """The states in one order: the store's follows the order they were written in, which slicing moves."""
    return sorted(states, key=lambda state: state.fingerprint)


def _by_key(events: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Each key's events (type, id), in the order they were made."""
    by_key: dict[str, list[tuple[str, str]]] = {}
    for key, event_type, event_id in events:
        by_key.setdefault(key, []).append((event_type, event_id))
    return by_key


@pytest.mark.parametrize("slices", ["paced", "one key each", "one slice"])
async def test_the_scheduled_clock_equals_a_clock_over_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slices: str
) -> None:
    """Through polls that answer and fail and ticks minutes apart (alerts going pending, firing,
    reminding, resolving, withheld by a source-wide alert), the clock that visits only the keys due or
    changed delivers the same events and stores the same states as one that visits every key each tick;
    a tick with nothing due or changed visits no key. However a tick is sliced (by its pace, one key a
    slice, all keys at once), the outcome is the same."""
    if slices == "one key each":
        monkeypatch.setattr(alerting, "TICK_SLICE_KEYS_FIRST", 1)
        monkeypatch.setattr(alerting, "TICK_SLICE_S", 0.0)
    elif slices == "one slice":
        monkeypatch.setattr(alerting, "TICK_SLICE_KEYS_FIRST", 10_000)
    daemons = []
    for name in ("scheduled", "every"):
        store = StateStore(tmp_path / f"{name}.db")
        await store.open()
        daemons.append(Daemon(store))
    scheduled, every = daemons
    script: list[tuple[str, float, list[str], bool]] = [
        ("poll", 0, ACCOUNTS, True), ("tick", 1, [], True), ("tick", 2, [], True),
        ("poll", 5, ACCOUNTS[:20], True), ("tick", 16, [], True), ("tick", 19, [], True),
        ("tick", 22, [], True), ("poll", 23, ACCOUNTS[20:30], True), ("tick", 24, [], True),
        ("poll", 25, ACCOUNTS[30:40], False), ("poll", 25.5, ["*"], False), ("tick", 26, [], True),
        ("tick", 45, [], True), ("tick", 83, [], True), ("poll", 84, ACCOUNTS[40:], True),
        ("tick", 85, [], True), ("tick", 86, [], True),
    ]
    quiet_ticks = 0
    for action, minutes, accounts, ok in script:
        if action == "poll":
            for daemon in daemons:
                await daemon.poll(minutes, [] if accounts == ["*"] else accounts, ok)
            continue
        expected = await every.tick(minutes, every_key=True)
        got = await scheduled.tick(minutes, every_key=False)
        # Each key's events in the same order; the keys' order follows how the tick was sliced.
        assert _by_key(got) == _by_key(expected), f"at {minutes} min"
        assert _by_fingerprint(scheduled.store.all_alerts()) == _by_fingerprint(every.store.all_alerts())
        if minutes in (2, 86):  # nothing changed or fell due since the previous tick
            assert scheduled.clock.last_visited == 0
            quiet_ticks += 1
    assert quiet_ticks == 2
    kinds = {event_type for _, event_type, _ in (await every.tick(87, every_key=True))}
    assert not kinds
    fired = [e.key for e in every.events if e.type == "balance.alert.firing"]
    assert f"{SOURCE}:*" in fired
    assert len(set(fired)) == len(ACCOUNTS) + 1, "every account went stale once"
    assert len(fired) > len(set(fired)), "and reminders followed"
    for daemon in daemons:
        await daemon.store.close()


async def test_a_rules_reload_resolves_the_gone_rules_alerts_and_reads_back_only_those(
    tmp_path: Path,
) -> None:
    """After a reload without a rule, its firing alerts resolve. Every state of the accounts polled one by
    one has left memory (beyond the hot keys), active ones too: a reload that keeps every rule reads none
    back (the counts by rule say so), and one without a rule reads back only the active states."""
    store = StateStore(tmp_path / "s.db", hot_keys=0)
    await store.open()
    daemon = Daemon(store)
    await daemon.poll(0, ACCOUNTS[:10], ok=True)
    await daemon.poll(14, ACCOUNTS[10:], ok=True)  # the source answers: only the first ten go stale
    await daemon.tick(16, every_key=True)  # pending
    await daemon.tick(22, every_key=False)  # firing
    assert sum(e.type == "balance.alert.firing" for e in daemon.events) == 10
    await daemon.poll(23, ACCOUNTS[:4], ok=True)  # their alerts resolve
    await store.flush()
    assert store._alerts._by_key[subject_key(SOURCE, ACCOUNTS[5])] is ON_DISK, "an active state too"
    reads = store.disk_reads
    components = daemon.clock._c
    before = len(daemon.events)
    await daemon.clock.reconcile(old_rules=RULES)  # the same rules
    assert len(daemon.events) == before
    assert store.disk_reads == reads
    components.rules.replace([])  # (the other rule names the gone one: it goes too)
    await daemon.clock.reconcile(old_rules=RULES)
    resolved = {e.key for e in daemon.events[before:] if e.type == "balance.alert.resolved"}
    assert len(resolved) == 6
    assert store.disk_reads == reads + 2 * 6  # each active state: by the walk, then by its put
    assert not list(store.active_alert_keys())
    await store.close()


async def polled_one_key_a_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """A daemon whose clock ticks one key a slice, after a poll of every account (at minute 0)."""
    monkeypatch.setattr(alerting, "TICK_SLICE_KEYS_FIRST", 1)
    monkeypatch.setattr(alerting, "TICK_SLICE_S", 0.0)
    store = StateStore(tmp_path / "state.db")
    await store.open()
    daemon = Daemon(store)
    await daemon.poll(0, ACCOUNTS, True)
    return daemon


async def test_a_tick_lets_the_loop_run_between_its_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick over many keys gives the loop back between slices: a task beside it runs once per slice at
    least, so polls and the relay are not held for the whole tick."""
    daemon = await polled_one_key_a_slice(tmp_path, monkeypatch)
    store = daemon.store
    async with counting_loop_turns() as loop:
        events = await daemon.tick(16, every_key=True)  # every account went stale: each key is visited
    assert [event_type for _, event_type, _ in events] == ["balance.alert.firing"]  # the source's; the
    assert daemon.clock.last_visited >= len(ACCOUNTS)  # accounts' are pending (`for`) and withheld by it
    assert sum(state.status == "pending" for state in store.all_alerts()) == len(ACCOUNTS)
    assert loop.turns >= daemon.clock.last_visited
    await store.close()


async def test_each_slice_of_a_tick_is_durable_before_the_next_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick stages a slice only once the slice before is durable: a slice's group commit never waits
    behind another's, and a poll staged meanwhile waits for one such commit at most."""
    daemon = await polled_one_key_a_slice(tmp_path, monkeypatch)
    store = daemon.store
    components = daemon.clock._c
    real = components.delivery
    staged: list[StagedCommit] = []
    undone_at_stage: list[int] = []

    class Recording:
        def stage(self, update: StateUpdate, events: Sequence[Event]) -> Awaitable[None]:
            undone_at_stage.append(sum(not commit.done() for commit in staged))
            commit = real.stage(update, events)
            staged.append(cast(StagedCommit, commit))
            return commit

    components.delivery = Recording()  # type: ignore[misc]
    await daemon.tick(16, every_key=True)  # every account goes stale: a pending state each, a slice each
    assert len(staged) > len(ACCOUNTS) // 2
    assert set(undone_at_stage) == {0}
    await store.close()


def test_slices_are_sized_to_the_budget_at_the_last_pace() -> None:
    """The next slice takes as many keys as TICK_SLICE_S allows at the pace of the last full slice,
    between 1 and TICK_SLICE_KEYS_MAX, and at most twice the keys of that slice; a short last slice,
    and a slice measured as taking no time, say nothing that shrinks it."""
    first = alerting.TICK_SLICE_KEYS_FIRST
    sizer = SliceSizer()
    assert sizer.size == first
    sizer.took(sizer.size, alerting.TICK_SLICE_S * 2)  # twice the budget: half the keys
    assert sizer.size == first // 2
    sizer.took(sizer.size, alerting.TICK_SLICE_S / 3)  # a third of it: three times the keys, but twice
    assert sizer.size == first
    sizer.took(sizer.size, alerting.TICK_SLICE_S / 1.5)  # two thirds: half as many again
    assert sizer.size == first * 3 // 2
    sizer.took(3, 10.0)  # the short last slice of a sequence
    assert sizer.size == first * 3 // 2
    sizer.took(sizer.size, 10.0)  # a slow machine, or a key with many alerts: one key at a time
    assert sizer.size == 1
    sizer.took(1, 0.0)  # no time: twice the keys
    assert sizer.size == 2
    for _ in range(20):
        sizer.took(sizer.size, alerting.TICK_SLICE_S / 1000)
    assert sizer.size == alerting.TICK_SLICE_KEYS_MAX


def test_each_sequence_of_slices_starts_small() -> None:
    """A tick's pace says little about the next tick's keys: each sequence of slices starts at
    TICK_SLICE_KEYS_FIRST keys at most (fewer when the last pace was slower), then grows twofold a slice
    while its slices stay under the budget."""
    keys = [BalanceKey("src", f"acct-{i}") for i in range(1000)]
    sizer = SliceSizer()
    for _ in range(20):
        sizer.took(sizer.size, alerting.TICK_SLICE_S / 1000)  # a fast tick: the largest slices
    assert sizer.size == alerting.TICK_SLICE_KEYS_MAX
    sizes = []
    for part in sizer.parts(keys):
        sizes.append(len(part))
        sizer.took(len(part), alerting.TICK_SLICE_S / 1000)
    first = alerting.TICK_SLICE_KEYS_FIRST
    assert sizes[:4] == [first, first * 2, first * 4, first * 8]
    assert sum(sizes) == len(keys)
    slow = SliceSizer()
    slow.took(first, alerting.TICK_SLICE_S * first / 10)  # a slow pace: 10 keys fill the budget
    assert len(next(iter(slow.parts(keys)))) == 10
