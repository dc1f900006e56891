"""The state store's records as SQLite rows: read at open (every row) and, for a record that was let go of
memory, read again one key at a time (`DiskReader`).

Polling 100,000 accounts one by one, an account's records are used only at its poll and when its `stale`
alert comes due; packed they are still ~500 bytes an account with their dict entries. Once a
record's last write is durable and its account has gone unused longest, the store keeps only its key
(`watcher.packed.ON_DISK`), and the next read fetches it back by its primary key, from pages the OS
caches: on this machine 44 us for a balance, 62 for a key's alert states, 30 for a freshness record (about
half of it the query), where unpacking took ~30 us for all three.

The reads are synchronous, on the event loop's thread, on a connection of their own (WAL mode: a reader
sees every committed transaction and does not wait for the writer): the rules engine calls the store's
look-ups from its pure, synchronous evaluation. A page the OS has not cached is read from the disk
while the loop waits: keep the database on a local disk.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance
from watcher.store_schema import alert_detail_from_json, parse_time

FRESHNESS_COLUMNS = (
    "source, account, watched_since, last_success_at, last_error, access_revoked, listed, last_listing_at"
)
BALANCE_COLUMNS = (
    "source, account, balance_type, amount, currency, state, provider_balance_type, description,"
    " observed_at, correlation_id, version, history"
)
ALERT_COLUMNS = (
    "fingerprint, rule, source, account, balance_type, status, episode, started_at, resolved_at, detail"
)


class Sharing(dict[Any, Any]):
    """Called with a value, gives the first equal value it was called with: one object for all."""

    __slots__ = ()

    def __call__(self, value: Any) -> Any:
        return self.setdefault(value, value)


class Moments(dict[str, datetime]):
    """Called with an ISO 8601 text, gives its datetime: one object per distinct text."""

    __slots__ = ()

    def __call__(self, text: str) -> datetime:
        found = self.get(text)
        if found is None:
            found = self[text] = datetime.fromisoformat(text)
        return found


def freshness_of(row: tuple[Any, ...], subject: BalanceKey, moment: Callable[[str], datetime]) -> Freshness:
    """A `freshness` row (FRESHNESS_COLUMNS) as its record."""
    return Freshness(
        subject, moment(row[2]), moment(row[3]) if row[3] else None, row[4], bool(row[5]),
        listed=bool(row[6]), last_listing_at=parse_time(row[7]),
    )


def known_of(
    row: tuple[Any, ...],
    share: Callable[[Any], Any],
    moment: Callable[[str], datetime],
    share_id: Callable[[Any], Any],
) -> KnownBalance:
    """A `balances` row (BALANCE_COLUMNS) as its last known balance; `share` shares its short strings,
    `share_id` its correlation id (one listing's, at load; not a single account's, read back)."""
    text = row[11]
    history = () if text == "[]" else tuple((moment(t), Decimal(a)) for t, a in json.loads(text))
    return KnownBalance(
        balance=Balance(Decimal(row[3]), share(row[4]), share(row[5]), share(row[6])),
        observed_at=moment(row[8]),
        correlation_id=share_id(row[9]),
        version=row[10],
        description=row[7],
        history=history,
    )


def alert_of(
    row: tuple[Any, ...], key: BalanceKey, share: Callable[[Any], Any], moment: Callable[[str], datetime]
) -> AlertState:
    """An `alerts` row (ALERT_COLUMNS) as its state."""
    return AlertState(
        fingerprint=row[0],
        rule=share(row[1]),
        key=key,
        status=share(row[5]),
        episode=row[6],
        started_at=moment(row[7]),
        resolved_at=parse_time(row[8]),
        **alert_detail_from_json(row[9]),
    )


def _interned(value: Any) -> Any:
    """The strings many records share (a currency, a state, a rule's name): one object each."""
    return sys.intern(value) if type(value) is str else value


def _itself(value: Any) -> Any:
    return value


class DiskReader:
    """Reads one key's records back from the database, on a connection of its own."""

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None
        self.reads = 0  # records read back (each table's look-up counts once)

    def open(self, path: Path) -> None:
        """Connect (from any thread: the store opens it on its own, the reads come from the loop's)."""
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise RuntimeError("the state store is not open")
        self.reads += 1
        return self._db.execute(sql, args).fetchall()

    def known(self, key: BalanceKey) -> KnownBalance | None:
        rows = self._rows(
            f"SELECT {BALANCE_COLUMNS} FROM balances WHERE source = ? AND account = ? AND balance_type = ?",
            key,
        )
        return known_of(rows[0], _interned, datetime.fromisoformat, _itself) if rows else None

    def alerts(self, key: BalanceKey) -> list[AlertState]:
        rows = self._rows(
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE source = ? AND account = ? AND balance_type = ?",
            key,
        )
        return [alert_of(row, key, _interned, datetime.fromisoformat) for row in rows]

    def freshness(self, subject: BalanceKey) -> Freshness | None:
        rows = self._rows(
            f"SELECT {FRESHNESS_COLUMNS} FROM freshness WHERE source = ? AND account = ?", subject[:2]
        )
        return freshness_of(rows[0], subject, datetime.fromisoformat) if rows else None
