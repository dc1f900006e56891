"""The SQLite state store: what is committed survives a restart, exactly, and nothing else does; commits
are written in groups, a failed group leaves memory equal to disk, and the outbox reaches the relay in
order, from memory or from the table."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from rules.engine import BalanceChange
from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance, Observation
from watcher.events import Event, change_event
from watcher.store import OutboxFull, PollRecord, StateStore, StateUpdate, StateWriteError

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
KEY = BalanceKey("mc", "non_card_token:abc", "")
CARD = BalanceKey("mypos", "50553500971", "available")


async def test_committed_state_survives_reopen(tmp_path: Path) -> None:
    """Balances (exact decimals, state, type) and alert states read back equal after a reopen."""
    path = tmp_path / "deep" / "state.db"
    store = StateStore(path)
    await store.open()
    known = KnownBalance(Balance(Decimal("1000.50"), "GBP", "IN_DEBIT"), T0, "corr-1", 3, "main")
    card = KnownBalance(Balance(Decimal("120.260"), "EUR", None, "available"), T0, "req-1", 1)
    alert = AlertState("f" * 32, "low", KEY, "firing", 2, T0)
    await store.commit(StateUpdate(balances=[(KEY, known), (CARD, card)], alerts=[alert]))
    assert store.known(KEY) == known
    await store.close()

    again = StateStore(path)
    await again.open()
    assert again.known(KEY) == known
    assert again.known(CARD) == card
    assert str(again.known(CARD).balance.amount) == "120.260"  # type: ignore[union-attr]
    assert again.alerts(KEY) == {"f" * 32: alert}
    assert again.known(BalanceKey("mc", "other")) is None
    await again.close()


async def test_alert_update_replaces_the_previous_state(tmp_path: Path) -> None:
    """Writing a resolved state over a firing one leaves one row, the resolved one."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    firing = AlertState("a" * 32, "low", KEY, "firing", 1, T0)
    resolved = AlertState("a" * 32, "low", KEY, "resolved", 1, T0, T0 + timedelta(minutes=5))
    await store.commit(StateUpdate(balances=[], alerts=[firing]))
    await store.commit(StateUpdate(balances=[], alerts=[resolved]))
    assert store.all_alerts() == [resolved]
    await store.close()


async def test_active_alerts_follow_every_update_and_survive_reopen(tmp_path: Path) -> None:
    """`active_alerts` (what the alert clock walks) holds exactly the pending and firing states: a state
    leaves it when it resolves, joins it when it fires again, and the index is rebuilt on open; so do
    the keys with an active state and the counts by rule, severity and status."""
    store = StateStore(tmp_path / "state.db")
    await store.open()
    pending = AlertState("a" * 32, "low", KEY, "pending", 0, T0, pending_since=T0)
    other = AlertState("b" * 32, "state", CARD, "firing", 1, T0, severity="critical")
    await store.commit(StateUpdate(balances=[], alerts=[pending, other]))
    assert sorted(a.fingerprint for a in store.active_alerts()) == ["a" * 32, "b" * 32]
    assert set(store.active_alert_keys()) == {KEY, CARD}
    assert store.active_alert_counts() == {("low", None, "pending"): 1, ("state", "critical", "firing"): 1}
    resolved = AlertState("a" * 32, "low", KEY, "resolved", 1, T0, T0 + timedelta(minutes=5))
    await store.commit(StateUpdate(balances=[], alerts=[resolved]))
    assert list(store.active_alerts()) == [other]
    assert list(store.active_alert_keys()) == [CARD]
    assert store.active_alert_counts() == {("state", "critical", "firing"): 1}
    await store.close()
    reopened = StateStore(tmp_path / "state.db")
    await reopened.open()
    assert list(reopened.active_alerts()) == [other]
    assert list(reopened.active_alert_keys()) == [CARD]
    assert reopened.active_alert_counts() == {("state", "critical", "firing"): 1}
    assert {a.status for a in reopened.all_alerts()} == {"resolved", "firing"}
    await reopened.close()


