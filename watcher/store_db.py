"""The state store's database side: every statement the store runs, on its one worker thread.

`watcher.store.StateStore` keeps the state in memory and decides when to write; the functions here turn
its updates into rows and read rows back. None of them touches the event loop: the store calls each one
through its executor (one thread, one connection for writes).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rules.types import AlertState, BalanceKey, Freshness, KnownBalance
from watcher.events import Event
from watcher.store_schema import SCHEMA, add_missing_columns, alert_detail_to_json, parse_time
from watcher.wal_checkpointer import checkpoint_passive


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


def connect(path: Path) -> sqlite3.Connection:
    """The writer's connection, the schema created or brought up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL is safe in WAL mode: a commit is in the WAL before COMMIT returns, so a process crash
    # (kill -9) loses nothing committed; only a power loss (or an OS crash) may lose the last
    # transactions before a checkpoint syncs them - whole groups, state and events together,
    # never one without the other - and the next polls derive those changes again, with the same
    # event ids. It saves the fsync of every commit.
    db.execute("PRAGMA synchronous=NORMAL")
    # No checkpoint inside a commit: the checkpointer runs them on its own connection (see there).
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(SCHEMA)
    add_missing_columns(db)
    return db


def write_group(
    db: sqlite3.Connection,
    updates: Sequence[StateUpdate],
    events: Iterable[Event],
    first_seq: int,
    delete_through: int,
    tail: bool = False,
) -> list[OutboxEntry]:
    """One group commit: every update and event in ONE transaction, the events numbered from
    `first_seq`, and the outbox rows Kafka acknowledged (seq <= `delete_through`, 0 for none) deleted.
    `tail`: first copy the log frames committed while the checkpointer copied the log. Returns the events
    as outbox entries, for the relay."""
    entries: list[OutboxEntry] = []
    outbox_rows: list[tuple[Any, ...]] = []
    # The rows of every update in the order staged: INSERT OR REPLACE lets a later update of the same
    # row win, as it did in memory, and nothing gathers them (a first listing's 100,000 freshness
    # records would be a dict of 100,000 at the round's peak).
    balances = itertools.chain.from_iterable(u.balances for u in updates)
    alerts = itertools.chain.from_iterable(u.alerts for u in updates)
    freshness = itertools.chain.from_iterable(u.freshness for u in updates)
    seq = first_seq
    # The events of a batch share most of their headers (source, type, time, correlation id of one
    # listing): one (name, value) pair each, not one per event held by the relay's memory.
    pairs: dict[tuple[str, bytes], tuple[str, bytes]] = {}
    share = pairs.setdefault
    for event in events:
        headers = tuple([share(pair, pair) for pair in event.headers()])
        value = event.value()
        entries.append(OutboxEntry(seq, event.topic, event.key, event.id, headers, value))
        outbox_rows.append((
            seq, event.topic, event.key, event.id, json.dumps([[k, v.decode()] for k, v in headers]),
            value, event.time.isoformat(),
        ))
        seq += 1
    if tail:
        # The frames committed while the checkpointer copied the log: copied here, where no commit
        # can land meanwhile, so that this transaction starts the log file over (wal_checkpointer.py).
        with contextlib.suppress(sqlite3.Error):  # the checkpointer's next run tries again
            checkpoint_passive(db)
    with Transaction(db):
        if delete_through:
            # Kafka acknowledged these; they went out in order.
            db.execute("DELETE FROM outbox WHERE seq <= ?", (delete_through,))
        db.executemany(
            "INSERT INTO outbox (seq, topic, key, ce_id, headers, value, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            outbox_rows,
        )
        # Each row made as SQLite takes it (generators, not lists): the freshness rows of a first
        # listing of 100,000 accounts would otherwise all be held at once, at the round's peak.
        db.executemany(
            "INSERT OR REPLACE INTO balances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
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
                for k, b in balances
            ),
        )
        db.executemany(
            "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
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
                for a in alerts
            ),
        )
        db.executemany(
            "INSERT OR REPLACE INTO freshness (source, account, watched_since, last_success_at,"
            " last_error, access_revoked, listed, last_listing_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                (f.subject.source, f.subject.account, f.watched_since.isoformat(),
                 f.last_success_at.isoformat() if f.last_success_at else None, f.last_error,
                 int(f.access_revoked), int(f.listed),
                 f.last_listing_at.isoformat() if f.last_listing_at else None)
                for f in freshness
            ),
        )
    return entries


def outbox_entries(db: sqlite3.Connection, after: int, through: int, limit: int) -> list[OutboxEntry]:
    """The outbox's events with `after` < seq <= `through`, oldest first, at most `limit`."""
    rows = db.execute(
        "SELECT seq, topic, key, ce_id, headers, value FROM outbox WHERE seq > ? AND seq <= ?"
        " ORDER BY seq LIMIT ?",
        (after, through, limit),
    )
    return [
        OutboxEntry(r[0], r[1], r[2], r[3], tuple((k, v.encode()) for k, v in json.loads(r[4])), r[5])
        for r in rows
    ]


def recent_accesses(db: sqlite3.Connection) -> dict[tuple[str, str], list[datetime]]:
    """The PSD2 accesses of the last 24 hours, by (source, account); older ones are deleted."""
    day_ago = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    db.execute("DELETE FROM accesses WHERE at < ?", (day_ago,))
    accesses: dict[tuple[str, str], list[datetime]] = {}
    for source, account, at in db.execute("SELECT source, account, at FROM accesses"):
        accesses.setdefault((source, account), []).append(datetime.fromisoformat(at))
    return accesses


def record_access(db: sqlite3.Connection, source: str, account: str, at: datetime) -> None:
    """One PSD2 access, and the account's accesses older than a day forgotten."""
    with Transaction(db):
        db.execute("INSERT INTO accesses VALUES (?,?,?)", (source, account, at.isoformat()))
        db.execute(
            "DELETE FROM accesses WHERE source = ? AND account = ? AND at < ?",
            (source, account, (at - timedelta(days=1)).isoformat()),
        )


def record_polls(db: sqlite3.Connection, records: Iterable[PollRecord]) -> None:
    """The latest call of each (source, target); a failed call keeps the time of the last success."""
    # Each row made as SQLite takes it: the rows of a round of 100,000 calls are never all held.
    rows = (
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
    )
    with Transaction(db):
        db.executemany(
            "INSERT INTO polls VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(source, target) DO UPDATE SET"
            " polled_at=excluded.polled_at, outcome=excluded.outcome,"
            " http_status=excluded.http_status, correlation_id=excluded.correlation_id,"
            " error=excluded.error,"
            " last_success_at=COALESCE(excluded.last_success_at, polls.last_success_at)",
            rows,
        )


def poll_records(db: sqlite3.Connection) -> list[PollRecord]:
    """Every (source, target)'s latest call, by source and target."""
    return [
        PollRecord(r[0], r[1], datetime.fromisoformat(r[2]), r[3], r[4], r[5], r[6], parse_time(r[7]))
        for r in db.execute("SELECT * FROM polls ORDER BY source, target")
    ]


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
