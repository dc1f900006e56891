"""The state store's freshness records in memory, with a listed account's record kept compact.

A partner-wide listing answers for every account at once: each account it answered is `listed`, and its
record differs from its neighbours' only by its subject and when it was first watched and answered,
which it shares with every account first seen in the same listing. A listing of 100,000 accounts would
otherwise keep 100,000 Freshness objects and a dict entry for each (~13 MiB); here such a record is one
entry in its source's index of listed accounts, pointing at a shared (watched_since, last_success_at)
pair, and the Freshness is made again when it is looked up (rarely: an account that drops out of a
listing, or the alert clock's walk of a late listing). Any other record is kept as it is, or, for an
account not polled lately, packed to bytes (watcher.packed): `get` unpacks it and keeps the object,
counting the subject as hot (watcher.hot_keys) until the store packs it again. Such a record may also be
let go of memory once durable (`ON_DISK`): `get` reads it back from the database (watcher.disk_records).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime

from rules.types import BalanceKey, Freshness
from watcher.hot_keys import HotKeys
from watcher.packed import (
    ON_DISK,
    OnDisk,
    copy_of,
    let_go_entry,
    pack_entry,
    pack_freshness,
    thawed,
    unpack_freshness,
)

# When a compact record was first watched and last answered by itself; one object per listing, shared.
_Since = tuple[datetime, datetime | None]
# The distinct pairs remembered for sharing; beyond this many the memo starts again (sharing is a saving,
# not a rule: a daemon that lists new accounts every round must not grow the memo for ever).
_MEMO_LIMIT = 1024


def _compact(fresh: Freshness) -> bool:
    """Whether a record is exactly what its subject, its listed flag and the pair say."""
    return (
        fresh.listed
        and fresh.last_error is None
        and not fresh.access_revoked
        and fresh.last_listing_at is None
        and fresh.subject.balance_type == ""
    )


class FreshnessRecords:
    """Every freshness record by subject: the records that are not listed (which the alert clock walks),
    and by source an index of the listed accounts, each with its compact pair or its whole record."""

    __slots__ = ("_hot", "_listed", "_load", "_memo", "_records")

    def __init__(
        self,
        records: Iterable[Freshness] = (),
        hot: HotKeys | None = None,
        load: Callable[[BalanceKey], Freshness | None] = lambda subject: None,
    ) -> None:
        """`load`: reads a record let go of memory back from the database."""
        # The records that are not listed, as they are, packed, or ON_DISK.
        self._records: dict[BalanceKey, Freshness | bytes | OnDisk] = {}
        self._hot = hot  # the store's, counting the keys unpacked by a read; None: not counted
        self._load = load
        # By source, the listed accounts: their compact pair, or the record itself when it says more.
        self._listed: dict[str, dict[str, _Since | Freshness]] = {}
        self._memo: dict[_Since, _Since] = {}
        for fresh in records:
            self.put(fresh)

    def put(self, fresh: Freshness) -> None:
        """Store `fresh` as its subject's record, replacing any before it."""
        subject = fresh.subject
        if fresh.listed:
            self._records.pop(subject, None)
            kept: _Since | Freshness = fresh
            if _compact(fresh):
                pair = (fresh.watched_since, fresh.last_success_at)
                since = self._memo.get(pair)
                if since is None:
                    if len(self._memo) >= _MEMO_LIMIT:
                        self._memo.clear()
                    since = self._memo[pair] = pair
                kept = since
            self._listed.setdefault(subject.source, {})[subject.account] = kept
        else:
            self._records[subject] = fresh
            listed = self._listed.get(subject.source)
            if listed is not None:
                listed.pop(subject.account, None)

    def get(self, subject: BalanceKey) -> Freshness | None:
        """The record of `subject`, or None."""
        record = self._records.get(subject)
        if type(record) is Freshness:
            return record
        if record is not None:
            held: bytes | OnDisk = record  # type: ignore[assignment]  # not a Freshness: returned above
            return thawed(self._records, subject, held, unpack_freshness, self._load, self._hot)
        listed = self._listed.get(subject.source)
        kept = None if listed is None else listed.get(subject.account)
        if isinstance(kept, Freshness):
            return kept if kept.subject == subject else None
        if kept is None or subject.balance_type:
            return None
        return Freshness(subject, kept[0], kept[1], listed=True)

    def pack(self, subject: BalanceKey) -> None:
        """Keep the record of `subject` packed, when it is not listed (and can be packed exactly)."""
        pack_entry(self._records, subject, Freshness, pack_freshness)

    def put_on_disk(self, subject: BalanceKey) -> None:
        """Hold `subject` for a durable record that is not listed and was not read (the store's load)."""
        self._records[subject] = ON_DISK

    def let_go(self, subject: BalanceKey) -> None:
        """Keep only the subject of a record that is durable and not listed: it is read back when needed."""
        let_go_entry(self._records, subject)

    def polled_alone(self, key: BalanceKey) -> bool:
        """Whether the account of `key` (any of its balance types) has a record that is not listed: it was
        polled on its own, or it dropped out of its source's listing. False for an account seen only in
        listings, or not yet recorded at all (a first listing stages its balances before its records)."""
        subject = key if key.balance_type == "" else BalanceKey(key.source, key.account)
        return subject in self._records

    def listed(self, source: str) -> Collection[str]:
        """The listed accounts of `source` (a live view: do not keep it)."""
        return self._listed.get(source, {}).keys()

    def unlisted(self) -> list[Freshness]:
        """The records that are not listed (the sources' own among them)."""
        found: list[Freshness] = []
        for subject, record in self._records.items():
            if type(record) is Freshness:
                found.append(record)
            else:
                fresh = copy_of(subject, record, unpack_freshness, self._load)  # type: ignore[arg-type]
                if fresh is not None:
                    found.append(fresh)
        return found

    def unlisted_subjects(self) -> Iterator[BalanceKey]:
        """The subjects of the records that are not listed, none of them read back."""
        return iter(self._records)
