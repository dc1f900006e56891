"""Alert work that no poll triggers: time passing (`for`, `keep_firing_for`, `repeat`, mute windows,
staleness) and rules reloads (alerts of removed rules resolve). Both run through the same pure engine
and the same delivery as the polls, under the same evaluation lock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from rules.model import Rule
from rules.timeline import AlertUpdate, reconcile, tick
from watcher.app import Components
from watcher.events import Event, alert_event
from watcher.store import OutboxFull, StateUpdate

log = structlog.get_logger("watcher.alerting")


class AlertClock:
    """Moves alerts on by time and by rules reloads; owned by the daemon."""

    def __init__(self, components: Components, clock: Callable[[], datetime]) -> None:
        self._c = components
        self._clock = clock
        self._providers = {s.name: s.type for s in components.settings.sources}

    async def tick(self) -> int:
        """Advance every alert to now; returns how many events it delivered."""
        async with self._c.lock:
            store = self._c.store
            rules = self._c.rules.rules
            update = tick(self._clock(), rules, store.all_alerts(), store.all_freshness(), store.all_known())
            return await self._deliver(update)

    async def reconcile(self, old_rules: Sequence[Rule] = ()) -> int:
        """After a (re)load: resolve the alerts of rules that are gone; the others keep their state."""
        async with self._c.lock:
            store = self._c.store
            update = reconcile(
                store.all_alerts(), self._c.rules.rules, self._clock(), old_rules=old_rules,
                balances=store.all_known(),
            )
            return await self._deliver(update)

    async def _deliver(self, update: AlertUpdate) -> int:
        if not update.transitions and not update.alerts:
            return 0
        events: list[Event] = []
        for transition in update.transitions:
            key = transition.state.key
            known = self._c.store.known(key)
            description = known.description if known is not None else None
            events.append(alert_event(transition, self._providers.get(key.source, ""), description))
        try:
            await self._c.delivery.deliver(StateUpdate(balances=[], alerts=update.alerts), events)
        except OutboxFull as exc:
            log.error("OUTBOX FULL: alert transitions not recorded; the next tick retries", error=str(exc))
            return 0
        return len(events)