async def test_failed_poll_keeps_the_time_of_the_last_success(tmp_path: Path) -> None:
    """A failed call records its outcome but does not erase when the target last succeeded."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    ok = PollRecord("mc", "*", T0, "ok", 200, "c1", None, T0)
    failed = PollRecord("mc", "*", T0 + timedelta(minutes=1), "http_error", 500, "c2", "HTTP 500", None)
    await store.record_polls([ok])
    await store.record_polls([failed])
    (record,) = await store.poll_records()
    assert record.outcome == "http_error"
    assert record.last_success_at == T0
    await store.close()


async def test_access_ledger_survives_reopen_and_forgets_after_a_day(tmp_path: Path) -> None:
    """PSD2 accesses recorded in the store are there after a restart; older than 24 h they are dropped."""
    now = datetime.now(UTC)
    store = StateStore(tmp_path / "s.db")
    await store.open()
    await store.record("cards", "505", now - timedelta(hours=30))
    await store.record("cards", "505", now - timedelta(hours=2))
    await store.record("cards", "506", now)
    await store.close()
    again = StateStore(tmp_path / "s.db")
    await again.open()
    assert again.load("cards", "505", now - timedelta(days=1)) == [now - timedelta(hours=2)]
    assert again.load("cards", "505", now - timedelta(days=2)) == [now - timedelta(hours=2)]
    assert again.load("cards", "506", now - timedelta(days=1)) == [now]
    await again.close()


async def test_alert_lifecycle_history_and_freshness_survive_reopen(tmp_path: Path) -> None:
    """Every lifecycle field of an alert, a balance's drop history and the freshness of poll subjects
    read back equal after a restart, so the `for` clock and withheld alerts are not forgotten."""
    from rules.types import Freshness

    store = StateStore(tmp_path / "s.db")
    await store.open()
    pending = AlertState(
        "p" * 32, "low", KEY, "pending", 0, T0, pending_since=T0, published=False, muted=True,
        suppressed_by="critical", last_sent_at=T0 + timedelta(hours=1), repeats=3, reason="consent expired",
        kind="below", severity="critical", cleared_since=T0 + timedelta(minutes=2),
    )
    known = KnownBalance(Balance(Decimal("10.00"), "GBP", "IN_CREDIT"), T0, "c", 2,
                         history=((T0 - timedelta(minutes=5), Decimal("100.50")),))
    fresh = Freshness(BalanceKey("mc", "*"), T0, T0 + timedelta(minutes=1), "HTTP 503", True)
    await store.commit(StateUpdate(balances=[(KEY, known)], alerts=[pending], freshness=[fresh]))
    await store.close()
    again = StateStore(tmp_path / "s.db")
    await again.open()
    assert again.alerts(KEY) == {"p" * 32: pending}
    assert again.known(KEY) == known
    assert again.freshness(BalanceKey("mc", "*")) == fresh
    await again.close()


# --- group commit -----------------------------------------------------------------------------------

def _events(account: str, version: int) -> list[Event]:
    balance = Balance(Decimal(f"{version}.00"), "GBP", "IN_CREDIT")
    obs = Observation(BalanceKey("src", account), "mastercard-send", balance, T0, f"c-{account}-{version}")
    return [change_event(BalanceChange(obs, None, version))]


def _known(amount: str) -> KnownBalance:
    return KnownBalance(Balance(Decimal(amount), "GBP", "IN_CREDIT"), T0, "c", 1)


def _hold_the_store_thread(store: StateStore) -> threading.Event:
    """Park the store's one worker thread until the returned event is set: jobs queue behind it."""
    gate = threading.Event()
    store._executor.submit(gate.wait, 10)
    return gate


