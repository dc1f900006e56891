"""Alert work that no poll triggers: time passing (`for`, `keep_firing_for`, `repeat`, mute windows,
staleness) and rules reloads (alerts of removed rules resolve). Both run through the same pure engine
and the same delivery as the polls, under the same evaluation lock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from datetime import datetime

import structlog

from rules.compiled import active_state_lookup
from rules.deadlines import TickSchedule
from rules.model import Rule
from rules.staleness import resolving
from rules.timeline import AlertUpdate, reconcile, tick
from rules.types import ACTIVE_STATUSES, WHOLE_SOURCE, BalanceKey
from watcher.app import Components
from watcher.events import Event, alert_event
from watcher.store import OutboxFull, StateUpdate

log = structlog.get_logger("watcher.alerting")

# About how long one hold of the evaluation lock by the alert clock lasts. A tick takes its keys in
# slices sized to it at the pace of the slice before, not in a fixed number: a key costs 4-80 us (more
# with many alerts), and a fixed 250 held the loop (and every poll waiting on it) for 10-20 ms at each
# tick. 1 ms, not 4: a slice's group commit, which the polls staged meanwhile wait for, grows with it
# (at 500 polls/s, slices of ~100 firing alerts made commits of 15-30 ms; bench/README.md).
TICK_SLICE_S = 0.001
# The first slice of each sequence of slices (at most), and the largest.
TICK_SLICE_KEYS_FIRST = 50
TICK_SLICE_KEYS_MAX = 2_000


class SliceSizer:
    """How many keys the next slice takes: as many as TICK_SLICE_S allows at the pace of the last one,
    growing at most twofold a slice."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = TICK_SLICE_KEYS_FIRST

    def parts(self, keys: Sequence[BalanceKey]) -> Iterator[Sequence[BalanceKey]]:
        """`keys` a slice at a time, each of the size the last `took` left. A sequence starts small again:
        the pace of the tick before says little about this one's keys (a tick of quiet keys at 4 us a key,
        then one firing a thousand `for` alerts at 45 us: its first slice held the loop 44 ms)."""
        self.size = min(self.size, TICK_SLICE_KEYS_FIRST)
        start = 0
        while start < len(keys):
            part = keys[start : start + self.size]
            yield part
            start += len(part)

    @contextlib.contextmanager
    def timing(self, keys: int) -> Iterator[None]:
        """Times the block, the work of a slice of `keys` keys, for `took`."""
        began = time.perf_counter()
        yield
        self.took(keys, time.perf_counter() - began)

    def took(self, keys: int, seconds: float) -> None:
        """The slice just done took `seconds` for `keys` keys."""
        if keys < self.size:
            return  # a sequence's last, short slice says little about the pace
        fits = keys * TICK_SLICE_S / seconds if seconds > 0 else TICK_SLICE_KEYS_MAX
        self.size = max(1, min(TICK_SLICE_KEYS_MAX, 2 * keys, int(fits)))


