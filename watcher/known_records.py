"""The state store's last known balances in memory, each an object or, for an account not polled lately,
packed to bytes (watcher.packed): ~180 bytes instead of ~1 KB with its history.

A read on the poll path (`read`) unpacks a packed balance and keeps the object, counting its key as hot
(watcher.hot_keys) until the store packs it again. Reading as a Mapping (the alert clock's look-ups, the
metrics' walk of every balance) unpacks a copy and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from rules.types import BalanceKey, KnownBalance
from watcher.hot_keys import HotKeys
from watcher.packed import pack_entry, pack_known, unpack_known


class KnownRecords(Mapping[BalanceKey, KnownBalance]):
    """Every last known balance by key."""

    __slots__ = ("_by_key", "_hot")

    def __init__(self, hot: HotKeys) -> None:
        self._by_key: dict[BalanceKey, KnownBalance | bytes] = {}
        self._hot = hot

    def read(self, key: BalanceKey) -> KnownBalance | None:
        """The balance of `key`, about to be used: unpacked, and kept so until it is packed again."""
        held = self._by_key.get(key)
        if type(held) is bytes:
            held = self._by_key[key] = unpack_known(held)
            self._hot.add(key)
        return held  # type: ignore[return-value]  # not bytes: unpacked above

    def put(self, key: BalanceKey, known: KnownBalance) -> None:
        """Store `known` as the balance of `key`."""
        self._by_key[key] = known

    def pack(self, key: BalanceKey) -> None:
        """Keep the balance of `key` packed (unless it cannot be packed exactly)."""
        pack_entry(self._by_key, key, KnownBalance, pack_known)

    def __getitem__(self, key: BalanceKey) -> KnownBalance:
        held = self._by_key[key]
        return unpack_known(held) if type(held) is bytes else held  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[BalanceKey]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)
