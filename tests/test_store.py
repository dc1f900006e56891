"""The SQLite state store: what is committed survives a restart, exactly, and nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rules.types import AlertState, Balance, BalanceKey, KnownBalance
from watcher.store import PollRecord, StateStore, StateUpdate

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
