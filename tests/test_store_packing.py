"""The state store packs the records of accounts polled one by one beyond its limit of hot keys: readers
see the same state whether a record is packed or not, before and after a restart; a listing's accounts
and a source's own records are never packed; and the packed state takes a fraction of the memory."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance
from watcher.packed import ON_DISK
from watcher.store import StateStore, StateUpdate

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
ACCOUNTS = [BalanceKey("mc", f"non_card_token:{n}") for n in range(6)]
SOURCE = BalanceKey("mc", "*")


def account_update(key: BalanceKey, n: int, *, listed: bool = False) -> StateUpdate:
    """What one poll of `key` stores: its balance (with a history), its stale alert, its freshness."""
    at = T0 + timedelta(seconds=n)
    history = ((at - timedelta(minutes=3), Decimal(f"{n + 1}.10")),)
    known = KnownBalance(Balance(Decimal(f"{n}.00"), "USD", "IN_CREDIT"), at, f"corr-{n}", n, "desc", history)
    alert = AlertState(f"fp-{key.account}", "stale", key, "firing" if n % 2 else "resolved", n, at,
                       reason=f"no successful poll since {at.isoformat()}", kind="stale", severity="warning")
    return StateUpdate([(key, known)], [alert], freshness=[Freshness(key, T0, at, listed=listed)])


def snapshot(store: StateStore) -> tuple[object, ...]:
    """Everything a reader can see, through the walks (which leave packed records packed)."""
    return (
        store.all_known(),
        sorted(store.all_alerts(), key=repr),
        sorted(store.active_alerts(), key=repr),
        set(store.active_alert_keys()),
        dict(store.active_alert_counts()),
        sorted(store.unlisted_freshness(), key=repr),
        {str(k.balance.amount) for k in store.all_known().values()},
    )


def point_reads(store: StateStore) -> tuple[object, ...]:
    """Everything a reader can see, through the poll path's reads (which unpack)."""
    keys = [*ACCOUNTS, SOURCE]
    return (
        [store.known(k) for k in keys],
        [dict(store.alerts_view(k)) for k in keys],
        [store.freshness(k) for k in keys],
        sorted(store.listed_accounts("mc")),
    )


def packed_keys(store: StateStore) -> set[BalanceKey]:
    """The keys whose balance is out of memory: packed, or on disk only."""
    return {k for k, held in store._known._by_key.items() if type(held) is bytes or held is ON_DISK}


def on_disk(store: StateStore) -> set[BalanceKey]:
    """The keys of which some record is on disk only."""
    return {
        k
        for records in (store._known._by_key, store._alerts._by_key, store._freshness._records)
        for k, held in records.items()
        if held is ON_DISK
    }


steps = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.booleans(), st.booleans()),  # account, listed, read it after
    min_size=1, max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, hot_keys=st.integers(0, 3))
async def test_readers_see_the_same_state_packed_or_not(
    tmp_path_factory: object, steps: list[tuple[BalanceKey, bool, bool]], hot_keys: int
) -> None:
    """Any sequence of polls (of accounts polled one by one, or answered in a listing) through a store
    that packs beyond 0-3 hot keys, and one that never packs: after each commit every walk and every
    point read gives the same state, as does a reopen (which packs as it loads); so do the keys with an
    active state and their counts, which are kept without reading a state (an active state leaves memory
    too). At most `hot_keys` of the accounts polled one by one are unpacked after a commit, and no listed
    account is ever packed."""
    folder = Path(tmp_path_factory.mktemp("packing"))  # type: ignore[attr-defined]
    packing = StateStore(folder / "p.db", hot_keys=hot_keys)
    plain = StateStore(folder / "q.db", hot_keys=10**9)
    await packing.open()
    await plain.open()
    for n, (key, listed, read) in enumerate(steps):
        for store in (packing, plain):
            await store.commit(account_update(key, n, listed=listed))
            await store.commit(StateUpdate([], [], freshness=[Freshness(SOURCE, T0, T0, last_listing_at=T0)]))
        assert snapshot(packing) == snapshot(plain)
        listed_now = set(packing.listed_accounts("mc"))
        assert not any(k.account in listed_now for k in packed_keys(packing))
        unpacked = set(packing._known) - packed_keys(packing)
        assert len({k for k in unpacked if k.account not in listed_now}) <= hot_keys
        assert SOURCE not in packed_keys(packing)
        if read:
            assert point_reads(packing) == point_reads(plain)
    for store in (packing, plain):
        await store.close()
    again = StateStore(folder / "p.db", hot_keys=hot_keys)
    await again.open()
    try:
        assert snapshot(again) == snapshot(plain)
        listed = set(again.listed_accounts("mc"))
        unlisted = {k for k in ACCOUNTS if k in again._known and k.account not in listed}
        assert packed_keys(again) == unlisted, "loaded packed"
        assert point_reads(again) == point_reads(plain)
    finally:
        await again.close()


