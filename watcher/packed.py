"""A record of the state store packed into one bytes object, for the accounts no poll has touched lately.

Polling 100,000 accounts one by one, each keeps its last balance (with the history its drop rules look
back on), its `stale` alert state and its freshness record: ~1.5 KB of objects an account (a Decimal is
104 bytes, a datetime 48, a dataclass with its strings a few hundred), though an account is read only
when it is polled again or its alert comes due. Packed, the same record is ~100-250 bytes: its Decimals
as their strings, its datetimes as microseconds since the epoch, the whole a `marshal` of a flat tuple.

A packed record is only ever held in memory by this process (never written, never read by another
Python), so `marshal`'s format, which may change between Python versions, is fine here. Unpacking makes
equal objects again: Decimal keeps its exponent (1000.00 stays 1000.00); a datetime comes back in UTC.
A record that cannot be packed exactly (a datetime that is naive or in another zone than `datetime.UTC`)
is not packed: `pack_*` returns None and the store keeps the object.

Beyond packing, a record that is durable may leave memory altogether (`ON_DISK`): see watcher.disk_records.
"""

from __future__ import annotations

import enum
import marshal
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar

from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance

if TYPE_CHECKING:
    from watcher.hot_keys import HotKeys

_K = TypeVar("_K")
_R = TypeVar("_R")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class OnDisk(enum.Enum):
    """What a container holds for a record that is only on disk (written, then let go of memory): its key
    stays, so membership and walks over keys are unchanged, and a read fetches the record again."""

    ON_DISK = "on disk"


ON_DISK: Final = OnDisk.ON_DISK


class _NotPackable(Exception):
    """A value the packed form cannot give back exactly."""


def pack_entry(
    records: MutableMapping[_K, Any], key: _K, kind: type[_R], pack: Callable[[_R], bytes | None]
) -> None:
    """Replace the record of `key` with its packed bytes, when it is a `kind` (not packed already, nor a
    container's other form) and packs exactly."""
    held = records.get(key)
    if type(held) is kind:
        packed = pack(held)
        if packed is not None:
            records[key] = packed


def let_go_entry(records: MutableMapping[BalanceKey, Any], key: BalanceKey) -> None:
    """Keep only `key` for a record that is durable, if there is one: it is read back when needed."""
    if key in records:
        records[key] = ON_DISK


def thawed(
    records: MutableMapping[BalanceKey, Any],
    key: BalanceKey,
    held: bytes | OnDisk,
    unpack: Callable[[BalanceKey, bytes], _R],
    load: Callable[[BalanceKey], _R | None],
    hot: HotKeys | None,
) -> _R | None:
    """The record of `key`, held packed or on disk, made an object again and kept so (its key counted as
    hot); None when it is on disk no more (only a database changed by someone else can do that), and its
    entry is dropped."""
    record = copy_of(key, held, unpack, load)
    if record is None:
        del records[key]
        return None
    records[key] = record
    if hot is not None:
        hot.add(key)
    return record


def copy_of(
    key: BalanceKey,
    held: bytes | OnDisk,
    unpack: Callable[[BalanceKey, bytes], _R],
    load: Callable[[BalanceKey], _R | None],
) -> _R | None:
    """The record of `key`, held packed or on disk, as an object for one use (the container keeps it as it
    is held)."""
    return unpack(key, held) if type(held) is bytes else load(key)


def _us(moment: datetime) -> int:
    if moment.tzinfo is not UTC:  # naive, or another zone (even one at offset 0): it would come back changed
        raise _NotPackable(moment)
    return (moment - _EPOCH) // _MICROSECOND


def _us_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else _us(moment)


def _moment(us: int) -> datetime:
    return _EPOCH + timedelta(0, 0, us)  # positional: twice as fast as microseconds=us


def _moment_or_none(us: int | None) -> datetime | None:
    return None if us is None else _moment(us)


def pack_known(known: KnownBalance) -> bytes | None:
    """`known` as bytes, or None when it cannot be packed exactly."""
    balance = known.balance
    try:
        history = tuple(x for at, amount in known.history for x in (_us(at), str(amount)))
        return marshal.dumps((
            str(balance.amount), balance.currency, balance.state, balance.balance_type,
            _us(known.observed_at), known.correlation_id, known.version, known.description, history,
        ))
    except _NotPackable:
        return None


def unpack_known(packed: bytes) -> KnownBalance:
    """The KnownBalance `pack_known` packed."""
    amount, currency, state, balance_type, observed_us, correlation_id, version, description, flat = (
        marshal.loads(packed)
    )
    return KnownBalance(
        Balance(Decimal(amount), currency, state, balance_type),
        _moment(observed_us),
        correlation_id,
        version,
        description,
        tuple((_moment(flat[i]), Decimal(flat[i + 1])) for i in range(0, len(flat), 2)) if flat else (),
    )


def pack_alert(state: AlertState) -> bytes | None:
    """`state` without its key (the store's dict holds it) as bytes, or None when it cannot be packed
    exactly."""
    try:
        return marshal.dumps((
            state.fingerprint, state.rule, state.status, state.episode, _us(state.started_at),
            _us_or_none(state.resolved_at), _us_or_none(state.pending_since),
            _us_or_none(state.cleared_since), state.published, state.muted, state.suppressed_by,
            _us_or_none(state.last_sent_at), state.repeats, state.reason, state.kind, state.severity,
        ))
    except _NotPackable:
        return None


def unpack_alert(key: BalanceKey, packed: bytes) -> AlertState:
    """The AlertState of `key` that `pack_alert` packed."""
    (fingerprint, rule, status, episode, started, resolved, pending, cleared, published, muted, suppressed_by,
     last_sent, repeats, reason, kind, severity) = marshal.loads(packed)
    return AlertState(
        fingerprint, rule, key, status, episode, _moment(started), _moment_or_none(resolved),
        _moment_or_none(pending), _moment_or_none(cleared), published, muted, suppressed_by,
        _moment_or_none(last_sent), repeats, reason, kind, severity,
    )


def pack_freshness(fresh: Freshness) -> bytes | None:
    """`fresh` without its subject (the store's dict holds it) as bytes, or None when it cannot be packed
    exactly."""
    try:
        return marshal.dumps((
            _us(fresh.watched_since), _us_or_none(fresh.last_success_at), fresh.last_error,
            fresh.access_revoked, fresh.listed, _us_or_none(fresh.last_listing_at),
        ))
    except _NotPackable:
        return None


def unpack_freshness(subject: BalanceKey, packed: bytes) -> Freshness:
    """The Freshness of `subject` that `pack_freshness` packed."""
    watched, success, error, revoked, listed, listing = marshal.loads(packed)
    return Freshness(
        subject, _moment(watched), _moment_or_none(success), error, revoked, listed, _moment_or_none(listing)
    )
