"""One poll round of one source: fetch, compare and evaluate, then hand the new state and its events
to the delivery, which writes both in one transaction (the outbox) for the relay to publish.

If that write fails (the outbox is full, the disk is), the state stays as it was and the next poll
derives the same events again, with the same ids: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog

from rules.engine import Assessment, CompiledRules, assess, compile_rules
from rules.model import Rule
from rules.staleness import assess_poll
from rules.types import WHOLE_SOURCE, BalanceKey, Freshness, PollOutcome, subject_key
from watcher.events import Event, alert_event, events_of
from watcher.metrics import Metrics
from watcher.sources.base import BalanceSource, FetchResult, PacedSource
from watcher.store import OutboxFull, PollRecord, StateStore, StateUpdate


class EventDelivery(Protocol):
    """Where a poll's new state and events go."""

    async def deliver(self, update: StateUpdate, events: Sequence[Event]) -> None:
        """Make the state and the events durable together, or raise and change nothing."""


class OutboxDelivery:
    """The daemon's delivery: state and events in one transaction, then the relay is woken."""

    def __init__(
        self, store: StateStore, wake: Callable[[], None], on_event: Callable[[Event], None] | None = None
    ) -> None:
        self._store = store
        self._wake = wake
        self._on_event = on_event

    async def deliver(self, update: StateUpdate, events: Sequence[Event]) -> None:
        await self._store.commit(update, events)
        if events:
            self._wake()
        if self._on_event is not None:
            for event in events:
                self._on_event(event)


class PrintOnlyDelivery:
    """`once --no-publish`: show the events, keep no state, publish nothing."""

    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event

    async def deliver(self, update: StateUpdate, events: Sequence[Event]) -> None:
        for event in events:
            self._on_event(event)


# The longest a call waits for its PSD2 budget inside a round, rather than skip the round.
MAX_PACING_WAIT_S = 60.0


class RulesHolder:
    """The rules in force; SIGHUP swaps them between poll calls, never during one."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: CompiledRules = compile_rules(rules)

    def replace(self, rules: Sequence[Rule]) -> None:
        """Compile first, so that a bad set raises before anything changes."""
        self.rules = compile_rules(rules)


@dataclass
class RoundSummary:
    """What one round of one source did, for the round's log line and the service status."""

    source: str
    calls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    observations: int = 0
    events: int = 0
    delivery_failures: int = 0
    deferred: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcomes["ok"] == self.calls and self.delivery_failures == 0


