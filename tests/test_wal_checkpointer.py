"""WAL checkpoints run on the checkpointer's own connection, never inside a group commit: the log is
copied back while commits go on, a failed checkpoint loses nothing and is tried again, and a closed
store leaves everything in the database file."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from structlog.testing import capture_logs

from rules.types import Balance, BalanceKey, KnownBalance
from watcher.store import StateStore, StateUpdate

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
ROWS_PER_COMMIT = 250
COMMITS = 100  # about 3,000 pages of log in all: three times SQLite's automatic checkpoint


def _update(commit: int) -> StateUpdate:
    balances = [
        (
            BalanceKey("mc", f"non_card_token:{commit:03d}-{row:04d}", ""),
            KnownBalance(Balance(Decimal(f"{row}.25"), "GBP", "IN_CREDIT"), T0, f"corr-{commit}-{row}", 1,
                         "d" * 200),
        )
        for row in range(ROWS_PER_COMMIT)
    ]
    return StateUpdate(balances=balances, alerts=[])


def _log_frames(path: Path) -> int:
    """Frames in the write-ahead log since it last started over (a PASSIVE checkpoint reports them)."""
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        db.close()


async def _write_all(store: StateStore) -> None:
    for commit in range(COMMITS):
        await store.commit(_update(commit))


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until `condition` holds: polled, as the checkpointer's thread moves it, not an event of the loop."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


async def _rows_after_reopen(path: Path) -> int:
    """The balances a store opened afresh on `path` reads back."""
    store = StateStore(path)
    await store.open()
    try:
        return len(store.all_known())
    finally:
        await store.close()


async def test_a_group_commit_never_runs_a_checkpoint(tmp_path: Path) -> None:
    """With the checkpointer idle, the log keeps every frame the commits wrote, well past the 1,000 pages
    at which SQLite would otherwise have checkpointed inside a commit."""
    store = StateStore(tmp_path / "state.db", checkpoint_period_s=3600)
    await store.open()
    await _write_all(store)
    assert store.checkpointer.checkpoints == 0
    assert _log_frames(tmp_path / "state.db") > 2_500
    await store.close()


async def test_the_checkpointer_copies_the_log_back_and_the_log_starts_over(tmp_path: Path) -> None:
    """The same commits, each followed by a checkpoint of the checkpointer's: the log file starts over
    and stays a fraction of what it grows to without them, and every row is in the database."""
    idle = StateStore(tmp_path / "idle.db", checkpoint_period_s=3600)
    busy = StateStore(tmp_path / "busy.db", checkpoint_period_s=0.001)
    await idle.open()
    await busy.open()
    await _write_all(idle)
    for commit in range(COMMITS):
        done = busy.checkpointer.checkpoints
        await busy.commit(_update(commit))
        await _until(lambda: busy.checkpointer.checkpoints > done)  # noqa: B023
    assert busy.checkpointer.failures == 0
    idle_wal = (tmp_path / "idle.db-wal").stat().st_size
    busy_wal = (tmp_path / "busy.db-wal").stat().st_size
    assert busy_wal * 10 < idle_wal
    await idle.close()
    await busy.close()
    assert await _rows_after_reopen(tmp_path / "busy.db") == COMMITS * ROWS_PER_COMMIT


async def test_the_writer_copies_the_tail_so_the_log_starts_over(tmp_path: Path) -> None:
    """The background checkpoint may leave frames behind (here a reader pins the first commit's
    snapshot, as a commit landing during the checkpoint would), and a log starts over only at a write
    that finds it wholly copied: the writer copies that tail before its next transaction, which then
    writes from the start of the file instead of growing it."""
    store = StateStore(tmp_path / "state.db", checkpoint_period_s=3600)  # checkpoints run by hand here
    await store.open()
    wal = tmp_path / "state.db-wal"
    await store.commit(_update(0))
    reader = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM balances").fetchone()  # a snapshot as of commit 0
    await store.commit(_update(1))
    await store.checkpointer.checkpoint()  # copies commit 0 only: the reader may still need the rest
    reader.execute("COMMIT")
    reader.close()
    size = wal.stat().st_size
    await store.commit(_update(2))
    assert wal.stat().st_size == size  # commit 2 went to the start of the log, not after commit 1
    assert store.checkpointer.take_tail() is False  # asked once per background checkpoint
    await store.close()
    assert await _rows_after_reopen(tmp_path / "state.db") == 3 * ROWS_PER_COMMIT


async def test_commits_do_not_wait_for_a_checkpoint(tmp_path: Path) -> None:
    """While a checkpoint is held up in its thread (a slow disk), group commits still complete: the
    checkpoint runs on its own connection, not in the commit."""
    store = StateStore(tmp_path / "state.db", checkpoint_period_s=0.001)
    await store.open()
    checkpointer = store.checkpointer
    real = checkpointer._checkpoint_sync
    entered, release = threading.Event(), threading.Event()

    def slow() -> tuple[int, int]:
        entered.set()
        release.wait(timeout=30)
        return real()

    checkpointer._checkpoint_sync = slow  # type: ignore[method-assign]
    await store.commit(_update(0))
    await _until(entered.is_set)
    async with asyncio.timeout(10):
        for commit in range(1, 6):
            await store.commit(_update(commit))
    assert checkpointer.checkpoints == 0  # still held up
    release.set()
    await _until(lambda: checkpointer.checkpoints >= 1)
    await store.close()
    assert await _rows_after_reopen(tmp_path / "state.db") == 6 * ROWS_PER_COMMIT


async def test_a_closed_store_leaves_everything_in_the_database_file(tmp_path: Path) -> None:
    """After close there is no log file: the database file alone, copied elsewhere, holds every commit."""
    store = StateStore(tmp_path / "state.db", checkpoint_period_s=3600)
    await store.open()
    await store.commit(_update(0))
    await store.commit(_update(1))
    await store.close()
    assert not (tmp_path / "state.db-wal").exists()
    copy = tmp_path / "copy" / "state.db"
    copy.parent.mkdir()
    shutil.copyfile(tmp_path / "state.db", copy)
    assert await _rows_after_reopen(copy) == 2 * ROWS_PER_COMMIT


async def test_a_failed_checkpoint_is_logged_once_and_tried_again(tmp_path: Path) -> None:
    """Checkpoints that fail (here: three disk errors) name the database and the error in one warning,
    commits go on meanwhile, the next period tries again, and success is logged when it comes back."""
    store = StateStore(tmp_path / "state.db", checkpoint_period_s=0.005)
    await store.open()
    checkpointer = store.checkpointer
    real = checkpointer._checkpoint_sync
    failures_left = [3]

    def flaky() -> tuple[int, int]:
        if failures_left[0]:
            failures_left[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real()

    checkpointer._checkpoint_sync = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        await store.commit(_update(0))
        await _until(lambda: checkpointer.failures == 1)
        await store.commit(_update(1))  # a commit while checkpoints fail
        await _until(lambda: checkpointer.failures == 3)
        await _until(lambda: checkpointer.checkpoints >= 1)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["error"] == "disk I/O error"
    assert warnings[0]["path"] == str(tmp_path / "state.db")
    assert any(entry["event"] == "state store checkpoint succeeded again" for entry in logs)
    assert len(store.all_known()) == 2 * ROWS_PER_COMMIT
    await store.close()
    assert not (tmp_path / "state.db-wal").exists()
