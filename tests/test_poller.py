"""One poll round with a scripted source (a unit test of the poller, the real store and the outbox;
the real sources and broker are exercised end to end elsewhere): a poll's state and events are
written together or not at all, and a retry derives the same event ids."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from rules.loader import parse_rules
from rules.types import Balance, BalanceKey, Observation
from watcher.events import Event
from watcher.poller import OutboxDelivery, Poller, RulesHolder
from watcher.sources.base import FetchResult
from watcher.store import StateStore

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
RULES = parse_rules(
    {"rules": [{"name": "low", "kind": "below", "threshold": "5000.00", "currency": "GBP"}]}, "test.toml"
)


class ScriptedSource:
    """Answers each call with the next amount of its script (one account, GBP)."""

    name = "mc"
    provider = "mastercard-send"
    max_concurrency = 4

    def __init__(self, amounts: list[str | None]) -> None:
        self._amounts = amounts
        self.calls = 0

    def targets(self) -> Sequence[str]:
        return ["tok"]

    async def fetch(self, target: str) -> FetchResult:
        amount = self._amounts[self.calls]
        self.calls += 1
        corr = f"corr-{self.calls}"
        if amount is None:
            return FetchResult(self.name, target, "http_error", corr, http_status=503, error="HTTP 503")
        obs = Observation(
            key=BalanceKey(self.name, target), provider=self.provider,
            balance=Balance(Decimal(amount), "GBP", "IN_CREDIT"), observed_at=T0, correlation_id=corr,
        )
        return FetchResult(self.name, target, "ok", corr, observations=(obs,), http_status=200)


async def make(
    tmp_path: Path, amounts: list[str | None], outbox_limit: int = 100
) -> tuple[Poller, StateStore, list[Event]]:
    store = StateStore(tmp_path / "s.db", outbox_limit=outbox_limit)
    await store.open()
    delivered: list[Event] = []
    delivery = OutboxDelivery(store, wake=lambda: None, on_event=delivered.append)
    poller = Poller(ScriptedSource(amounts), store, delivery, RulesHolder(RULES), clock=lambda: T0)
    return poller, store, delivered


async def test_state_and_events_are_written_together(tmp_path: Path) -> None:
    """A change and the alert it implies are in the outbox, in order, once the state has moved."""
    poller, store, delivered = await make(tmp_path, ["4000.00", "4000.00"])
    await poller.poll_round()
    assert store.known(BalanceKey("mc", "tok")) is not None
    outbox = await store.outbox_batch(10)
    assert [e.ce_id for e in outbox] == [e.id for e in delivered]
    assert [dict(e.headers)["ce_type"] for e in outbox] == [b"balance.changed", b"balance.alert.firing"]
    await poller.poll_round()
    assert store.outbox_depth == 2, "an unchanged balance adds nothing"
    await store.close()


async def test_full_outbox_leaves_state_and_the_retry_has_the_same_ids(tmp_path: Path) -> None:
    """When the outbox is full nothing of the poll is written; once there is room, the next poll
    derives the same events with the same ce_ids."""
    poller, store, delivered = await make(tmp_path, ["1.00", "4000.00", "4000.00"], outbox_limit=2)
    await poller.poll_round()  # fills the outbox: a change and a firing alert
    ids_before = [e.ce_id for e in await store.outbox_batch(10)]
    poller.source._amounts[1] = "4000.00"  # type: ignore[attr-defined]
    summary = await poller.poll_round()
    assert summary.delivery_failures == 1
    assert store.known(BalanceKey("mc", "tok")).balance.amount == Decimal("1.00")  # type: ignore[union-attr]
    await store.outbox_remove([e.seq for e in await store.outbox_batch(10)])
    await poller.poll_round()
    outbox = await store.outbox_batch(10)
    assert len(outbox) == 1
    assert outbox[0].ce_id not in ids_before
    assert outbox[0].ce_id == delivered[-1].id
    await store.close()


async def test_failed_call_changes_nothing_and_never_resolves(tmp_path: Path) -> None:
    """A failed call writes no event, keeps the stored balance and does not resolve a firing alert."""
    poller, store, delivered = await make(tmp_path, ["4000.00", None, "6000.00"])
    await poller.poll_round()
    failed = await poller.poll_round()
    assert failed.outcomes == {"http_error": 1}
    assert len(delivered) == 2
    await poller.poll_round()
    assert [e.type for e in delivered[2:]] == ["balance.changed", "balance.alert.resolved"]
    assert delivered[2].body["previous"]["amount"] == "4000.00"
    (record,) = await store.poll_records()
    assert record.outcome == "ok"
    await store.close()


class PacedScriptedSource(ScriptedSource):
    """A scripted source whose budget allows the next call only at `allowed`."""

    def __init__(self, amounts: list[str | None], allowed: datetime) -> None:
        super().__init__(amounts)
        self.allowed = allowed

    def next_allowed(self, target: str, now: datetime) -> datetime | None:
        return self.allowed


async def test_calls_beyond_the_access_budget_are_deferred_not_made(tmp_path: Path) -> None:
    """A paced (PSD2) source is not called while its budget forbids it: the round defers the call
    (no failure, nothing stored); once allowed, the call is made."""
    from datetime import timedelta

    store = StateStore(tmp_path / "s.db")
    await store.open()
    source = PacedScriptedSource(["4000.00"], allowed=T0 + timedelta(hours=6))
    delivery = OutboxDelivery(store, wake=lambda: None)
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
    summary = await poller.poll_round()
    assert (source.calls, summary.deferred, summary.ok) == (0, 1, True)
    source.allowed = T0
    await poller.poll_round()
    assert source.calls == 1
    assert store.known(BalanceKey("mc", "tok")) is not None
    await store.close()
