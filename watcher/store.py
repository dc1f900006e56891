"""The state store: last known balances, alert states, poll outcomes and the event outbox, in SQLite.

The state is loaded into memory when the store opens: reads are dictionary look-ups on the poll path.
Beyond `hot_keys`, the records of the accounts polled one by one that went longest unused leave memory
once durable (watcher.disk_records: only their keys stay, and a read fetches them back by primary key),
or are held packed to bytes while a write of theirs is pending or an alert of theirs is active
(watcher.packed, watcher.hot_keys).

A poll's new state and the events it implies are one update, written in ONE transaction (the outbox),
so a crash leaves either the old state and no events, or the new state and all its events, which the
relay then publishes.

Group commit: `stage()` applies an update to memory at once (under the caller's evaluation lock) and
queues it; one writer task writes every queued update in one transaction on the store's worker thread
(one executor hop and one sync per batch, not per poll; the statements are in watcher.store_db), and
the caller awaits durability outside its lock. If a batch cannot be written, every update of it and
every update queued after it (derived from memory that had the failed ones applied) fails, nothing new
is staged until memory is reloaded from SQLite, and so memory never runs ahead of disk: the next poll
derives the same events again, with the same ids.

Committed events also stay in memory (bounded) until Kafka acknowledged them, so the relay takes its
batches without a SELECT through the busy worker thread; after a restart, a failed write, or when that
memory overflowed, it reads them from the outbox table, which stays the durable copy until the
acknowledgement.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, KeysView, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from rules.types import (
    ACTIVE_STATUSES,
    WHOLE_SOURCE,
    AlertState,
    BalanceKey,
    Freshness,
    KnownBalance,
)
from watcher import store_db
from watcher.alert_records import AlertRecords
from watcher.disk_records import (
    ALERT_COLUMNS,
    BALANCE_COLUMNS,
    FRESHNESS_COLUMNS,
    DiskReader,
    Moments,
    Sharing,
    alert_of,
    freshness_of,
    known_of,
)
from watcher.events import Event
from watcher.freshness_records import FreshnessRecords
from watcher.hot_keys import HotKeys
from watcher.known_records import KnownRecords
from watcher.store_db import OutboxEntry as OutboxEntry
from watcher.store_db import PollRecord as PollRecord
from watcher.store_db import StateUpdate as StateUpdate
from watcher.wal_checkpointer import CHECKPOINT_PERIOD_S, WalCheckpointer

log = structlog.get_logger("watcher.store")
_Args = ParamSpec("_Args")
_Result = TypeVar("_Result")


class OutboxFull(Exception):
    """The outbox holds as many events as it may; nothing of this poll was written."""


class StateWriteError(Exception):
    """A staged update was not written: its batch failed, or an earlier one did (or the store is still
    reloading from disk after such a failure). Memory is reloaded from SQLite, so the update is lost as
    if it had never been made, and the next poll derives it again, with the same event ids."""


_NOTHING = StateUpdate(balances=(), alerts=())


def _retrieve(future: asyncio.Future[None]) -> None:
    # A caller may drop a staged commit without awaiting it (e.g. its task was cancelled): its failure
    # is logged by the writer, not again as "exception never retrieved".
    if not future.cancelled():
        future.exception()


class StagedCommit:
    """An update applied to memory and queued for the writer. Await it (outside the evaluation lock)
    until it is durable: it raises StateWriteError when it was not written."""

    __slots__ = ("_future", "events", "update")

    def __init__(self, update: StateUpdate, events: tuple[Event, ...], future: asyncio.Future[None]) -> None:
        self.update = update
        self.events = events
        self._future = future
        future.add_done_callback(_retrieve)

    def __await__(self) -> Generator[Any, None, None]:
        return self._future.__await__()

    def done(self) -> bool:
        """Written, or failed."""
        return self._future.done()

    def on_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the event loop once the update is durable; never if it fails."""

        def fire(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                callback()

        self._future.add_done_callback(fire)


@dataclass(slots=True)
class _Snapshot:
    """The durable state as loaded from SQLite."""

    known: KnownRecords
    alerts: AlertRecords
    freshness: FreshnessRecords
    outbox_depth: int
    first_seq: int | None  # the oldest event of the outbox; None when it is empty
    last_seq: int  # the highest seq the outbox ever used; 0 for none


class StateStore:
    """Last known balances and alert states, in memory and durably in SQLite."""

    def __init__(
        self,
        path: Path,
        outbox_limit: int = 1_000_000,
        outbox_memory_limit: int = 10_000,
        checkpoint_period_s: float = CHECKPOINT_PERIOD_S,
        hot_keys: int = 10_000,
    ) -> None:
        self.path = path
        self.outbox_limit = outbox_limit
        # Committed events kept in memory for the relay, at most; beyond it the relay reads the table. An
        # event costs ~1.1 KB in memory: while Kafka lags, 10,000 of them are ~11 MiB (50,000 were ~53).
        self.outbox_memory_limit = outbox_memory_limit
        # Events staged or in the outbox, and not yet acknowledged by Kafka.
        self.outbox_depth = 0
        # Transactions the group commit wrote (each one executor hop and one sync).
        self.group_commits = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-store")
        self._db: sqlite3.Connection | None = None
        self.checkpointer = WalCheckpointer(path, checkpoint_period_s)
        # The keys of accounts polled one by one whose records are objects; beyond `hot_keys` of them, the
        # records of the oldest leave memory (or are packed) until they are read again.
        self._hot = HotKeys(hot_keys)
        self._disk = DiskReader()  # reads back the records that left memory
        self._known = KnownRecords(self._hot, self._disk.known)
        # Every alert state, with an index of the pending and firing ones: what time alone can move (the
        # alert clock's tick), without a walk over every state of every key.
        self._alerts = AlertRecords(hot=self._hot, load=self._disk.alerts)
        self._accesses: dict[tuple[str, str], list[datetime]] = {}
        self._freshness = FreshnessRecords(hot=self._hot, load=self._disk.freshness)
        # Keys whose alerts or freshness changed since the alert clock last asked (None: every key).
        self._touched: set[BalanceKey] | None = None
        self._touched_sources: set[str] = set()  # sources whose own (source-wide) alerts changed
        # The group commit: staged updates waiting for the writer, and the batch it is writing.
        self._queue: list[StagedCommit] = []
        self._writing: list[StagedCommit] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # Set from a failed write until memory is reloaded: nothing may be staged meanwhile.
        self._recovering: BaseException | None = None
        self._next_seq = 1
        # The outbox in memory: every committed, unacknowledged event with seq > _disk_only_through,
        # in order. Events up to _disk_only_through may be on disk only (the relay SELECTs those).
        self._unpublished: deque[OutboxEntry] = deque()
        self._disk_only_through = 0
        self._acked_through = 0  # Kafka acknowledged every event up to this seq ...
        self._deleted_through = 0  # ... and the outbox rows up to this one are deleted.

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _on_db(
        self, statement: Callable[Concatenate[sqlite3.Connection, _Args], _Result], *args: _Args.args,
        **kwargs: _Args.kwargs,
    ) -> _Result:
        """`statement(the writer's connection, *args)` (watcher.store_db) on the store's thread."""
        db = self._require()
        result: _Result = await self._call(functools.partial(statement, db, *args, **kwargs))
        return result

    async def open(self) -> None:
        """Create the database if needed, load the whole state into memory, start the writer."""
        await self._call(self._open_sync)
        snapshot: _Snapshot = await self._call(self._load_sync)
        self._install(snapshot)
        self.outbox_depth = snapshot.outbox_depth
        self._next_seq = snapshot.last_seq + 1
        self._disk_only_through = snapshot.last_seq
        done = snapshot.first_seq - 1 if snapshot.first_seq is not None else snapshot.last_seq
        self._acked_through = self._deleted_through = done
        self._closing = False
        await self.checkpointer.open()
        self._writer = asyncio.create_task(self._write_loop(), name="state-store-writer")

    def _open_sync(self) -> None:
        self._db = store_db.connect(self.path)
        self._disk.open(self.path)
        self._accesses = store_db.recent_accesses(self._db)

    def _load_sync(self) -> _Snapshot:
        """Read the durable state (at open, and again after a failed write)."""
        db = self._require()
        if db.in_transaction:  # a failed COMMIT may leave its transaction open
            db.execute("ROLLBACK")
        # SQLite hands out a new string per column of every row: the values many rows share (a source, a
        # currency, a state, the time and correlation id of one listing, ...) are kept once, as they are
        # after polling, not 100,000 times over.
        share: Callable[[Any], Any] = Sharing()
        moment = Moments()
        # Freshness first: the records of an account that is not listed stay on disk, not read, until used.
        disk = self._disk
        freshness = FreshnessRecords(hot=self._hot, load=disk.freshness)
        for row in db.execute(f"SELECT {FRESHNESS_COLUMNS} FROM freshness"):
            subject = BalanceKey(share(row[0]), row[1])
            if row[6] or subject.account == WHOLE_SOURCE:  # listed, or a source's own
                freshness.put(freshness_of(row, subject, moment))
            else:
                freshness.put_on_disk(subject)
        known = KnownRecords(self._hot, disk.known)
        for row in db.execute(f"SELECT {BALANCE_COLUMNS} FROM balances"):
            key = BalanceKey(share(row[0]), row[1], share(row[2]))
            if _may_leave_memory(key, freshness):
                known.put_on_disk(key)
            else:
                known.put(key, known_of(row, share, moment, share))
        alerts = AlertRecords(hot=self._hot, load=disk.alerts)
        for row in db.execute(f"SELECT {ALERT_COLUMNS} FROM alerts"):
            key = BalanceKey(share(row[2]), row[3], share(row[4]))
            if not _may_leave_memory(key, freshness):
                alerts.put(alert_of(row, key, share, moment))
            else:  # an active state is converted to be counted, not kept
                active = row[5] in ACTIVE_STATUSES
                alerts.put_on_disk(key, alert_of(row, key, share, moment) if active else None)
        depth, first, last = db.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM outbox").fetchone()
        used = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        last_seq = max(last or 0, used[0] if used else 0)
        return _Snapshot(known, alerts, freshness, depth, first, last_seq)

    def _install(self, snapshot: _Snapshot) -> None:
        self._touched = None  # everything is new
        self._hot.clear()  # what may leave memory was left on disk as it was loaded
        self._known = snapshot.known
        self._alerts = snapshot.alerts
        self._freshness = snapshot.freshness


    async def close(self) -> None:
        """Write what is staged, then close the database and its worker thread."""
        if self._writer is not None:
            self._closing = True
            self._wakeup.set()
            await self._writer
            self._writer = None
        # Before the writer's connection: the last one to close checkpoints the rest and removes the log.
        self._disk.close()
        await self.checkpointer.close()
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # Reads: from memory (staged updates included).
    def known(self, key: BalanceKey) -> KnownBalance | None:
        """The last balance of this key, or None if it was never seen."""
        return self._known.read(key)

    def alerts(self, key: BalanceKey) -> dict[str, AlertState]:
        """The stored alert states of this key, by fingerprint (a copy: callers may not change ours)."""
        return dict(self._alerts.view(key))

    def known_view(self) -> Mapping[BalanceKey, KnownBalance]:
        """Every tracked balance, read-only and without a copy (a packed one is unpacked for each look-up,
        and stays packed). It follows later updates until memory is reloaded after a failed write; take it
        for one step, do not keep it."""
        return self._known

    def alerts_view(self, key: BalanceKey) -> Mapping[str, AlertState]:
        """The alert states of this key, by fingerprint, not to be changed (see AlertRecords.view: no
        copy of the store's): for the poll path. It may follow later updates; do not keep it."""
        return self._alerts.view(key)

    def all_known(self) -> dict[BalanceKey, KnownBalance]:
        """Every tracked balance."""
        return dict(self._known.items())

    def freshness(self, subject: BalanceKey) -> Freshness | None:
        """When this account (or whole source, account "*") last answered, for `stale` rules."""
        return self._freshness.get(subject)

    def listed_accounts(self, source: str) -> Collection[str]:
        """The accounts of `source` whose freshness is its last listing's (a live view: do not keep it)."""
        return self._freshness.listed(source)

    def unlisted_freshness(self) -> list[Freshness]:
        """The freshness records that are not `listed` (the sources' own among them)."""
        return self._freshness.unlisted()

    def unlisted_subjects(self) -> Iterator[BalanceKey]:
        """The subjects of those records, none of them read (walk them at once, without an await)."""
        return self._freshness.unlisted_subjects()

    @property
    def disk_reads(self) -> int:
        """Records read back from the database since the store opened, having left memory."""
        return self._disk.reads

    def take_touched(self) -> tuple[set[BalanceKey], set[str]] | None:
        """For the alert clock, which visits only what changed or is due: the keys whose alert states or
        freshness record changed since the last call, and the sources whose own (source-wide) alert
        states did; None when any may have (memory was reloaded)."""
        touched, sources = self._touched, self._touched_sources
        self._touched, self._touched_sources = set(), set()
        return None if touched is None else (touched, sources)

    def active_alerts(self) -> Iterator[AlertState]:
        """The pending and firing alert states, one at a time (see AlertRecords.active: walk them at once,
        without an await, and make a list if the store may change meanwhile). Those of accounts polled
        one by one may be read back from disk, ~60 us each: prefer the two below where they do."""
        return self._alerts.active()

    def active_alert_keys(self) -> KeysView[BalanceKey]:
        """The keys with a pending or firing alert state, without reading a state (copy it before an
        await)."""
        return self._alerts.active_keys()

    def active_alert_counts(self) -> Mapping[tuple[str, str | None, str], int]:
        """How many alert states are pending or firing, by (rule, severity, status): kept as states are
        put, so counting reads nothing back (copy it before an await)."""
        return self._alerts.counts()

    def all_alerts(self) -> list[AlertState]:
        """Every stored alert state."""
        return list(self._alerts)

    # Writes: visible in memory at once, durable in groups.
    def stage(self, update: StateUpdate, events: Sequence[Event] = ()) -> StagedCommit:
        """Apply the balances, alert states and events of one poll to memory now, and queue them to be
        written in one transaction (with whatever else is queued). Await the result for durability.

        Call it in the same synchronous step as the reads the update was derived from (under the
        evaluation lock), then release the lock and await. Raises OutboxFull, changing nothing, when the
        events would not fit in the outbox; StateWriteError while the store reloads after a failed write.
        """
        loop = asyncio.get_running_loop()
        if not update.balances and not update.alerts and not update.freshness and not events:
            future: asyncio.Future[None] = loop.create_future()
            future.set_result(None)
            return StagedCommit(update, (), future)
        if self._writer is None or self._closing:
            raise RuntimeError("the state store is not open")
        if self._recovering is not None:
            raise StateWriteError(
                f"the state store is reloading after a failed write ({self._recovering!r}); nothing is staged"
            )
        if events and self.outbox_depth + len(events) > self.outbox_limit:
            raise OutboxFull(
                f"the outbox holds {self.outbox_depth} events (limit {self.outbox_limit});"
                f" {len(events)} more do not fit"
            )
        staged = StagedCommit(update, tuple(events), loop.create_future())
        self.outbox_depth += len(events)
        touched, hot, freshness = self._touched, self._hot, self._freshness
        # Freshness first: whether an account is listed now decides whether its records may be packed.
        for fresh in update.freshness:
            freshness.put(fresh)
            # A listed account's record never makes it due (its source's listing does, and the source's
            # own record is not listed); a first listing of 100,000 accounts touches none of them.
            if not fresh.listed:
                if touched is not None:
                    touched.add(fresh.subject)
                if _may_leave_memory(fresh.subject, freshness):
                    hot.add(fresh.subject)
        for key, known in update.balances:
            self._known.put(key, known)
            if _may_leave_memory(key, freshness):
                hot.add(key)
        for alert in update.alerts:
            self._alerts.put(alert)
            if _may_leave_memory(alert.key, freshness):
                hot.add(alert.key)
            if touched is not None:
                touched.add(alert.key)
                if alert.key.account == WHOLE_SOURCE:
                    self._touched_sources.add(alert.key.source)
        self._queue.append(staged)
        self._wakeup.set()
        return staged

    async def commit(self, update: StateUpdate, events: Sequence[Event] = ()) -> None:
        """`stage`, then wait until it is durable: for callers that hold no lock, or keep it anyway.

        Raises OutboxFull, writing nothing, when the events would not fit in the outbox, and
        StateWriteError when the write failed (memory is then reloaded from disk).
        """
        await self.stage(update, events)

    async def flush(self) -> None:
        """Wait until everything staged or acknowledged so far is written.
        Raises StateWriteError when some of it could not be."""
        if not self._queue and not self._writing and self._acked_through <= self._deleted_through:
            return
        if self._writer is None:
            raise RuntimeError("the state store is not open")
        marker = StagedCommit(_NOTHING, (), asyncio.get_running_loop().create_future())
        self._queue.append(marker)
        self._wakeup.set()
        await marker

    async def _write_loop(self) -> None:
        """The one writer: every queued update (and the outbox rows Kafka acknowledged) in one
        transaction, then the next group."""
        while True:
            delete_through = self._acked_through if self._acked_through > self._deleted_through else 0
            if not self._queue and not delete_through:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._queue = self._queue, []
            self._writing = batch
            try:
                entries: list[OutboxEntry] = await self._call(
                    self._write_sync, batch, self._next_seq, delete_through, self.checkpointer.take_tail()
                )
            except asyncio.CancelledError:
                self._recovering = StateWriteError("the state store's writer was cancelled")
                for staged in [*batch, *self._queue]:
                    staged._future.cancel()
                raise
            except Exception as exc:
                await self._recover(batch, exc)
                if self._recovering is not None:  # closing, and the database cannot even be read
                    for staged in self._queue:
                        staged._future.set_exception(StateWriteError("the state store is closing"))
                    self._queue = []
                    return
                continue
            finally:
                self._writing = []
            self.group_commits += 1
            self.checkpointer.written()
            self._deleted_through = max(self._deleted_through, delete_through)
            if entries:
                self._next_seq = entries[-1].seq + 1
                self._remember(entries)
            for staged in batch:
                if not staged._future.done():
                    staged._future.set_result(None)
            # Let go of the batch's updates and events now, not when the next batch replaces them: an idle
            # writer would otherwise keep a first listing's 100,000 events alive after Kafka took them.
            batch, entries = [], []
            self._let_go_overflow()

    def _let_go_overflow(self) -> None:
        """Let go of the records of the keys that went longest unused, beyond the limit of hot keys: out of
        memory when durable, packed when a write of theirs is still queued (memory is then ahead of disk).
        Here, after a group commit, rather than on the poll's path: it is not needed for durability."""
        freshness = self._freshness
        queued: set[BalanceKey] | None = None
        for key in self._hot.overflow():
            if not _may_leave_memory(key, freshness):
                continue  # listed since: a listing reads all its accounts every round
            if queued is None:
                queued = self._queued_keys()
            if key in queued:
                self._known.pack(key)
                self._alerts.pack(key)
                freshness.pack(key)
            else:
                self._known.let_go(key)
                self._alerts.let_go(key)
                freshness.let_go(key)

    def _queued_keys(self) -> set[BalanceKey]:
        """The keys of the updates staged and not yet written (called between two group commits)."""
        keys: set[BalanceKey] = set()
        for staged in self._queue:
            update = staged.update
            keys.update(key for key, _ in update.balances)
            keys.update(alert.key for alert in update.alerts)
            keys.update(fresh.subject for fresh in update.freshness)
        return keys

    def _write_sync(
        self, batch: list[StagedCommit], first_seq: int, delete_through: int, tail: bool = False
    ) -> list[OutboxEntry]:
        return store_db.write_group(
            self._require(),
            [staged.update for staged in batch],
            itertools.chain.from_iterable(staged.events for staged in batch),
            first_seq,
            delete_through,
            tail,
        )

    async def _recover(self, batch: list[StagedCommit], exc: Exception) -> None:
        """A batch failed: fail it and everything queued after it, and reload memory from disk before
        anything new is staged (memory had those updates applied; derived ones are wrong too)."""
        self._recovering = exc
        failed = [*batch, *self._queue]
        self._queue = []
        self.outbox_depth = max(0, self.outbox_depth - sum(len(s.events) for s in failed))
        log.error("state write failed; its updates and those queued after it are dropped, memory is"
                  " reloaded from disk and the next polls derive them again",
                  updates=len(failed), error=repr(exc))
        for staged in failed:
            if not staged._future.done():
                error = StateWriteError(f"the state store could not write: {exc!r}")
                error.__cause__ = exc
                staged._future.set_exception(error)
        delay = 0.1
        while True:
            try:
                snapshot: _Snapshot = await self._call(self._load_sync)
                break
            except Exception as reload_exc:
                if self._closing:
                    return  # stays refusing: the store is going away
                log.error("state store reload failed; retrying", error=repr(reload_exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        # Synchronous from here: nothing is staged between the swap and the end of the recovery.
        self._install(snapshot)
        self._next_seq = max(self._next_seq, snapshot.last_seq + 1)
        # Whatever the failed write left on disk, the relay reads the outbox from the table again.
        self._unpublished.clear()
        self._disk_only_through = max(self._disk_only_through, snapshot.last_seq)
        self._recovering = None
        log.warning("state store reloaded from disk", balances=len(snapshot.known))

    def _remember(self, entries: list[OutboxEntry]) -> None:
        """Newly durable events, for the relay, unless that would overflow its memory."""
        if len(self._unpublished) + len(entries) > self.outbox_memory_limit:
            self._unpublished.clear()
            self._disk_only_through = entries[-1].seq
        else:
            self._unpublished.extend(entries)

    # The relay's side of the outbox.
    async def outbox_batch(self, limit: int, skip: int = 0) -> list[OutboxEntry]:
        """The oldest unacknowledged events of the outbox, in the order they were written: from memory,
        or from the table for those that are on disk only (after a restart, or an overflow).

        `skip`: the relay has that many of the oldest already in flight; the events after them, from
        memory. None while events are on disk only: those are read once nothing is in flight."""
        if skip:
            if self._acked_through < self._disk_only_through:
                return []
            return list(itertools.islice(self._unpublished, skip, skip + limit))
        while self._acked_through < self._disk_only_through:
            low, high = self._acked_through, self._disk_only_through
            entries = await self._on_db(store_db.outbox_entries, low, high, limit)
            if (self._acked_through, self._disk_only_through) != (low, high):
                return entries  # acknowledged or overflowed meanwhile: what was read is still the head
            if len(entries) == limit:
                return entries
            # That was every event on disk only: from here on, memory holds them all.
            self._unpublished.extendleft(reversed(entries))
            self._disk_only_through = low
        return list(itertools.islice(self._unpublished, limit))

    def acknowledge(self, batch: Sequence[OutboxEntry]) -> None:
        """Kafka acknowledged `batch`, the oldest events of the outbox as `outbox_batch` returned them:
        forget them. At once in memory; their rows are deleted (`DELETE ... WHERE seq <= ?`) with the
        next group commit (`flush()` waits for it). A crash before that sends them again, same ids."""
        if not batch:
            return
        through = batch[-1].seq
        self.outbox_depth = max(0, self.outbox_depth - sum(1 for e in batch if e.seq > self._acked_through))
        self._acked_through = max(self._acked_through, through)
        unpublished = self._unpublished
        while unpublished and unpublished[0].seq <= through:
            unpublished.popleft()
        self._wakeup.set()

    # The AccessLedger of PSD2 sources: their daily access budget survives restarts.
    def load(self, source: str, account: str, since: datetime) -> list[datetime]:
        """The recorded accesses of one account at or after `since`."""
        return [at for at in self._accesses.get((source, account), []) if at >= since]

    async def record(self, source: str, account: str, at: datetime) -> None:
        """Record one access durably (the request is made only after this returns)."""
        await self._on_db(store_db.record_access, source, account, at)
        recent = [a for a in self._accesses.get((source, account), []) if a >= at - timedelta(days=1)]
        self._accesses[(source, account)] = [*recent, at]

    async def record_polls(self, records: Iterable[PollRecord]) -> None:
        """Remember the outcome of calls, for `status` and staleness."""
        records = list(records)
        if records:
            await self._on_db(store_db.record_polls, records)

    async def poll_records(self) -> list[PollRecord]:
        """Every (source, target)'s latest call."""
        return await self._on_db(store_db.poll_records)

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the state store is not open")
        return self._db


def _may_leave_memory(key: BalanceKey, freshness: FreshnessRecords) -> bool:
    """Whether the records of `key` may leave memory (or be packed): an account polled on its own (a
    source's own records and a listing's accounts are read again every round; a listing's share their
    objects)."""
    return key.account != WHOLE_SOURCE and freshness.polled_alone(key)

