"""The state store: last known balances, alert states, poll outcomes and the event outbox, in SQLite.

The whole state is loaded into memory when the store opens (reads are dictionary look-ups on the poll
path); writes go through to SQLite on one worker thread. A poll's new state and the events it implies
are written in ONE transaction (the outbox), so a crash leaves either the old state and no events, or
the new state and all its events, which the relay then publishes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance
from watcher.events import Event
from watcher.store_schema import (
    SCHEMA,
    add_missing_columns,
    alert_detail_from_json,
    alert_detail_to_json,
    parse_time,
)

T = TypeVar("T")



@dataclass(frozen=True, slots=True)
class PollRecord:
    """The outcome of the latest call for one (source, target)."""

    source: str
    target: str
    polled_at: datetime
    outcome: str
    http_status: int | None
    correlation_id: str
    error: str | None
    last_success_at: datetime | None


class OutboxFull(Exception):
    """The outbox holds as many events as it may; nothing of this poll was written."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event waiting in the outbox, in the form it is sent to Kafka. `topic` is "changes" or
    "alerts": the configured topic name is looked up when it is sent."""

    seq: int
    topic: str
    key: str
    ce_id: str
    headers: tuple[tuple[str, bytes], ...]
    value: bytes


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """What one poll changes: the balances to remember and the alert states to write."""

    balances: Sequence[tuple[BalanceKey, KnownBalance]]
    alerts: Sequence[AlertState]
    freshness: Sequence[Freshness] = ()


class StateStore:
    """Last known balances and alert states, in memory and durably in SQLite."""

    def __init__(self, path: Path, outbox_limit: int = 1_000_000) -> None:
        self.path = path
        self.outbox_limit = outbox_limit
        self.outbox_depth = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-store")
        self._db: sqlite3.Connection | None = None
        self._known: dict[BalanceKey, KnownBalance] = {}
        self._alerts: dict[BalanceKey, dict[str, AlertState]] = {}
        self._accesses: dict[tuple[str, str], list[datetime]] = {}
        self._freshness: dict[BalanceKey, Freshness] = {}

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Create the database if needed and load the whole state into memory."""
        await self._call(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        add_missing_columns(db)
        self._db = db
        for row in db.execute(
            "SELECT source, account, balance_type, amount, currency, state, provider_balance_type,"
            " description, observed_at, correlation_id, version, history FROM balances"
        ):
            key = BalanceKey(row[0], row[1], row[2])
            self._known[key] = KnownBalance(
                balance=Balance(Decimal(row[3]), row[4], row[5], row[6]),
                observed_at=datetime.fromisoformat(row[8]),
                correlation_id=row[9],
                version=row[10],
                description=row[7],
                history=tuple((datetime.fromisoformat(t), Decimal(a)) for t, a in json.loads(row[11])),
            )
        self.outbox_depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        # PSD2 access budget: only the last 24 hours matter.
        day_ago = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        db.execute("DELETE FROM accesses WHERE at < ?", (day_ago,))
        for source, account, at in db.execute("SELECT source, account, at FROM accesses"):
            self._accesses.setdefault((source, account), []).append(datetime.fromisoformat(at))
        for row in db.execute(
            "SELECT fingerprint, rule, source, account, balance_type, status, episode, started_at,"
            " resolved_at, detail FROM alerts"
        ):
            key = BalanceKey(row[2], row[3], row[4])
            self._alerts.setdefault(key, {})[row[0]] = AlertState(
                fingerprint=row[0],
                rule=row[1],
                key=key,
                status=row[5],
                episode=row[6],
                started_at=datetime.fromisoformat(row[7]),
                resolved_at=parse_time(row[8]),
                **alert_detail_from_json(row[9]),
            )
        for row in db.execute("SELECT * FROM freshness"):
            subject = BalanceKey(row[0], row[1])
            self._freshness[subject] = Freshness(
                subject, datetime.fromisoformat(row[2]), parse_time(row[3]), row[4], bool(row[5])
            )

    async def close(self) -> None:
        """Close the database and its worker thread."""
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # Reads: from memory.
    def known(self, key: BalanceKey) -> KnownBalance | None:
        """The last committed balance of this key, or None if it was never seen."""
        return self._known.get(key)

    def alerts(self, key: BalanceKey) -> dict[str, AlertState]:
        """The stored alert states of this key, by fingerprint (a copy: callers may not change ours)."""
        return dict(self._alerts.get(key, {}))

    def all_known(self) -> dict[BalanceKey, KnownBalance]:
        """Every tracked balance."""
        return dict(self._known)

    def freshness(self, subject: BalanceKey) -> Freshness | None:
        """When this account (or whole source, account "*") last answered, for `stale` rules."""
        return self._freshness.get(subject)

    def all_freshness(self) -> list[Freshness]:
        """Every poll subject's freshness."""
        return list(self._freshness.values())

    def all_alerts(self) -> list[AlertState]:
        """Every stored alert state."""
        return [a for by_fp in self._alerts.values() for a in by_fp.values()]

    # Writes: durable first, then visible in memory.
    async def commit(self, update: StateUpdate, events: Sequence[Event] = ()) -> None:
        """Write the balances, alert states and events of one poll in one transaction.

        Raises OutboxFull, writing nothing, when the events would not fit in the outbox.
        """
        if not update.balances and not update.alerts and not update.freshness and not events:
            return
        if events and self.outbox_depth + len(events) > self.outbox_limit:
            raise OutboxFull(
                f"the outbox holds {self.outbox_depth} events (limit {self.outbox_limit});"
                f" {len(events)} more do not fit"
            )
        rows = [
            (e.topic, e.key, e.id, json.dumps([[k, v.decode()] for k, v in e.headers()]), e.value(),
             e.time.isoformat())
            for e in events
        ]
        await self._call(self._commit_sync, update, rows)
        self.outbox_depth += len(rows)
        for key, known in update.balances:
            self._known[key] = known
        for alert in update.alerts:
            self._alerts.setdefault(alert.key, {})[alert.fingerprint] = alert
        for fresh in update.freshness:
            self._freshness[fresh.subject] = fresh

    def _commit_sync(self, update: StateUpdate, outbox_rows: list[tuple[Any, ...]]) -> None:
        db = self._require()
        with _transaction(db):
            db.executemany(
                "INSERT INTO outbox (topic, key, ce_id, headers, value, created_at) VALUES (?,?,?,?,?,?)",
                outbox_rows,
            )
            db.executemany(
                "INSERT OR REPLACE INTO balances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        k.source,
                        k.account,
                        k.balance_type,
                        str(b.balance.amount),
                        b.balance.currency,
                        b.balance.state,
                        b.balance.balance_type,
                        b.description,
                        b.observed_at.isoformat(),
                        b.correlation_id,
                        b.version,
                        json.dumps([[t.isoformat(), str(a)] for t, a in b.history]),
                    )
                    for k, b in update.balances
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        a.fingerprint,
                        a.rule,
                        a.key.source,
                        a.key.account,
                        a.key.balance_type,
                        a.status,
                        a.episode,
                        a.started_at.isoformat(),
                        a.resolved_at.isoformat() if a.resolved_at else None,
                        alert_detail_to_json(a),
                    )
                    for a in update.alerts
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO freshness VALUES (?,?,?,?,?,?)",
                [
                    (f.subject.source, f.subject.account, f.watched_since.isoformat(),
                     f.last_success_at.isoformat() if f.last_success_at else None, f.last_error,
                     int(f.access_revoked))
                    for f in update.freshness
                ],
            )

    async def outbox_batch(self, limit: int) -> list[OutboxEntry]:
        """The oldest events of the outbox, in the order they were written."""
        rows = await self._call(self._outbox_batch_sync, limit)
        return [
            OutboxEntry(r[0], r[1], r[2], r[3], tuple((k, v.encode()) for k, v in json.loads(r[4])), r[5])
            for r in rows
        ]

    def _outbox_batch_sync(self, limit: int) -> list[tuple[Any, ...]]:
        return list(
            self._require().execute(
                "SELECT seq, topic, key, ce_id, headers, value FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
        )

    async def outbox_remove(self, seqs: Sequence[int]) -> None:
        """Forget events Kafka acknowledged."""
        if seqs:
            await self._call(self._outbox_remove_sync, list(seqs))
            self.outbox_depth = max(0, self.outbox_depth - len(seqs))

    def _outbox_remove_sync(self, seqs: list[int]) -> None:
        db = self._require()
        with _transaction(db):
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    # The AccessLedger of PSD2 sources: their daily access budget survives restarts.
    def load(self, source: str, account: str, since: datetime) -> list[datetime]:
        """The recorded accesses of one account at or after `since`."""
        return [at for at in self._accesses.get((source, account), []) if at >= since]

    async def record(self, source: str, account: str, at: datetime) -> None:
        """Record one access durably (the request is made only after this returns)."""
        await self._call(self._record_access_sync, source, account, at)
        recent = [a for a in self._accesses.get((source, account), []) if a >= at - timedelta(days=1)]
        self._accesses[(source, account)] = [*recent, at]

    def _record_access_sync(self, source: str, account: str, at: datetime) -> None:
        db = self._require()
        with _transaction(db):
            db.execute("INSERT INTO accesses VALUES (?,?,?)", (source, account, at.isoformat()))
            db.execute(
                "DELETE FROM accesses WHERE source = ? AND account = ? AND at < ?",
                (source, account, (at - timedelta(days=1)).isoformat()),
            )

    async def record_polls(self, records: Iterable[PollRecord]) -> None:
        """Remember the outcome of calls, for `status` and staleness."""
        rows = [
            (
                r.source,
                r.target,
                r.polled_at.isoformat(),
                r.outcome,
                r.http_status,
                r.correlation_id,
                r.error,
                r.last_success_at.isoformat() if r.last_success_at else None,
            )
            for r in records
        ]
        if rows:
            await self._call(self._record_polls_sync, rows)

    def _record_polls_sync(self, rows: list[tuple[Any, ...]]) -> None:
        db = self._require()
        with _transaction(db):
            # A failed call keeps the time of the last success.
            db.executemany(
                "INSERT INTO polls VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(source, target) DO UPDATE SET"
                " polled_at=excluded.polled_at, outcome=excluded.outcome,"
                " http_status=excluded.http_status, correlation_id=excluded.correlation_id,"
                " error=excluded.error,"
                " last_success_at=COALESCE(excluded.last_success_at, polls.last_success_at)",
                rows,
            )

    async def poll_records(self) -> list[PollRecord]:
        """Every (source, target)'s latest call."""
        rows = await self._call(self._poll_rows_sync)
        return [
            PollRecord(r[0], r[1], datetime.fromisoformat(r[2]), r[3], r[4], r[5], r[6], parse_time(r[7]))
            for r in rows
        ]

    def _poll_rows_sync(self) -> list[tuple[Any, ...]]:
        return list(self._require().execute("SELECT * FROM polls ORDER BY source, target"))

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the state store is not open")
        return self._db


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
