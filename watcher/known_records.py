"""The state store's last known balances in memory, each an object or, for an account not polled lately,
packed to bytes (watcher.packed): ~180 bytes instead of ~1 KB with its history.

A read on the poll path (`read`) unpacks a packed balance and keeps the object, counting its key as hot
(watcher.hot_keys) until the store packs it again. Reading as a Mapping (the alert clock's look-ups, the
metrics' walk of every balance) unpacks a copy and changes nothing. A balance let go of memory
(`ON_DISK`) is read back from the database the same two ways (watcher.disk_records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from rules.types import BalanceKey, KnownBalance
from watcher.hot_keys import HotKeys
from watcher.packed import (
    ON_DISK,
    OnDisk,
    copy_of,
    let_go_entry,
    pack_entry,
    pack_known,
    thawed,
    unpack_known,
)

_Held = KnownBalance | bytes | OnDisk


def _unpack(key: BalanceKey, packed: bytes) -> KnownBalance:
    return unpack_known(packed)  # a packed balance does not hold its key


class KnownRecords(Mapping[BalanceKey, KnownBalance]):
    """Every last known balance by key."""

    __slots__ = ("_by_key", "_hot", "_load")

    def __init__(
        self, hot: HotKeys, load: Callable[[BalanceKey], KnownBalance | None] = lambda key: None
    ) -> None:
        """`load`: reads a balance let go of memory back from the database."""
        self._by_key: dict[BalanceKey, _Held] = {}
        self._hot = hot
        self._load = load

    def read(self, key: BalanceKey) -> KnownBalance | None:
        """The balance of `key`, about to be used: unpacked or read back, and kept so until let go again."""
        held = self._by_key.get(key)
        if type(held) is KnownBalance or held is None:
            return held
        return thawed(self._by_key, key, held, _unpack, self._load, self._hot)  # type: ignore[arg-type]

    def put(self, key: BalanceKey, known: KnownBalance) -> None:
        """Store `known` as the balance of `key`."""
        self._by_key[key] = known

    def pack(self, key: BalanceKey) -> None:
        """Keep the balance of `key` packed (unless it cannot be packed exactly)."""
        pack_entry(self._by_key, key, KnownBalance, pack_known)

    def put_on_disk(self, key: BalanceKey) -> None:
        """Hold `key` for a balance that is durable and was not read (the store's load at open)."""
        self._by_key[key] = ON_DISK

    def let_go(self, key: BalanceKey) -> None:
        """Keep only the key of a balance that is durable: it is read back from the database when needed."""
        let_go_entry(self._by_key, key)

    def __getitem__(self, key: BalanceKey) -> KnownBalance:
        held = self._by_key[key]
        if type(held) is KnownBalance:
            return held
        known = copy_of(key, held, _unpack, self._load)  # type: ignore[arg-type]
        if known is None:
            raise KeyError(key)
        return known

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[BalanceKey]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)
