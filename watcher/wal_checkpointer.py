"""WAL checkpoints on their own connection and thread, off the group commit's path.

Left to itself, SQLite checkpoints inside the commit that takes the write-ahead log past 1,000 pages: it
copies the log back into the database file and syncs it before that COMMIT returns. Every update of
that group then waits for it (bench/README.md: 17 ms growing to 41 ms with a database of 5,000 accounts,
once a second at 250 polls/s; at 500/s up to 150 ms). So the store's writer turns automatic checkpoints
off (`wal_autocheckpoint=0`), and this runs PASSIVE checkpoints from a second connection, which in WAL
mode neither waits for the writer nor makes it wait: commits go on appending to the log meanwhile.

The log file starts over only at a write that begins when every frame of it has been copied. Under a
steady stream of commits one nearly always lands while the background checkpoint runs, and the log
would grow without end (254 MiB after four listings of 100,000 accounts). So after each background
checkpoint the writer is asked for the tail (`take_tail`): it copies the few frames committed meanwhile
from its own connection, in its own thread, before its next transaction, which then starts the log
over. Its cost is those frames and a sync, not the whole period's writes.

A failed checkpoint loses nothing (the log holds every commit, and recovery replays it); it is logged and
tried again the next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("watcher.store")
T = TypeVar("T")

# Seconds between checkpoints while commits come in: about one period's writes stay in the log.
CHECKPOINT_PERIOD_S = 1.0


class WalCheckpointer:
    """Checkpoints one database's write-ahead log every `period_s` after commits were written.

    `open()` (which starts its task) before the first commit that relies on it, `written()` after each
    commit, `close()` before the writer's own connection closes: the last connection to close
    checkpoints the rest and removes the log.
    """

    def __init__(self, path: Path, period_s: float = CHECKPOINT_PERIOD_S) -> None:
        self.path = path
        self.period_s = period_s
        self.checkpoints = 0  # that succeeded (a PASSIVE one may copy only part of the log)
        self.failures = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-checkpoint")
        self._db: sqlite3.Connection | None = None
        self._written = asyncio.Event()
        self._failing = False
        self._tail_wanted = False
        self._task: asyncio.Task[None] | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_sync(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # The same durability as the writer's: a checkpoint syncs the log, then the database file.
        db.execute("PRAGMA synchronous=NORMAL")
        # It reads no rows: a checkpoint copies pages through its own buffer, not this connection's cache.
        db.execute("PRAGMA cache_size=-64")
        self._db = db

    async def open(self) -> None:
        """Connect, then checkpoint in the background until `close()`."""
        await self._call(self._open_sync)
        self._task = asyncio.create_task(self.run(), name="wal-checkpoints")

    def written(self) -> None:
        """A commit was written: there is something to checkpoint."""
        self._written.set()

    def take_tail(self) -> bool:
        """Whether the writer should copy the tail of the log before its next transaction (once per
        background checkpoint: this clears the request)."""
        wanted, self._tail_wanted = self._tail_wanted, False
        return wanted

    def _checkpoint_sync(self) -> tuple[int, int]:
        if self._db is None:
            raise RuntimeError("the checkpointer is not open")
        return checkpoint_passive(self._db)

    async def checkpoint(self) -> None:
        """One PASSIVE checkpoint now; a failure is logged, not raised."""
        try:
            result = await self._call(self._checkpoint_sync)
        except sqlite3.Error as exc:
            self.failures += 1
            self._written.set()  # the log still holds it: try again next period
            if not self._failing:
                log.warning("state store checkpoint failed; the write-ahead log keeps every commit, and"
                            " grows until a checkpoint succeeds", path=str(self.path), error=str(exc))
            self._failing = True
            return
        self.checkpoints += 1
        log_frames, copied = result
        self._tail_wanted = log_frames > 0  # commits may have landed meanwhile
        if self._failing:
            log.info("state store checkpoint succeeded again", path=str(self.path), log_frames=log_frames,
                     copied_frames=copied)
        self._failing = False

    async def run(self) -> None:
        """Checkpoint at most once a period, and only after a commit; until cancelled."""
        while True:
            await self._written.wait()
            await asyncio.sleep(self.period_s)
            self._written.clear()
            await self.checkpoint()

    async def close(self) -> None:
        """Stop the background checkpoints, then close the connection and the thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


def checkpoint_passive(db: sqlite3.Connection) -> tuple[int, int]:
    """One PASSIVE checkpoint on `db`: (frames in the log, frames copied back). It copies what no reader
    still needs and returns; it never waits for a lock."""
    _busy, log_frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(log_frames), int(copied)