async def test_concurrent_commits_are_written_in_one_transaction(tmp_path: Path) -> None:
    """Commits staged while the writer is idle or busy go to disk together: ten concurrent commits
    cost one transaction (one executor hop, one sync), and every one of them is durable after."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    keys = [BalanceKey("src", f"a{n}") for n in range(10)]
    await asyncio.gather(
        *(store.commit(StateUpdate([(key, _known(f"{n}.00"))], []), _events(key.account, 1))
          for n, key in enumerate(keys))
    )
    assert store.group_commits == 1
    batch = await store.outbox_batch(100)
    assert [e.seq for e in batch] == list(range(1, 11)), "one seq per event, in staging order"
    await store.close()
    again = StateStore(tmp_path / "s.db")
    await again.open()
    assert [again.known(k).balance.amount for k in keys] == [Decimal(n) for n in range(10)]  # type: ignore[union-attr]
    assert again.outbox_depth == 10
    await again.close()


async def test_stage_is_visible_at_once_and_durable_when_awaited(tmp_path: Path) -> None:
    """`stage` applies the update to memory synchronously (what the evaluation lock protects) and
    queues it; commits staged while a batch is being written form the next batch."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    gate = _hold_the_store_thread(store)
    first = store.stage(StateUpdate([(KEY, _known("1.00"))], []))
    assert store.known(KEY) == _known("1.00"), "in memory before it is durable"
    await asyncio.sleep(0)  # the writer takes the first batch; it waits behind the gate
    second = store.stage(StateUpdate([(CARD, _known("2.00"))], []))
    third = store.stage(StateUpdate([(KEY, _known("3.00"))], []))
    assert not first.done()
    gate.set()
    await first
    await second
    await third
    assert store.group_commits == 2, "the ones staged during a write share the next transaction"
    await store.close()
    again = StateStore(tmp_path / "s.db")
    await again.open()
    assert again.known(KEY) == _known("3.00"), "the later update of the same row wins on disk too"
    assert again.known(CARD) == _known("2.00")
    await again.close()


async def test_failed_batch_fails_its_updates_and_those_after_it_and_reloads_memory(tmp_path: Path) -> None:
    """A batch that cannot be written fails every update in it and every update queued after it
    (they were derived from memory that had the failed ones); nothing can be staged until memory is
    reloaded from disk, after which memory equals disk again and writing goes on."""
    path = tmp_path / "s.db"
    store = StateStore(path)
    await store.open()
    await store.commit(StateUpdate([(KEY, _known("1.00"))], []), _events("a", 1))
    with sqlite3.connect(path) as db:  # the disk refuses one account, inside the real transaction
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON balances WHEN NEW.account = 'poison'"
                   " BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END")
    poison = BalanceKey("mc", "poison")
    held = _hold_the_store_thread(store)
    failing = store.stage(StateUpdate([(poison, _known("9.00"))], []), _events("poison", 1))
    await asyncio.sleep(0)  # the writer takes the failing batch; it waits behind the gate
    after = store.stage(StateUpdate([(KEY, _known("2.00"))], []), _events("a", 2))
    reload_held = threading.Event()
    store._executor.submit(reload_held.wait, 10)  # the reload, after the failed write, waits for this
    assert store.known(poison) is not None
    assert store.known(KEY) == _known("2.00")
    assert store.outbox_depth == 3
    held.set()
    with pytest.raises(StateWriteError):
        await failing
    with pytest.raises(StateWriteError):
        await after
    with pytest.raises(StateWriteError):  # memory is not yet reloaded: nothing may be derived from it
        store.stage(StateUpdate([(CARD, _known("5.00"))], []))
    reload_held.set()
    await store.flush()  # the reload is done
    assert store.known(poison) is None
    assert store.known(KEY) == _known("1.00"), "memory is back to what is on disk"
    assert store.outbox_depth == 1
    await store.commit(StateUpdate([(CARD, _known("5.00"))], []), _events("card", 1))
    expected = [_events("a", 1)[0].id, _events("card", 1)[0].id]
    assert [e.ce_id for e in await store.outbox_batch(10)] == expected
    await store.close()
    again = StateStore(path)
    await again.open()
    assert again.known(poison) is None
    assert again.known(KEY) == _known("1.00")
    assert again.known(CARD) == _known("5.00")
    assert again.outbox_depth == 2
    await again.close()


async def test_full_outbox_counts_staged_events(tmp_path: Path) -> None:
    """The outbox bound holds for events staged but not yet written: OutboxFull changes nothing."""
    store = StateStore(tmp_path / "s.db", outbox_limit=2)
    await store.open()
    gate = _hold_the_store_thread(store)
    staged = store.stage(StateUpdate([], []), _events("a", 1) + _events("b", 1))
    with pytest.raises(OutboxFull):
        store.stage(StateUpdate([(KEY, _known("1.00"))], []), _events("c", 1))
    assert store.known(KEY) is None
    gate.set()
    await staged
    await store.close()