class Poller:
    """Polls one source. Built once by the composition root; `poll_round` runs one round."""

    def __init__(
        self,
        source: BalanceSource,
        store: StateStore,
        delivery: EventDelivery,
        rules: RulesHolder,
        clock: Callable[[], datetime],
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.source = source
        # Shared by every poller and the daemon's tick: evaluation and its commit are one step.
        self._lock = lock or asyncio.Lock()
        self._store = store
        self._delivery = delivery
        self._rules = rules
        self._clock = clock
        self._log = structlog.get_logger("watcher.poll").bind(source=source.name)
        self.metrics: Metrics | None = None

    def _poll_outcome(self, result: FetchResult) -> PollOutcome:
        """The call as the staleness rules see it: which accounts it covered, and how it went."""
        if result.target != WHOLE_SOURCE:
            accounts: tuple[str, ...] = (result.target,)
        elif result.outcome == "ok":
            accounts = tuple(dict.fromkeys(o.key.account for o in result.observations))
        else:  # a failed listing leaves every account of the source unanswered
            accounts = tuple(
                dict.fromkeys(k.account for k in self._store.all_known() if k.source == self.source.name)
            )
        return PollOutcome(
            source=self.source.name,
            at=self._clock(),
            accounts=accounts,
            ok=result.outcome == "ok",
            reason=result.error if result.outcome != "ok" else None,
            access_revoked=result.access_revoked or result.outcome == "access_revoked",
        )

    def _description(self, key: BalanceKey) -> str | None:
        known = self._store.known(key)
        return known.description if known is not None else None

    async def poll_round(self) -> RoundSummary:
        """Make every call of one round, at most max_concurrency at once, each processed as it lands."""
        started = time.monotonic()
        summary = RoundSummary(source=self.source.name)
        limit = asyncio.Semaphore(self.source.max_concurrency)
        records: list[PollRecord] = []
        async with asyncio.TaskGroup() as group:
            for target in self.source.targets():
                group.create_task(self._call(target, limit, summary, records))
        summary.duration_s = time.monotonic() - started
        try:
            await self._store.record_polls(records)
        except Exception as exc:  # the outcome record is bookkeeping; the round itself is done
            self._log.error("poll records not saved", account="*", correlation_id="", error=repr(exc))
        self._log.info(
            "poll round",
            account="*",
            correlation_id="",
            calls=summary.calls,
            outcomes=dict(summary.outcomes),
            observations=summary.observations,
            events=summary.events,
            delivery_failures=summary.delivery_failures,
            deferred=summary.deferred,
            duration_ms=round(summary.duration_s * 1000, 1),
        )
        return summary

    async def _paced(self, target: str) -> bool:
        """PSD2 sources have a daily access budget: a call that would exceed it is deferred to a later
        round (a few seconds early, as jitter may make it, it waits instead). Never refused by the API."""
        if not isinstance(self.source, PacedSource):
            return True
        now = self._clock()
        allowed = self.source.next_allowed(target, now)
        if allowed is None:  # access revoked: fetch answers that at once, without a request
            return True
        wait = (allowed - now).total_seconds()
        if wait <= 0:
            return True
        if wait <= MAX_PACING_WAIT_S:
            await asyncio.sleep(wait)
            return True
        self._log.info("call deferred to stay inside the daily access budget", account=target,
                       correlation_id="", next_allowed=allowed.isoformat())
        return False

    async def _call(
        self, target: str, limit: asyncio.Semaphore, summary: RoundSummary, records: list[PollRecord]
    ) -> None:
        if not await self._paced(target):
            summary.deferred += 1
            return
        async with limit:
            try:
                result = await self.source.fetch(target)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a source bug must not stop the other accounts
                result = FetchResult(
                    self.source.name, target, "bad_response", "", error=f"unexpected error: {exc!r}"
                )
        summary.calls += 1
        summary.outcomes[result.outcome] += 1
        if self.metrics is not None:
            self.metrics.observe_call(self.source.name, result.duration_s)
        log = self._log.bind(account=target, correlation_id=result.correlation_id)
        fields: dict[str, object] = {
            "outcome": result.outcome,
            "http_status": result.http_status,
            "duration_ms": round(result.duration_s * 1000, 1),
            "attempts": result.attempts,
        }
        if result.outcome != "ok":
            if result.reason_code:
                fields["reason_code"] = result.reason_code
            if result.retry_after_s is not None:
                fields["retry_after_s"] = result.retry_after_s
            if result.access_revoked:
                fields["access_revoked"] = True
            log.warning("poll failed", error=result.error, **fields)
            if self._rules.rules.has_stale_rules:
                # A failure never resolves anything, but it can make an account or the source stale.
                try:
                    await self._process(result, log)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("processing failed", error=repr(exc))
        else:
            for reason in result.rejected:
                log.warning("entry rejected", error=reason)
            try:
                published = await self._process(result, log)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the state store failed: this call is lost, not the round
                log.error("processing failed; state not advanced, the next poll retries", error=repr(exc))
                published = None
            summary.observations += len(result.observations)
            if published is None:
                summary.delivery_failures += 1
            else:
                summary.events += published
            log.info("poll", balances=len(result.observations), events=published, **fields)
        records.append(
            PollRecord(
                source=self.source.name,
                target=target,
                polled_at=self._clock(),
                outcome=result.outcome,
                http_status=result.http_status,
                correlation_id=result.correlation_id,
                error=result.error,
                last_success_at=self._clock() if result.outcome == "ok" else None,
            )
        )

    async def _process(self, result: FetchResult, log: structlog.typing.FilteringBoundLogger) -> int | None:
        """Assess and deliver. Returns the number of events delivered, None when delivery failed.

        Under the evaluation lock: alert states read here must not change before this call's new
        states are stored (another call of a whole-source listing, or the daemon's tick)."""
        async with self._lock:
            return await self._assess_and_deliver(result, log)

    async def _assess_and_deliver(
        self, result: FetchResult, log: structlog.typing.FilteringBoundLogger
    ) -> int | None:
        rules = self._rules.rules
        store = self._store
        source_alerts = store.alerts(subject_key(self.source.name))
        assessments: list[Assessment] = [
            assess(obs, store.known(obs.key), rules, {**source_alerts, **store.alerts(obs.key)})
            for obs in result.observations
        ]
        events: list[Event] = [e for a in assessments for e in events_of(a)]
        alerts = [alert for a in assessments for alert in a.alerts]
        freshness: tuple[Freshness, ...] = ()
        if rules.has_stale_rules:
            polled = self._poll_outcome(result)
            stale = assess_poll(polled, rules, store.freshness, store.alerts)
            freshness = stale.freshness
            alerts += stale.alerts
            provider = self.source.provider
            events += [alert_event(t, provider, self._description(t.state.key)) for t in stale.transitions]
        update = StateUpdate(
            balances=[(a.key, a.known) for a in assessments if a.change is not None],
            alerts=alerts,
            freshness=freshness,
        )
        try:
            await self._delivery.deliver(update, events)
        except OutboxFull as exc:
            log.error("OUTBOX FULL: state not advanced, the next poll retries; is Kafka reachable?",
                      error=str(exc))
            return None
        return len(events)
