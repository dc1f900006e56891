"""Alert work that no poll triggers: time passing (`for`, `keep_firing_for`, `repeat`, mute windows,
staleness) and rules reloads (alerts of removed rules resolve). Both run through the same pure engine
and the same delivery as the polls, under the same evaluation lock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import structlog

from rules.model import Rule
from rules.timeline import AlertUpdate, reconcile, tick
from rules.types import ACTIVE_STATUSES, WHOLE_SOURCE
from watcher.app import Components
from watcher.events import Event, alert_event
from watcher.store import OutboxFull, StateUpdate

log = structlog.get_logger("watcher.alerting")

# Keys whose active alerts one hold of the evaluation lock moves on (a few milliseconds of work).
TICK_SLICE_KEYS = 250


class AlertClock:
    """Moves alerts on by time and by rules reloads; owned by the daemon."""

    def __init__(self, components: Components, clock: Callable[[], datetime]) -> None:
        self._c = components
        self._clock = clock
        self._providers = {s.name: s.type for s in components.settings.sources}

    async def tick(self) -> int:
        """Advance every alert to now; returns how many events it delivered.

        A slice of the keys with active alerts at a time, each under the evaluation lock and staged,
        the loop free between slices: a tick that fires a thousand alerts at once (their `for` ending
        together) must not hold the loop, and every poll waiting on it, for the whole burst. The first
        slice also takes the subjects that went stale, and the sources' own keys (their alerts may
        suppress their accounts' ones): the result is that of one tick over every key."""
        store = self._c.store
        rules = self._c.rules.rules  # one set of rules for the whole tick, even across a reload
        now = self._clock()
        keys = list(dict.fromkeys(state.key for state in store.active_alerts()))
        # A source's own alerts first: they may suppress its accounts' ones (never the other way round).
        keys.sort(key=lambda key: key.account != WHOLE_SOURCE)
        delivered = 0
        in_flight: tuple[Awaitable[None], int] | None = None
        for start in range(0, max(len(keys), 1), TICK_SLICE_KEYS):  # once at least: the stale subjects
            async with self._c.lock:
                states = [
                    state for key in keys[start : start + TICK_SLICE_KEYS]
                    for state in store.alerts_view(key).values() if state.status in ACTIVE_STATUSES
                ]
                update = tick(
                    now, rules, states, store.unlisted_freshness() if start == 0 else (), store.known_view(),
                    stored=store.alerts_view, freshness_of=store.freshness,
                    listed_of=store.listed_accounts if start == 0 else None,
                )
                staged = self._stage(update)
            delivered += await self._durable(in_flight)
            in_flight = staged
            await asyncio.sleep(0)  # polls, the relay, heartbeats: between slices
        return delivered + await self._durable(in_flight)

    async def reconcile(self, old_rules: Sequence[Rule] = ()) -> int:
        """After a (re)load: resolve the alerts of rules that are gone; the others keep their state."""
        async with self._c.lock:
            store = self._c.store
            update = reconcile(
                store.all_alerts(), self._c.rules.rules, self._clock(), old_rules=old_rules,
                balances=store.known_view(),
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
