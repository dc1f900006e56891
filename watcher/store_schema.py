"""The state store's SQLite schema, its migrations, and how alert lifecycle fields are encoded."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from rules.types import AlertState

SCHEMA = """
CREATE TABLE IF NOT EXISTS balances (
    source TEXT NOT NULL,
    account TEXT NOT NULL,
    balance_type TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    state TEXT,
    provider_balance_type TEXT,
    description TEXT,
    observed_at TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    history TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (source, account, balance_type)
);
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    source TEXT NOT NULL,
    account TEXT NOT NULL,
    balance_type TEXT NOT NULL,
    status TEXT NOT NULL,
    episode INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    resolved_at TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
-- A key's states, read back when they were let go of memory (watcher.disk_records).
CREATE INDEX IF NOT EXISTS alerts_by_key ON alerts (source, account, balance_type);
CREATE TABLE IF NOT EXISTS freshness (
    source TEXT NOT NULL,
    account TEXT NOT NULL,
    watched_since TEXT NOT NULL,
    last_success_at TEXT,
    last_error TEXT,
    access_revoked INTEGER NOT NULL,
    listed INTEGER NOT NULL DEFAULT 0,
    last_listing_at TEXT,
    PRIMARY KEY (source, account)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    ce_id TEXT NOT NULL,
    headers TEXT NOT NULL,
    value BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accesses (
    source TEXT NOT NULL,
    account TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS accesses_by_account ON accesses (source, account);
CREATE TABLE IF NOT EXISTS polls (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    polled_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    correlation_id TEXT NOT NULL,
    error TEXT,
    last_success_at TEXT,
    PRIMARY KEY (source, target)
);
"""


def parse_time(text: str | None) -> datetime | None:
    """An ISO time as stored, or None."""
    return datetime.fromisoformat(text) if text else None


_DETAIL_TIMES = ("pending_since", "cleared_since", "last_sent_at")
_DETAIL_VALUES = ("published", "muted", "suppressed_by", "repeats", "reason", "kind", "severity")


def alert_detail_to_json(alert: AlertState) -> str:
    """The lifecycle fields of an alert state, as one JSON column (they grow with the engine)."""
    detail: dict[str, Any] = {name: getattr(alert, name) for name in _DETAIL_VALUES}
    for name in _DETAIL_TIMES:
        moment = getattr(alert, name)
        detail[name] = moment.isoformat() if moment else None
    return json.dumps(detail)


def alert_detail_from_json(text: str) -> dict[str, Any]:
    detail = json.loads(text or "{}")
    fields = {k: detail[k] for k in _DETAIL_VALUES if k in detail}
    fields.update({k: parse_time(detail.get(k)) for k in _DETAIL_TIMES if k in detail})
    return fields


def add_missing_columns(db: sqlite3.Connection) -> None:
    """Databases written by an earlier version lack the newer columns."""
    for table, column, ddl in (
        ("balances", "history", "TEXT NOT NULL DEFAULT '[]'"),
        ("alerts", "detail", "TEXT NOT NULL DEFAULT '{}'"),
        ("freshness", "listed", "INTEGER NOT NULL DEFAULT 0"),
        ("freshness", "last_listing_at", "TEXT"),
    ):
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
