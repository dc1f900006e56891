"""The state store's balances in memory (watcher.known_records) and which keys hold objects
(watcher.hot_keys): a packed balance reads back equal, a read on the poll path keeps it unpacked and
counts its key as hot, and beyond the limit the oldest hot keys are handed back to be packed."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.types import Balance, BalanceKey, KnownBalance
from watcher.hot_keys import HotKeys
from watcher.known_records import KnownRecords

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KEYS = [BalanceKey("mc", account) for account in ("a", "b", "c", "d")]


def balance(amount: str) -> KnownBalance:
    return KnownBalance(Balance(Decimal(amount), "EUR", "IN_CREDIT"), T0, f"corr-{amount}", 1)


def test_hot_keys_hand_back_the_oldest_beyond_the_limit() -> None:
    """Keys come back oldest first, only those beyond the limit, each once; a key added again keeps its
    place; a limit of 0 hands back every key; a negative limit is refused."""
    hot = HotKeys(2)
    for key in (KEYS[0], KEYS[1], KEYS[0], KEYS[2]):
        hot.add(key)
    assert hot.overflow() == [KEYS[0]]
    assert hot.overflow() == []
    assert len(hot) == 2
    hot.limit = 0
    assert hot.overflow() == [KEYS[1], KEYS[2]]
    with pytest.raises(ValueError, match="0 or more"):
        HotKeys(-1)


def test_a_read_unpacks_and_keeps_a_balance_a_look_up_does_not() -> None:
    """`read` (the poll path) unpacks a packed balance, keeps the object and counts the key as hot; the
    Mapping look-ups and walks (the alert clock, the metrics) give equal balances and leave it packed."""
    hot = HotKeys(10)
    kept = KnownRecords(hot)
    kept.put(KEYS[0], balance("10.50"))
    kept.pack(KEYS[0])
    assert type(kept._by_key[KEYS[0]]) is bytes
    assert kept[KEYS[0]] == balance("10.50")
    assert dict(kept.items()) == {KEYS[0]: balance("10.50")}
    assert kept.get(KEYS[1]) is None
    assert KEYS[1] not in kept
    assert len(kept) == 1
    assert type(kept._by_key[KEYS[0]]) is bytes, "still packed"
    assert len(hot) == 0
    read = kept.read(KEYS[0])
    assert read == balance("10.50")
    assert kept.read(KEYS[0]) is read, "unpacked once, then the same object"
    assert hot.overflow() == []
    assert len(hot) == 1
    assert kept.read(KEYS[1]) is None


@settings(max_examples=200)
@given(st.lists(
    st.tuples(st.sampled_from(["put", "pack", "let_go", "read"]), st.sampled_from(KEYS),
              st.sampled_from(["1", "2.5"])),
    max_size=30,
))
def test_balances_read_back_as_the_last_put_whatever_was_packed_or_let_go(
    steps: list[tuple[str, BalanceKey, str]],
) -> None:
    """Through any sequence of puts, packs, lets go (each put durable at once, as the store lets go only
    of durable keys) and reads, every read, look-up and walk gives the last balance put for each key,
    with its amount's exponent; a read keeps what it unpacked or fetched from disk, a walk a copy."""
    disk: dict[BalanceKey, KnownBalance] = {}
    hot = HotKeys(10)
    kept = KnownRecords(hot, disk.get)
    for op, key, amount in steps:
        if op == "put":
            kept.put(key, balance(amount))
            disk[key] = balance(amount)
        elif op == "pack":
            kept.pack(key)
        elif op == "let_go":
            kept.let_go(key)
        else:
            assert kept.read(key) == disk.get(key)
            assert key not in disk or type(kept._by_key[key]) is KnownBalance
        held = dict(kept._by_key)
        assert dict(kept.items()) == disk
        assert set(kept) == set(disk)
        assert {k: str(v.balance.amount) for k, v in kept.items()} == {
            k: str(v.balance.amount) for k, v in disk.items()
        }
        assert all(kept._by_key[k] is v for k, v in held.items()), "the walks change nothing"