async def test_a_listing_staged_before_its_records_is_never_packed(tmp_path: Path) -> None:
    """The poller stages a listing's balances and alerts slice by slice, and its freshness records with the
    last slice: accounts not yet recorded as listed are not taken for accounts polled one by one (packed,
    a listing's accounts would be unpacked one by one every round, each with objects of its own). An
    account that drops out of the listing is packed from then on."""
    store = StateStore(tmp_path / "s.db", hot_keys=0)
    await store.open()
    for n, key in enumerate(ACCOUNTS):  # one slice each, no freshness yet
        update = account_update(key, n)
        await store.commit(StateUpdate(update.balances, update.alerts))
    records = [Freshness(key, T0, T0, listed=True) for key in ACCOUNTS]
    records.append(Freshness(SOURCE, T0, T0, last_listing_at=T0))
    await store.commit(StateUpdate([], [], freshness=records))
    assert packed_keys(store) == set()
    await store.commit(StateUpdate([], [], freshness=[Freshness(ACCOUNTS[0], T0, T0, "HTTP 404")]))
    assert packed_keys(store) == {ACCOUNTS[0]}
    await store.close()


async def test_packed_accounts_take_a_fraction_of_the_memory(tmp_path: Path) -> None:
    """2,000 accounts polled one by one, each with a history, a stale alert and a freshness record: the
    store's memory for their state (traced allocations) with every account packed is under half of it
    with none packed."""
    keys = [BalanceKey("mc", f"non_card_token:{n:06d}") for n in range(2000)]

    async def traced(hot_keys: int) -> int:
        store = StateStore(tmp_path / f"{hot_keys}.db", hot_keys=hot_keys)
        await store.open()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n, key in enumerate(keys):
                store.stage(account_update(key, n))
            await store.flush()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            await store.close()

    unpacked, packed = await traced(10**6), await traced(0)
    assert packed < unpacked / 2, (packed, unpacked)


async def test_records_let_go_of_memory_are_read_back_from_disk(tmp_path: Path) -> None:
    """Beyond the hot keys, a durable account's records leave memory (only their keys stay): a read on the
    poll path fetches each back from SQLite, equal to what was written, keeps it until the next group
    commit lets it go again, and is counted; a walk reads a copy and leaves it on disk."""
    store = StateStore(tmp_path / "s.db", hot_keys=0)
    await store.open()
    key = ACCOUNTS[0]
    update = account_update(key, 2)  # a resolved alert: nothing active keeps it in memory
    await store.commit(update)
    assert on_disk(store) == {key}
    assert store.all_known() == {key: update.balances[0][1]}
    assert on_disk(store) == {key}, "a walk reads a copy"
    reads = store.disk_reads
    assert store.known(key) == update.balances[0][1]
    assert dict(store.alerts_view(key)) == {update.alerts[0].fingerprint: update.alerts[0]}
    assert store.freshness(key) == update.freshness[0]
    assert store.disk_reads == reads + 3
    assert on_disk(store) == set()
    await store.commit(StateUpdate([], [], freshness=[Freshness(SOURCE, T0, T0)]))
    assert on_disk(store) == {key}, "let go again after the next group commit"
    await store.close()


async def test_a_record_whose_write_is_still_queued_is_packed_not_let_go(tmp_path: Path) -> None:
    """A record staged after the group commit in flight is newer in memory than on disk: when that commit
    ends and the key is beyond the hot keys, it is packed, never let go (a read would then fetch the
    older row from disk)."""
    store = StateStore(tmp_path / "s.db", hot_keys=0)
    await store.open()
    key = ACCOUNTS[0]
    first = store.stage(account_update(key, 2))
    while not store._writing:  # the writer has taken the first update into its transaction  # noqa: ASYNC110
        await asyncio.sleep(0)
    newer = account_update(key, 4)
    second = store.stage(newer)
    await first
    assert key not in on_disk(store)
    assert store.known(key) == newer.balances[0][1]
    assert store.freshness(key) == newer.freshness[0]
    await second
    await store.commit(StateUpdate([], [], freshness=[Freshness(SOURCE, T0, T0)]))
    assert on_disk(store) == {key}
    assert store.known(key) == newer.balances[0][1]
    await store.close()


async def test_a_record_gone_from_disk_reads_as_never_seen(tmp_path: Path) -> None:
    """Only a database changed by another program can lose a row whose record left memory: the account
    then reads as new (no balance, no alerts, no freshness), and the store goes on."""
    store = StateStore(tmp_path / "s.db", hot_keys=0)
    await store.open()
    key = ACCOUNTS[0]
    await store.commit(account_update(key, 2))
    with sqlite3.connect(tmp_path / "s.db") as db:
        for table in ("balances", "alerts", "freshness"):
            db.execute(f"DELETE FROM {table} WHERE account = ?", (key.account,))
    assert store.known(key) is None
    assert dict(store.alerts_view(key)) == {}
    assert store.freshness(key) is None
    assert key not in store.known_view()
    await store.close()
