"""The state store's alert states in memory: by key and fingerprint, and which keys have active ones.

Most keys hold one alert state: polling 100,000 accounts one by one, each has its `stale` alert; a
listing's low balances have their one `below` alert. A dict of one per key costs ~230 bytes, the state's
own size again, so a key's only state is kept as itself, and a dict by fingerprint is made only for a
key with two or more. The active ones are indexed by key, not by (key, fingerprint) pairs: no tuple per
firing alert.

A key's only state may also be packed to bytes (watcher.packed), ~230 bytes instead of ~550 with its
strings and datetimes, for an account not polled lately: `view` unpacks it and keeps the object, counting
the key as hot (watcher.hot_keys) until the store packs it again; the walks (`active`, iteration) unpack a
copy and change nothing. A key's states may also be let go of memory (`ON_DISK`), active ones too: they
are read back from the database the same two ways (watcher.disk_records). So what the daemon reads of
the active states every round is kept by key and counted here, without reading any state: the keys with
an active state (the alert clock's start), and how many are pending or firing per rule and severity (the
metrics' gauge, and whether a rules reload must walk them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping
from types import MappingProxyType

from rules.types import ACTIVE_STATUSES, AlertState, BalanceKey
from watcher.hot_keys import HotKeys
from watcher.packed import (
    ON_DISK,
    OnDisk,
    let_go_entry,
    pack_alert,
    pack_entry,
    unpack_alert,
)

# What `view` returns for a key without alert states: shared, read-only.
NO_ALERTS: Mapping[str, AlertState] = MappingProxyType({})


class AlertRecords:
    """Every stored alert state, the latest put of each (key, fingerprint)."""

    __slots__ = ("_active", "_by_key", "_counts", "_hot", "_load")

    def __init__(
        self,
        states: Iterable[AlertState] = (),
        hot: HotKeys | None = None,
        load: Callable[[BalanceKey], list[AlertState]] = lambda key: [],
    ) -> None:
        """`load`: reads the states of a key let go of memory back from the database."""
        # A key's states: its only one (an object, or packed), or a dict of two or more by fingerprint;
        # ON_DISK when they were let go of memory.
        self._by_key: dict[BalanceKey, AlertState | bytes | dict[str, AlertState] | OnDisk] = {}
        self._hot = hot  # the store's, counting the keys unpacked by a read; None: not counted
        self._load = load
        # The keys with a pending or firing state, in the order they became so (a dict as an ordered set).
        self._active: dict[BalanceKey, None] = {}
        # The active states by (rule, severity, status): kept as states are put, never by a walk.
        self._counts: Counter[tuple[str, str | None, str]] = Counter()
        for state in states:
            self.put(state)

    def put(self, state: AlertState) -> None:
        """Store `state` in place of the one of its key and fingerprint, if any."""
        key = state.key
        held = self._by_key.get(key)
        if held is ON_DISK:
            held = self._read_back(key)
        replaced: AlertState | None = None
        if held is None:
            self._by_key[key] = state
        elif type(held) is AlertState:
            if held.fingerprint == state.fingerprint:
                replaced = held
                self._by_key[key] = state
            else:
                self._by_key[key] = {held.fingerprint: held, state.fingerprint: state}
        elif type(held) is bytes:
            before = unpack_alert(key, held)
            if before.fingerprint == state.fingerprint:
                replaced = before
                self._by_key[key] = state
            else:
                self._by_key[key] = {before.fingerprint: before, state.fingerprint: state}
        else:
            assert isinstance(held, dict)
            replaced = held.get(state.fingerprint)
            held[state.fingerprint] = state
        if replaced is not None and replaced.status in ACTIVE_STATUSES:
            self._count(replaced, -1)
        if state.status in ACTIVE_STATUSES:
            self._count(state, 1)
            self._active[key] = None
        elif key in self._active and not any(
            s.status in ACTIVE_STATUSES for s in _states_in(self._by_key[key])
        ):
            del self._active[key]

    def _count(self, state: AlertState, change: int) -> None:
        group = (state.rule, state.severity, state.status)
        count = self._counts[group] + change
        if count:
            self._counts[group] = count
        else:
            del self._counts[group]

    def view(self, key: BalanceKey) -> Mapping[str, AlertState]:
        """The states of `key` by fingerprint, read-only (a key's only state in a dict of its own, made for
        the call). It may follow later puts; do not keep it."""
        held = self._by_key.get(key)
        if held is None:
            return NO_ALERTS
        if type(held) is bytes:
            held = self._by_key[key] = unpack_alert(key, held)
            if self._hot is not None:
                self._hot.add(key)
        elif held is ON_DISK:
            held = self._read_back(key)
            if held is None:
                return NO_ALERTS
        if type(held) is AlertState:
            return {held.fingerprint: held}
        assert isinstance(held, dict)
        return MappingProxyType(held)

    def active(self) -> Iterator[AlertState]:
        """The pending and firing states, one at a time: a packed one is unpacked for its turn only, and
        one on disk read back for it, so a walk over 100,000 of them never holds them all (do not put
        states while walking). Reading them back costs ~60 us each: see `active_keys` and `counts`."""
        for key in self._active:
            held = self._by_key[key]
            if type(held) is AlertState:
                yield held  # an active key's only state is the active one
            elif type(held) is bytes:
                yield unpack_alert(key, held)
            elif held is ON_DISK:
                yield from (s for s in self._load(key) if s.status in ACTIVE_STATUSES)
            else:
                yield from (s for s in _states_in(held) if s.status in ACTIVE_STATUSES)

    def active_keys(self) -> KeysView[BalanceKey]:
        """The keys with a pending or firing state, without reading a state (do not put while walking)."""
        return self._active.keys()

    def counts(self) -> Mapping[tuple[str, str | None, str], int]:
        """How many states are pending or firing, by (rule, severity, status), read-only."""
        return MappingProxyType(self._counts)

    def put_on_disk(self, key: BalanceKey, active: AlertState | None = None) -> None:
        """Hold `key` for a state that is durable and was not kept (the store's load at open); an active
        one is given, to be indexed and counted, and is not kept either."""
        self._by_key[key] = ON_DISK
        if active is not None:
            self._active[key] = None
            self._count(active, 1)

    def pack(self, key: BalanceKey) -> None:
        """Keep the state of `key` packed, when it is its only one (and can be packed exactly)."""
        pack_entry(self._by_key, key, AlertState, pack_alert)

    def let_go(self, key: BalanceKey) -> None:
        """Keep only the key of states that are durable: they are read back from the database when
        needed."""
        let_go_entry(self._by_key, key)

    def _read_back(self, key: BalanceKey) -> AlertState | dict[str, AlertState] | None:
        """Read the states of `key` back from the database and keep them in memory again."""
        states = self._load(key)
        if not states:  # on disk no more: only a database changed by someone else can do that
            del self._by_key[key]
            self._active.pop(key, None)  # (its states' counts cannot be known now: they are left)
            return None
        held = self._by_key[key] = states[0] if len(states) == 1 else {s.fingerprint: s for s in states}
        if self._hot is not None:
            self._hot.add(key)
        return held

    def __iter__(self) -> Iterator[AlertState]:
        """Every state."""
        for key, held in self._by_key.items():
            if type(held) is bytes:
                yield unpack_alert(key, held)
            elif held is ON_DISK:
                yield from self._load(key)
            else:
                yield from _states_in(held)


def _states_in(held: AlertState | bytes | dict[str, AlertState] | OnDisk) -> Iterable[AlertState]:
    """The states of one key as `_by_key` holds them, unpacked: the one state itself, or a dict by
    fingerprint (`put` and `active` never pass a packed one or one on disk: see the callers)."""
    if type(held) is AlertState:
        return (held,)
    assert isinstance(held, dict)
    return held.values()
