"""The outbox relay: publishes the outbox to Kafka in order, and forgets each event once acknowledged.

Polling never waits for Kafka: a poll writes its new state and its events in one transaction, and the
relay moves the events on. While Kafka is away the outbox grows (up to its bound) and drains, with
the same ids, when Kafka returns.

The store hands the relay committed events from memory (no SELECT per batch through its busy worker
thread) and deletes acknowledged ones as one range (`seq <= last`) with its next group commit; the
outbox table stays the durable copy until Kafka acknowledged, and the relay reads it after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from typing import Any

import structlog

from watcher.metrics import Metrics
from watcher.publisher import KafkaPublisher, PublishError
from watcher.store import OutboxEntry, StateStore, StateWriteError

log = structlog.get_logger("watcher.relay")


class OutboxRelay:
    """Owned by the daemon: `run` until `stop()`, then `drain` what it can within the grace period."""

    def __init__(
        self,
        store: StateStore,
        publisher: KafkaPublisher,
        batch_size: int = 1000,
        retry_max_s: float = 30.0,
        patience_s: float = 10.0,
        max_in_flight: int = 4,
    ) -> None:
        self._patience_s = patience_s
        self._max_in_flight = max_in_flight
        self._waited = 0.0  # seconds the oldest batch has waited for Kafka, as last said (0: not said)
        self._store = store
        self._publisher = publisher
        self._batch_size = batch_size
        self._retry_max_s = retry_max_s
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0
        self.failures = 0
        self.metrics: Metrics | None = None

    def wake(self) -> None:
        """New events are in the outbox."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish until the outbox is empty; returns how many events went out. Raises PublishError
        when Kafka does not acknowledge a batch (nothing of it, or after it, is forgotten).

        Up to `max_in_flight` batches are handed to the producer before the first is acknowledged, so
        events made durable meanwhile go out with the producer's next request instead of waiting for
        the previous acknowledgement and a turn of the relay. Batches are acknowledged in order."""
        sent = 0
        # Each batch in flight with its acknowledgement and when it was handed to the producer.
        in_flight: deque[tuple[list[OutboxEntry], asyncio.Future[None], float]] = deque()
        handed = 0  # events in flight
        try:
            while True:
                self._wake.clear()
                while len(in_flight) < self._max_in_flight:
                    batch = await self._store.outbox_batch(self._batch_size, skip=handed)
                    if not batch:
                        break
                    appending = asyncio.ensure_future(self._publisher.append(batch))
                    since = time.monotonic()
                    try:
                        while not await self._wait(appending, since=since):
                            pass  # the producer waits for room or for the broker's metadata
                    finally:
                        if not appending.done():
                            appending.cancel()
                    acked = appending.result()
                    acked.add_done_callback(_retrieve)
                    in_flight.append((batch, acked, since))
                    handed += len(batch)
                if not in_flight:
                    return sent
                batch, acked, since = in_flight[0]
                if not acked.done():
                    await self._wait(acked, since=since, or_new_events=len(in_flight) < self._max_in_flight)
                    continue  # acknowledged, or new events to hand over first
                in_flight.popleft()
                handed -= len(batch)
                try:
                    acked.result()
                except PublishError:
                    if self.metrics is not None:
                        self.metrics.events_not_sent(e.topic for e in batch)
                    raise
                if self._waited:
                    log.info("Kafka acknowledged again", waited_s=round(self._waited, 1),
                             outbox_depth=self._store.outbox_depth)
                    self._waited = 0.0
                if self.metrics is not None:
                    self.metrics.events_sent(e.topic for e in batch)
                self._store.acknowledge(batch)
                sent += len(batch)
                self.published += len(batch)
        finally:
            # Left in flight after a failure (or a cancel): never acknowledged here, so sent again.
            for _, acked, _ in in_flight:
                acked.cancel()

    async def _wait(self, future: asyncio.Future[Any], *, since: float, or_new_events: bool = False) -> bool:
        """Until `future` (waited for since `since`, on the monotonic clock) is done or, if asked, new
        events are in the outbox: True. False, having said so, at each `patience_s` it has waited: while
        Kafka is away the producer retries on its own, so rather than cancel (and resend) we wait."""
        woken: asyncio.Future[Any] | None = None
        waiting: set[asyncio.Future[Any]] = {future}
        if or_new_events:
            woken = asyncio.ensure_future(self._wake.wait())
            waiting.add(woken)
        try:
            due = since + self._waited + self._patience_s  # the next time to say it still waits
            done, _ = await asyncio.wait(
                waiting, timeout=max(0.0, due - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if woken is not None and not woken.done():
                woken.cancel()
        if done:
            return True
        self._waited = time.monotonic() - since
        log.warning("Kafka has not acknowledged yet; the events wait in the outbox",
                    waited_s=round(self._waited, 1), outbox_depth=self._store.outbox_depth)
        return False

    async def run(self) -> None:
        """Publish whenever woken; on failure retry with capped exponential backoff and jitter."""
        delay = 0.5
        while not self._stopping:
            self._wake.clear()
            try:
                await self.publish_pending()
                delay = 0.5
            except Exception as exc:  # Kafka refused, or reading the outbox failed: nothing is forgotten
                self.failures += 1
                log.error(
                    "Kafka did not acknowledge; the events stay in the outbox and are sent again"
                    if isinstance(exc, PublishError) else "the outbox could not be read; retrying",
                    outbox_depth=self._store.outbox_depth,
                    retry_in_s=round(delay, 1),
                    error=str(exc) if isinstance(exc, PublishError) else repr(exc),
                )
                await self._sleep_or_stop(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._retry_max_s)
                continue
            if not self._stopping:
                await self._wake.wait()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def drain(self, timeout_s: float) -> bool:
        """At shutdown: publish what is left, for at most `timeout_s`. True when the outbox is empty;
        whatever is left stays durable for the next start."""
        deadline = time.monotonic() + timeout_s
        while self._store.outbox_depth > 0 and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._drain_once(), max(0.1, deadline - time.monotonic()))
            except (PublishError, StateWriteError, TimeoutError) as exc:
                log.warning("outbox not drained yet", outbox_depth=self._store.outbox_depth, error=str(exc))
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        with contextlib.suppress(StateWriteError):
            await self._store.flush()  # the acknowledged rows deleted, not sent again at the next start
        if self._store.outbox_depth > 0:
            log.warning("stopping with events in the outbox; they are sent at the next start",
                        outbox_depth=self._store.outbox_depth)
            return False
        return True

    async def _drain_once(self) -> None:
        # Staged events count in the depth before they are durable; wait for them rather than spin.
        await self._store.flush()
        if not await self.publish_pending():
            await asyncio.sleep(0.05)


def _retrieve(future: asyncio.Future[None]) -> None:
    """A batch's acknowledgement that fails after the relay gave up on it is not an unhandled error."""
    if not future.cancelled():
        future.exception()