def test_alerts_view_is_read_only_and_shared_when_empty(tmp_path: Path) -> None:
    """The poll path's alert look-up copies nothing: keys without alerts share one empty mapping."""
    store = StateStore(tmp_path / "s.db")
    assert store.alerts_view(KEY) is store.alerts_view(CARD)
    assert dict(store.alerts_view(KEY)) == {}


# --- the outbox in memory, and its range delete -------------------------------------------------------

async def test_acknowledged_events_are_deleted_as_one_range(tmp_path: Path) -> None:
    """The relay's batches come from memory (no SELECT of the outbox), and acknowledging one deletes
    its rows with one `DELETE ... WHERE seq <= ?`, in the next group commit; the rest stay durable."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    for n in range(5):
        await store.commit(StateUpdate([], []), _events(f"a{n}", 1))
    statements: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(statements.append)
    batch = await store.outbox_batch(3)
    assert [e.seq for e in batch] == [1, 2, 3]
    store.acknowledge(batch)
    assert store.outbox_depth == 2
    assert [e.seq for e in await store.outbox_batch(10)] == [4, 5]
    await store.flush()
    deletes = [s for s in statements if s.startswith("DELETE")]
    assert deletes == ["DELETE FROM outbox WHERE seq <= 3"]
    assert not [s for s in statements if "FROM outbox" in s and s.startswith("SELECT")]
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")] == [4, 5]


async def test_outbox_batches_stay_in_order_across_restart_and_memory_overflow(tmp_path: Path) -> None:
    """Events left from a previous run are read from the table, then memory takes over; when memory
    overflows, the table is read again: every unacknowledged event comes out once, in commit order."""
    path = tmp_path / "s.db"
    store = StateStore(path)
    await store.open()
    written: list[str] = []
    for n in range(4):
        events = _events(f"old{n}", 1)
        written += [e.id for e in events]
        await store.commit(StateUpdate([], []), events)
    await store.close()

    store = StateStore(path, outbox_memory_limit=3)
    await store.open()
    assert store.outbox_depth == 4
    sent: list[str] = []

    async def relay_step(limit: int) -> None:
        batch = await store.outbox_batch(limit)
        sent.extend(e.ce_id for e in batch)
        store.acknowledge(batch)

    await relay_step(3)  # from the table (written before the restart)
    for n in range(2):
        events = _events(f"new{n}", 1)
        written += [e.id for e in events]
        await store.commit(StateUpdate([], []), events)
    await relay_step(3)  # the last old one from the table, then memory
    await relay_step(3)
    for n in range(5):  # more than memory holds: it overflows, the table has them
        events = _events(f"many{n}", 1)
        written += [e.id for e in events]
        await store.commit(StateUpdate([], []), events)
    while store.outbox_depth:
        await relay_step(2)
    assert sent == written
    assert await store.outbox_batch(10) == []
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


@pytest.mark.parametrize("held_by_key", [False, True])
async def test_listing_freshness_and_the_listed_index_survive_reopen(
    tmp_path: Path, held_by_key: bool
) -> None:
    """A source's `last_listing_at` and its accounts' `listed` flags read back equal after a restart, and
    the index of listed accounts is rebuilt from them (an unlisted record leaves it); the same when a first
    listing's records come held by key (rules.first_listed), as `assess_poll` gives them."""
    from rules.first_listed import FirstListedRecords
    from rules.types import Freshness

    store = StateStore(tmp_path / "s.db")
    await store.open()
    whole = Freshness(BalanceKey("mc", "*"), T0, T0, last_listing_at=T0)
    listed = [Freshness(BalanceKey("mc", a), T0, T0, listed=True) for a in ("a", "b")]
    records = (FirstListedRecords([whole, *(r.subject for r in listed)], T0) if held_by_key
               else [whole, *listed])
    await store.commit(StateUpdate([], [], freshness=records))
    assert set(store.listed_accounts("mc")) == {"a", "b"}
    await store.commit(StateUpdate([], [], freshness=[Freshness(BalanceKey("mc", "b"), T0, T0)]))
    assert set(store.listed_accounts("mc")) == {"a"}
    await store.close()
    again = StateStore(tmp_path / "s.db")
    await again.open()
    assert again.freshness(BalanceKey("mc", "*")) == whole
    assert again.freshness(BalanceKey("mc", "a")) == listed[0]
    assert set(again.listed_accounts("mc")) == {"a"}
    assert set(again.listed_accounts("other")) == set()
    await again.close()


