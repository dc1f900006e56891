"""The state store packs the records of accounts polled one by one beyond its limit of hot keys: readers
see the same state whether a record is packed or not, before and after a restart; a listing's accounts
and a source's own records are never packed; and the packed state takes a fraction of the memory."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance
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
    return {k for k, held in store._known._by_key.items() if type(held) is bytes}


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
    point read gives the same state, as does a reopen (which packs as it loads). At most `hot_keys` of
    the accounts polled one by one are unpacked after a commit, and no listed account is ever packed."""
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
