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
    ) -> None:
        self._patience_s = patience_s
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
        """Publish batches until the outbox is empty; returns how many events went out.
        Raises PublishError when Kafka does not acknowledge a batch (nothing of it is forgotten)."""
        sent = 0
        while True:
            batch = await self._store.outbox_batch(self._batch_size)
            if not batch:
                return sent
            try:
                await self._send_watched(batch)
            except PublishError:
                if self.metrics is not None:
                    self.metrics.events_not_sent(e.topic for e in batch)
                raise
            if self.metrics is not None:
                self.metrics.events_sent(e.topic for e in batch)
            self._store.acknowledge(batch)
            sent += len(batch)
            self.published += len(batch)

    async def _send_watched(self, batch: list[OutboxEntry]) -> None:
        """Send one batch; while Kafka is away the producer keeps retrying on its own, so rather than
        cancel (and resend) we wait, and say so at every `patience_s` that passes."""
        send = asyncio.ensure_future(self._publisher.send(batch))
        waited = 0.0
        try:
            while True:
                done, _ = await asyncio.wait({send}, timeout=self._patience_s)
                if done:
                    send.result()
                    if waited:
                        log.info("Kafka acknowledged again", waited_s=round(waited, 1),
                                 outbox_depth=self._store.outbox_depth)
                    return
                waited += self._patience_s
                log.warning("Kafka has not acknowledged yet; the events wait in the outbox",
                            waited_s=round(waited, 1), outbox_depth=self._store.outbox_depth)
        finally:
            if not send.done():
                send.cancel()
                with contextlib.suppress(asyncio.CancelledError, PublishError):
                    await send

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
