"""The daily budget of unattended accesses to a PSD2 account, kept honest across restarts.

PSD2 RTS article 36(5)(b): without the user present, an AISP may access an account at most four times
in a 24-hour period, unless agreed otherwise with the bank. The window here is rolling: at most `per_day`
accesses in any 24 hours (a calendar day would allow 2 x budget around midnight). An access is counted
when the request is about to be sent, retries and the retry after a token refresh included, whatever
the answer: the bank may count it even if the connection then failed.

Every access is written to an `AccessLedger` before the request goes out; a restart reads the last
24 hours back, so a restart loop cannot exceed the budget. `MemoryAccessLedger` is for tests and for
`once`; the daemon backs it with the state store.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

WINDOW = timedelta(hours=24)


class AccessLedger(Protocol):
    """Durable record of accesses per (source, account). The state store implements it.

    `load` is called once per account and source instance, before its first access; it must be fast
    (the store answers from memory, loaded at open). `record` must be durable when it returns: the
    request is sent only after it returned, and not at all if it raised.
    """

    def load(self, source: str, account: str, since: datetime) -> Sequence[datetime]:
        """The recorded accesses of one account at or after `since` (aware UTC), in any order."""

    async def record(self, source: str, account: str, at: datetime) -> None:
        """Add one access. Entries older than 24 hours are never needed again and may be dropped."""


class MemoryAccessLedger:
    """An AccessLedger in memory: honest only for the life of the process."""

    def __init__(self) -> None:
        self._accesses: dict[tuple[str, str], list[datetime]] = {}

    def load(self, source: str, account: str, since: datetime) -> Sequence[datetime]:
        return [at for at in self._accesses.get((source, account), []) if at >= since]

    async def record(self, source: str, account: str, at: datetime) -> None:
        self._accesses.setdefault((source, account), []).append(at)


class AccessBudget:
    """At most `per_day` accesses per account of one source in any rolling 24 hours."""

    def __init__(self, source: str, per_day: int, ledger: AccessLedger) -> None:
        if per_day < 1:
            raise ValueError("a daily access budget is at least 1")
        self._source = source
        self._per_day = per_day
        self._ledger = ledger
        self._recent: dict[str, deque[datetime]] = {}

    @property
    def per_day(self) -> int:
        """Accesses allowed per account in any 24 hours."""
        return self._per_day

    def _window(self, account: str, now: datetime) -> deque[datetime]:
        recent = self._recent.get(account)
        if recent is None:
            recent = deque(sorted(self._ledger.load(self._source, account, now - WINDOW)))
            self._recent[account] = recent
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        return recent

    def remaining(self, account: str, now: datetime) -> int:
        """Accesses still allowed right now."""
        return max(0, self._per_day - len(self._window(account, now)))

    def next_allowed(self, account: str, now: datetime) -> datetime:
        """The earliest moment an access stays within the budget: `now`, or when the oldest access that
        fills it leaves the 24-hour window."""
        recent = self._window(account, now)
        if len(recent) < self._per_day:
            return now
        return recent[len(recent) - self._per_day] + WINDOW

    async def spend(self, account: str, now: datetime) -> str | None:
        """Count one access now, durably; None when done, else why it must not be made.

        The check and the count are one step (no await between), so concurrent calls cannot both take
        the last access.
        """
        recent = self._window(account, now)
        if len(recent) >= self._per_day:
            return (
                f"the daily access budget of account {account} is used up ({self._per_day} in 24 hours, "
                f"PSD2 RTS art. 36(5)); the next access is allowed at "
                f"{self.next_allowed(account, now).isoformat(timespec='seconds')}"
            )
        bisect.insort(recent, now)  # sorted even if the wall clock stepped back
        try:
            await self._ledger.record(self._source, account, now)
        except Exception as exc:  # the ledger's failure is ours to report, never to ignore
            recent.remove(now)
            return f"the access could not be recorded, so it is not made (the budget stays honest): {exc!r}"
        return None
