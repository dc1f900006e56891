"""Which keys of the state store hold their records as objects, and which are due to leave memory.

Only keys of accounts polled one by one are kept here (a listing's accounts are read together every round,
and their records are already shared and compact): a key written or read joins at the end, and beyond the
limit the oldest are handed back to leave memory (watcher.disk_records) or be packed (watcher.packed).
The limit bounds the state's memory by the keys in use, not by every key the daemon ever saw.
"""

from __future__ import annotations

from collections import OrderedDict

from rules.types import BalanceKey


class HotKeys:
    """The keys whose records are unpacked, oldest first (an account polled again keeps its place: it is
    packed a little early, not late)."""

    __slots__ = ("_keys", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the limit of hot keys must be 0 or more, not {limit}")
        self.limit = limit
        # An OrderedDict pops its oldest in O(1); a dict's first item is found past every slot deleted before.
        self._keys: OrderedDict[BalanceKey, None] = OrderedDict()

    def add(self, key: BalanceKey) -> None:
        """`key`'s records are objects now (written, or read and unpacked)."""
        self._keys[key] = None

    def overflow(self) -> list[BalanceKey]:
        """The oldest keys beyond the limit, no longer counted here: the caller lets their records go."""
        excess = len(self._keys) - self.limit
        if excess <= 0:
            return []
        pop = self._keys.popitem
        return [pop(last=False)[0] for _ in range(excess)]

    def clear(self) -> None:
        """Forget every key (the records were loaded again, those that may be on disk left there)."""
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)
