"""A call's freshness records, with those of accounts first seen in a listing made as they are read.

The first listing of 100,000 accounts makes a record for each, and they differ only by subject:
`Freshness(subject, at, at, listed=True)`. Made all at once they are ~8 MiB held until the state store
has written them (and it keeps a listed account's record compactly after that), at the first sight's
peak. Here such an account is held by its key, and its record is made each time it is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import overload

from rules.types import BalanceKey, Freshness


class FirstListedRecords(Sequence[Freshness]):
    """`entries` in order, each a record, or the key of an account first seen in the listing at `at`
    (read as `Freshness(key, at, at, listed=True)`). Equal to any sequence of the same records."""

    __slots__ = ("_at", "_entries")

    def __init__(self, entries: Sequence[Freshness | BalanceKey], at: datetime) -> None:
        self._entries = entries
        self._at = at

    def _record(self, entry: Freshness | BalanceKey) -> Freshness:
        if type(entry) is Freshness:
            return entry
        assert isinstance(entry, BalanceKey)
        return Freshness(entry, self._at, self._at, listed=True)

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Freshness: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Freshness]: ...

    def __getitem__(self, index: int | slice) -> Freshness | Sequence[Freshness]:
        if isinstance(index, slice):
            return FirstListedRecords(self._entries[index], self._at)
        return self._record(self._entries[index])

    def __iter__(self) -> Iterator[Freshness]:
        record = self._record
        return (record(entry) for entry in self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # equal to tuples, which hash by their items

    def __repr__(self) -> str:
        return f"FirstListedRecords({list(self)!r})"