async def test_a_database_of_an_earlier_version_gains_the_listing_columns(tmp_path: Path) -> None:
    """A freshness table written before listings were one fact is extended in place; its rows read as
    unlisted."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE freshness (source TEXT NOT NULL, account TEXT NOT NULL, watched_since TEXT NOT NULL,"
        " last_success_at TEXT, last_error TEXT, access_revoked INTEGER NOT NULL,"
        " PRIMARY KEY (source, account))"
    )
    db.execute("INSERT INTO freshness VALUES ('mc', 'a', ?, ?, NULL, 0)", (T0.isoformat(), T0.isoformat()))
    db.commit()
    db.close()
    store = StateStore(path)
    await store.open()
    from rules.types import Freshness

    assert store.freshness(BalanceKey("mc", "a")) == Freshness(BalanceKey("mc", "a"), T0, T0)
    assert set(store.listed_accounts("mc")) == set()
    await store.close()


async def test_the_alert_clock_hears_of_changed_keys_but_not_of_listed_records(tmp_path: Path) -> None:
    """`take_touched` reports the keys whose alert states or unlisted freshness changed, and the sources
    whose own alerts did; a record that is listed (its source's listing makes it due) is not reported, so
    a first listing of 100,000 accounts hands the alert clock no key of them. After a reload of memory
    it reports None: anything may have changed."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    assert store.take_touched() is None  # a start: every key
    listed = [Freshness(BalanceKey("mc", a), T0, T0, listed=True) for a in ("a", "b")]
    failing = Freshness(BalanceKey("mc", "c"), T0, None, "HTTP 503")
    source = Freshness(BalanceKey("mc", "*"), T0, T0, last_listing_at=T0)
    alert = AlertState("fp-1", "low", BalanceKey("mc", "d"), "firing", 1, T0)
    await store.commit(StateUpdate([], [alert], freshness=[*listed, failing, source]))
    assert store.take_touched() == ({BalanceKey("mc", "c"), BalanceKey("mc", "*"), BalanceKey("mc", "d")},
                                    set())
    assert store.take_touched() == (set(), set())
    await store.commit(StateUpdate([], [], freshness=[replace(listed[0], listed=False)]))
    assert store.take_touched() == ({BalanceKey("mc", "a")}, set())
    await store.close()


async def test_within_one_group_the_later_update_of_a_row_wins_on_disk(tmp_path: Path) -> None:
    """Updates of the same balance, alert state and freshness record staged into one group commit are
    written in the order staged: what reads back after a restart is the later one, as in memory."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    gate = _hold_the_store_thread(store)
    held = store.stage(StateUpdate([(CARD, _known("0.50"))], []))
    await asyncio.sleep(0)  # the writer takes that one and waits behind the gate: the next ones group
    alert = AlertState("f" * 32, "low", KEY, "pending", 1, T0)
    subject = BalanceKey("mc", "a")
    staged = [
        store.stage(StateUpdate([(KEY, _known("1.00"))], [alert],
                                freshness=[Freshness(subject, T0, T0, listed=True)])),
        store.stage(StateUpdate([(KEY, _known("2.00"))], [replace(alert, status="firing")],
                                freshness=[Freshness(subject, T0, T0, "HTTP 503")])),
    ]
    gate.set()
    for commit in (held, *staged):
        await commit
    assert store.group_commits == 2
    await store.close()
    again = StateStore(tmp_path / "s.db")
    await again.open()
    assert again.known(KEY) == _known("2.00")
    assert [a.status for a in again.all_alerts()] == ["firing"]
    assert again.freshness(subject) == Freshness(subject, T0, T0, "HTTP 503")
    assert set(again.listed_accounts("mc")) == set()
    await again.close()
