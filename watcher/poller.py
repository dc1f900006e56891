"""One poll round of one source: fetch, compare and evaluate, then hand the new state and its events
to the delivery, which writes both in one transaction (the outbox) for the relay to publish.

A round runs `max_concurrency` workers that pull the round's calls from one iterator. Each call's
result is assessed under the evaluation lock (shared with the alert clock) and staged with the store,
which applies it to memory at once; durability is awaited outside the lock, so that calls are not
serialised behind each other's disk writes (the store writes them in groups). A big listing is
processed in slices, the lock taken per slice, so that the event loop (heartbeats, the relay) runs
during a round of 100,000 accounts.

If that write fails (the outbox is full, the disk is), the state stays as it was and the next poll
derives the same events again, with the same ids: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, KeysView, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Protocol

import structlog

from rules.engine import CompiledRules, assess, compile_rules, quiet_when_unchanged
from rules.model import Rule
from rules.staleness import assess_poll
from rules.types import (
    WHOLE_SOURCE,
    AlertState,
    BalanceKey,
    Freshness,
    KnownBalance,
    Observation,
    PollOutcome,
    subject_key,
)
from watcher.events import Event, alert_event, events_of
from watcher.metrics import Metrics
from watcher.sources.base import BalanceSource, FetchResult, PacedSource, SharesKnown
from watcher.store import OutboxFull, PollRecord, StateStore, StateUpdate

# Observations of one result assessed and staged under one hold of the evaluation lock: a listing of
# 100,000 accounts lets the loop run between its slices.
SLICE_SIZE = 2_000
# The outcomes of a round's calls are saved in batches of this many as the round goes: a round of
# 100,000 accounts polled one by one would otherwise hold ~22 MiB of them until its end.
POLL_RECORDS_BATCH = 1_000


class EventDelivery(Protocol):
    """Where a poll's new state and events go."""

    def stage(self, update: StateUpdate, events: Sequence[Event]) -> Awaitable[None]:
        """Take the state and the events now: call it under the evaluation lock, in the same synchronous
        step as the reads they were derived from. Await the result outside the lock: it completes once
        both are durable together, or raises, and then nothing of them is kept. Raises OutboxFull at
        once, taking nothing."""


class _Done:
    """An awaitable that is complete already."""

    def __await__(self) -> Generator[None, None, None]:
        yield from ()


class OutboxDelivery:
    """The daemon's delivery: state and events in one transaction (group-committed), then, once durable,
    the relay is woken and `on_event` sees the events."""

    def __init__(
        self, store: StateStore, wake: Callable[[], None], on_event: Callable[[Event], None] | None = None
    ) -> None:
        self._store = store
        self._wake = wake
        self._on_event = on_event

    def stage(self, update: StateUpdate, events: Sequence[Event]) -> Awaitable[None]:
        staged = self._store.stage(update, events)
        if events:
            staged.on_durable(partial(self._durable, tuple(events)))
        return staged

    def _durable(self, events: tuple[Event, ...]) -> None:
        self._wake()
        if self._on_event is not None:
            for event in events:
                self._on_event(event)