class AlertClock:
    """Moves alerts on by time and by rules reloads; owned by the daemon."""

    def __init__(self, components: Components, clock: Callable[[], datetime]) -> None:
        self._c = components
        self._clock = clock
        self._providers = {s.name: s.type for s in components.settings.sources}
        self._schedule = TickSchedule()
        self.last_visited = 0  # keys the latest tick visited (every key after a start or a reload)
        self._resolving = resolving(components.store.freshness)
        self._state_of = active_state_lookup(components.store.alerts_view)
        # Kept from tick to tick: the pace of rescheduling changed keys, and of ticking keys.
        self._settle_slices = SliceSizer()
        self._tick_slices = SliceSizer()

    async def tick(self) -> int:
        """Advance the alerts that are due to now; returns how many events it delivered.

        Only the keys whose moment came (`rules.deadlines`: a `for` elapsing, a subject turning stale,
        a reminder) or whose states or freshness changed since are visited; every key after a start, a
        rules reload or a reload of the store's memory. A firing alert with nothing due costs nothing.

        A slice of the keys at a time, each under the evaluation lock and staged, the loop free between
        slices: a tick that fires a thousand alerts at once (their `for` ending together) must not hold
        the loop, and every poll waiting on it, for the whole burst. The sources' own keys go first
        (their alerts may suppress their accounts' ones): the result is that of one tick over every key."""
        store = self._c.store
        rules = self._c.rules.rules  # one set of rules for the whole tick, even across a reload
        now = self._clock()
        schedule = self._schedule
        async with self._c.lock:
            self._take_touched()
            changed = schedule.take_changed(rules)
        # Rescheduled as they are now, a slice at a time; ticked below only if due now.
        for part in self._settle_slices.parts(list(changed or ())):
            async with self._c.lock:
                with self._settle_slices.timing(len(part)):
                    for key in part:
                        self._settle(key, now)
            await asyncio.sleep(0)
        async with self._c.lock:
            self._take_touched()
            plan = schedule.due(rules, now)
            if plan is None:  # everything: every key with an active alert or a record of its own
                keys = set(store.active_alert_keys())
                keys.update(store.unlisted_subjects())
                walk_listings: Callable[[str], Collection[str]] = store.listed_accounts
            else:
                keys, sources = plan
                walk_listings = lambda source: store.listed_accounts(source) if source in sources else ()  # noqa: E731
        # A source's own alerts first: they may suppress its accounts' ones (never the other way round).
        ordered = sorted(keys, key=lambda key: key.account != WHOLE_SOURCE)
        self.last_visited = len(ordered)
        delivered = 0
        try:
            for part in self._tick_slices.parts(ordered):
                async with self._c.lock:
                    with self._tick_slices.timing(len(part)):
                        staged, visited = self._tick_slice(part, now, rules, walk_listings)
                        self._take_touched(visited)
                # Durable before the next slice is made: a slice's group commit (its alerts and events)
                # then never waits behind the slice before, and a poll staged meanwhile waits for one such
                # commit at most, not a queue of them (bench/README.md).
                delivered += await self._durable(staged)
                await asyncio.sleep(0)  # polls, the relay, heartbeats: between slices
        except BaseException:
            schedule.touch_all()  # the keys taken for this tick and not ticked would be forgotten
            raise
        return delivered

    def _tick_slice(
        self,
        keys: Sequence[BalanceKey],
        now: datetime,
        rules: Sequence[Rule],
        walk_listings: Callable[[str], Collection[str]],
    ) -> tuple[tuple[Awaitable[None], int] | None, set[BalanceKey]]:
        """Under the lock: tick these keys, stage the result, and schedule every key it visited."""
        store = self._c.store
        states = [
            state for key in keys
            for state in store.alerts_view(key).values() if state.status in ACTIVE_STATUSES
        ]
        records = [r for r in map(store.freshness, keys) if r is not None and not r.listed]
        update = tick(
            now, rules, states, records, store.known_view(),
            stored=store.alerts_view, freshness_of=store.freshness, listed_of=walk_listings,
        )
        staged = self._stage(update)
        visited = set(keys)
        visited.update(state.key for state in update.alerts)
        for key in visited:
            self._settle(key, now)
        return staged, visited

    def _settle(self, key: BalanceKey, now: datetime) -> None:
        """Schedule `key` from its states and record as they are now."""
        store = self._c.store
        self._schedule.settle(key, store.alerts_view(key).values(), self._resolving(key), now, self._state_of)

    def _take_touched(self, settled: Collection[BalanceKey] = frozenset()) -> None:
        """Under the lock: the keys the store changed since last asked are due, except those just settled
        (ticked after the change)."""
        touched = self._c.store.take_touched()
        if touched is None:
            self._schedule.touch_all()
        else:
            keys, sources = touched
            self._schedule.touch(keys.difference(settled) if settled else keys, sources)

    async def reconcile(self, old_rules: Sequence[Rule] = ()) -> int:
        """After a (re)load: resolve the alerts of rules that are gone; the others keep their state."""
        async with self._c.lock:
            store = self._c.store
            rules = self._c.rules.rules
            # Only an active state can be resolved by a rule's going, and the counts say whether any active
            # state's rule is gone without reading one: a reload that keeps them reads nothing back.
            names = {rule.name for rule in rules}
            if all(rule in names for rule, _, _ in store.active_alert_counts()):
                return 0
            update = reconcile(
                store.active_alerts(), rules, self._clock(), old_rules=old_rules, balances=store.known_view(),
            )
            staged = self._stage(update)
        return await self._durable(staged)

    def _stage(self, update: AlertUpdate) -> tuple[Awaitable[None], int] | None:
        """Under the evaluation lock: the new alert states go to memory at once, and to disk with the
        next group commit, which is awaited after the lock is released (polls need not wait for it)."""
        if not update.transitions and not update.alerts:
            return None
        events: list[Event] = []
        for transition in update.transitions:
            key = transition.state.key
            known = self._c.store.known(key)
            description = known.description if known is not None else None
            events.append(alert_event(transition, self._providers.get(key.source, ""), description))
        try:
            staged = self._c.delivery.stage(StateUpdate(balances=[], alerts=update.alerts), events)
        except OutboxFull as exc:
            log.error("OUTBOX FULL: alert transitions not recorded; the next tick retries", error=str(exc))
            return None
        return staged, len(events)

    @staticmethod
    async def _durable(staged: tuple[Awaitable[None], int] | None) -> int:
        if staged is None:
            return 0
        await staged[0]
        return staged[1]