class PrintOnlyDelivery:
    """`once --no-publish`: show the events, keep no state, publish nothing."""

    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event

    def stage(self, update: StateUpdate, events: Sequence[Event]) -> Awaitable[None]:
        for event in events:
            self._on_event(event)
        return _Done()


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
        self._store = store
        self.source = source
        # Shared by every poller and the daemon's tick: an evaluation and the staging of its result are
        # one step (the store applies a staged update to memory at once; durability comes after).
        self._lock = lock or asyncio.Lock()
        self._delivery = delivery
        self._rules = rules
        self._clock = clock
        self._log = structlog.get_logger("watcher.poll").bind(source=source.name)
        self.metrics: Metrics | None = None

    @property
    def source(self) -> BalanceSource:
        """The source polled; a config reload may replace it between rounds."""
        return self._source

    @source.setter
    def source(self, source: BalanceSource) -> None:
        self._source = source
        # A runtime Protocol check is slow: made once per source, not per call.
        self._paced: PacedSource | None = source if isinstance(source, PacedSource) else None
        if isinstance(source, SharesKnown):
            source.share_known(self._store.known, self._quiet_unchanged)

    def _quiet_unchanged(self, key: BalanceKey, known: KnownBalance, at: datetime) -> bool:
        """Whether observing `known` again at `at` would lead to nothing, judged as `_stage` would judge
        it: by the same rules (the listing is parsed inside `fetch`, and `_process` reads the rules with
        no await since) and the key's alert states (only the key's own count: see
        rules.engine.quiet_when_unchanged). An alert state that changes between the parse and the stage
        cannot break it: the alert clock never makes a balance alert active (only an observation does),
        and the one call of a listing is the only one observing its keys."""
        return quiet_when_unchanged(key, known, at, self._rules.rules, self._store.alerts_view(key))

    def _poll_outcome(self, result: FetchResult) -> tuple[PollOutcome, Callable[[str], BalanceKey]]:
        """The call as the staleness rules see it: which accounts it covered, and how it went; and the
        subject key of each of those accounts: its observations' own key object when that key is the
        account's subject key (one balance per account, as Mastercard's), so that the freshness records
        of a first listing of 100,000 accounts, or of an account polled on its own, hold no keys of their
        own."""
        source = self.source.name
        keys: Mapping[str, BalanceKey] = {}
        accounts: tuple[str, ...] | KeysView[str]
        if result.target != WHOLE_SOURCE:
            accounts = (result.target,)
            keys = _accounts(result)  # the account's own key, when its answer has one (see subject)
        elif result.outcome == "ok":
            keys = _accounts(result)
            accounts = keys.keys()
        else:  # a failed listing leaves every account of the source unanswered
            accounts = tuple(dict.fromkeys(k.account for k in self._store.known_view() if k.source == source))

        def subject(account: str) -> BalanceKey:
            found = keys.get(account)
            if found is not None and found.balance_type == "" and found.source == source:
                return found
            return subject_key(source, account)

        outcome = PollOutcome(
            source=source,
            at=self._clock(),
            accounts=accounts,
            ok=result.outcome == "ok",
            reason=result.error if result.outcome != "ok" else None,
            access_revoked=result.access_revoked or result.outcome == "access_revoked",
            listing=result.target == WHOLE_SOURCE,
        )
        return outcome, subject

    def _description(self, key: BalanceKey) -> str | None:
        known = self._store.known(key)
        return known.description if known is not None else None

    async def poll_round(self) -> RoundSummary:
        """Make every call of one round, at most max_concurrency at once, each processed as it lands.

        `max_concurrency` workers pull the calls from one iterator (not one task per account). A call
        that must wait a little for its PSD2 budget is set aside, not waited for by its worker: it is
        made once due, when the worker has nothing else to do, or sooner."""
        started = time.monotonic()
        source = self.source
        summary = RoundSummary(source=source.name)
        records: list[PollRecord] = []
        targets = source.targets()
        pending = iter(targets)
        later: list[tuple[float, int, str]] = []  # (due on the monotonic clock, order, target)
        order = itertools.count()

        async def worker() -> None:
            while True:
                if later and later[0][0] <= time.monotonic():
                    target = heapq.heappop(later)[2]
                else:
                    upcoming = next(pending, None)
                    if upcoming is None:
                        if not later:
                            return
                        due, _, target = heapq.heappop(later)
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    else:
                        target = upcoming
                        wait = self._pacing_wait(target)
                        if wait is None:
                            summary.deferred += 1
                            continue
                        if wait > 0:
                            heapq.heappush(later, (time.monotonic() + wait, next(order), target))
                            continue
                await self._call(target, summary, records)

        if targets:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, min(source.max_concurrency, len(targets)))):
                    group.create_task(worker())
                    # One worker's first call a loop turn: 64 started at once signed and sent 64 requests
                    # in one turn (~50 ms), while the first answers waited to be read (bench/README.md).
                    await asyncio.sleep(0)
        summary.duration_s = time.monotonic() - started
        await self._save_records(records)
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

    async def _save_records(self, records: list[PollRecord]) -> None:
        """Save the outcomes gathered so far and empty `records` (at once, before any await: the round's
        other workers go on appending to it)."""
        batch = records[:]
        records.clear()
        try:
            await self._store.record_polls(batch)
        except Exception as exc:  # the outcome record is bookkeeping; the polls themselves are done
            self._log.error("poll records not saved", account="*", correlation_id="", error=repr(exc))

    def _pacing_wait(self, target: str) -> float | None:
        """PSD2 sources have a daily access budget: seconds to wait before calling (0: now), or None when
        the call is deferred to a later round (a few seconds early, as jitter may make it, it waits
        instead). Never refused by the API."""
        paced = self._paced
        if paced is None:
            return 0.0
        now = self._clock()
        allowed = paced.next_allowed(target, now)
        if allowed is None:  # access revoked: fetch answers that at once, without a request
            return 0.0
        wait = (allowed - now).total_seconds()
        if wait <= 0:
            return 0.0
        if wait <= MAX_PACING_WAIT_S:
            return wait
        self._log.info("call deferred to stay inside the daily access budget", account=target,
                       correlation_id="", next_allowed=allowed.isoformat())
        return None

    async def _call(self, target: str, summary: RoundSummary, records: list[PollRecord]) -> None:
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
                    await self._process(result, [], log)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("processing failed", error=repr(exc))
        else:
            for reason in result.rejected:
                log.warning("entry rejected", error=reason)
            count = len(result.observations) + result.unchanged
            pending = list(result.observations)
            if len(pending) > SLICE_SIZE:
                # A listing's observations are let go slice by slice as they are staged, not all held to
                # the end of its round (11 MiB for 100,000): `pending` is then their only holder.
                result = replace(result, observations=(), accounts=_accounts(result))
            try:
                published = await self._process(result, pending, log)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the state store failed: this call is lost, not the round
                log.error("processing failed; state not advanced, the next poll retries", error=repr(exc))
                published = None
            summary.observations += count
            if published is None:
                summary.delivery_failures += 1
            else:
                summary.events += published
            log.info("poll", balances=count, events=published, **fields)
        now = self._clock()
        records.append(
            PollRecord(
                source=self.source.name,
                target=target,
                polled_at=now,
                outcome=result.outcome,
                http_status=result.http_status,
                correlation_id=result.correlation_id,
                error=result.error,
                last_success_at=now if result.outcome == "ok" else None,
            )
        )
        if len(records) >= POLL_RECORDS_BATCH:
            await self._save_records(records)

    async def _process(
        self, result: FetchResult, pending: list[Observation], log: structlog.typing.FilteringBoundLogger
    ) -> int | None:
        """Assess and deliver `pending`, the call's observations, taking them out of the list a slice at a
        time. Returns the number of events delivered, None when the outbox is full; raises when the state
        could not be written (the state is then as it was before that part).

        Assessing and staging are under the evaluation lock: alert states read here must not change
        before this call's new states are staged (another call of a whole-source listing, or the
        daemon's tick). The store applies a staged update to memory at once, so the lock is released
        before the write is awaited."""
        # One call is evaluated against one set of rules, even if SIGHUP swaps them between its slices.
        rules = self._rules.rules
        delivered = 0
        in_flight: Awaitable[None] | None = None  # the previous slice's write: at most one waits
        while True:
            part = pending[:SLICE_SIZE]
            del pending[:SLICE_SIZE]
            last = not pending
            try:
                async with self._lock:
                    staged, events = self._stage(result, part, rules, staleness=last)
            except OutboxFull as exc:
                log.error("OUTBOX FULL: state not advanced, the next poll retries; is Kafka reachable?",
                          error=str(exc))
                if in_flight is not None:
                    await in_flight  # the slices before this one are kept
                return None
            delivered += events
            if in_flight is not None:
                await in_flight
            in_flight = staged
            if last:
                break
            await asyncio.sleep(0)  # heartbeats, the relay, other calls: between slices
        await in_flight
        return delivered

    def _stage(
        self,
        result: FetchResult,
        observations: Sequence[Observation],
        rules: CompiledRules,
        *,
        staleness: bool,
    ) -> tuple[Awaitable[None], int]:
        """Assess one slice of a result and stage its state and events (synchronous: under the lock).
        The staleness of the call is assessed once, with its last slice."""
        store = self._store
        known_of = store.known
        alerts_of = store.alerts_view
        source_alerts = alerts_of(subject_key(self.source.name))
        balances: list[tuple[BalanceKey, KnownBalance]] = []
        alerts: list[AlertState] = []
        events: list[Event] = []
        for obs in observations:
            key_alerts = alerts_of(obs.key)
            merged: Mapping[str, AlertState]
            if not key_alerts:
                merged = source_alerts
            elif not source_alerts:
                merged = key_alerts
            else:
                merged = {**source_alerts, **key_alerts}
            known = known_of(obs.key)
            assessment = assess(obs, known, rules, merged)
            if assessment.known is not known:  # a change, or the same balance under a new description
                balances.append((assessment.key, assessment.known))
            if assessment.alerts:
                alerts.extend(assessment.alerts)
            if assessment.change is not None or assessment.transitions:
                events.extend(events_of(assessment))
        freshness: Sequence[Freshness] = ()
        if staleness and rules.has_stale_rules:
            outcome, subject_of = self._poll_outcome(result)
            stale = assess_poll(
                outcome, rules, store.freshness, alerts_of,
                listed_of=store.listed_accounts, active_keys=store.active_alert_keys, subject_of=subject_of,
            )
            freshness = stale.freshness
            alerts.extend(stale.alerts)
            provider = self.source.provider
            events.extend(alert_event(t, provider, self._description(t.state.key)) for t in stale.transitions)
        update = StateUpdate(balances=balances, alerts=alerts, freshness=freshness)
        return self._delivery.stage(update, events), len(events)


def _accounts(result: FetchResult) -> Mapping[str, BalanceKey]:
    """The accounts a listing answered for, each once in order, with their observations' (first) key: the
    source's own index when it keeps one (no copy of 100,000), else made from the observations."""
    if result.accounts is not None:
        return result.accounts
    # Accounts left out unchanged are only among the source's own index.
    assert not result.unchanged, "a result that left accounts out must name its accounts"
    made: dict[str, BalanceKey] = {}
    for o in result.observations:
        made.setdefault(o.key.account, o.key)
    return made
