"""One poll round, with a scripted source and sink (unit test of the poller alone; the real source,
broker and store are exercised end to end elsewhere): the state moves only after the sink accepted
the events, and a retry after a failed publish produces the same event ids."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from rules.loader import parse_rules
from rules.types import Balance, BalanceKey, Observation
from watcher.events import Event
from watcher.poller import Poller, RulesHolder
from watcher.publisher import PublishError
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


class FlakySink:
    """Refuses the batches whose numbers are in `fail_on`; records the ones it accepts."""

    def __init__(self, fail_on: set[int]) -> None:
        self._fail_on = fail_on
        self.batches = 0
        self.accepted: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> None:
        self.batches += 1
        if self.batches in self._fail_on:
            raise PublishError("broker away")
        self.accepted.extend(events)


async def make(tmp_path: Path, amounts: list[str | None], fail_on: set[int]) -> tuple[Poller, FlakySink,
                                                                                       StateStore]:
    store = StateStore(tmp_path / "s.db")
    await store.open()
    sink = FlakySink(fail_on)
    poller = Poller(ScriptedSource(amounts), store, sink, RulesHolder(RULES), clock=lambda: T0)
    return poller, sink, store


async def test_failed_publish_leaves_state_and_the_retry_has_the_same_ids(tmp_path: Path) -> None:
    """When the sink refuses a batch the state is not advanced; the next poll derives the same
    events, with the same ce_ids, and only then is the state advanced."""
    poller, sink, store = await make(tmp_path, ["4000.00", "4000.00", "4000.00"], fail_on={1})
    first = await poller.poll_round()
    assert first.publish_failures == 1
    assert store.known(BalanceKey("mc", "tok")) is None
    await poller.poll_round()
    assert [e.type for e in sink.accepted] == ["balance.changed", "balance.alert.firing"]
    assert store.known(BalanceKey("mc", "tok")) is not None
    await poller.poll_round()
    assert len(sink.accepted) == 2, "an unchanged balance publishes nothing"
    await store.close()


async def test_failed_call_changes_nothing_and_never_resolves(tmp_path: Path) -> None:
    """A failed call publishes nothing, keeps the stored balance and does not resolve a firing alert."""
    poller, sink, store = await make(tmp_path, ["4000.00", None, "6000.00"], fail_on=set())
    await poller.poll_round()
    failed = await poller.poll_round()
    assert failed.outcomes == {"http_error": 1}
    assert len(sink.accepted) == 2
    await poller.poll_round()
    assert [e.type for e in sink.accepted[2:]] == ["balance.changed", "balance.alert.resolved"]
    assert sink.accepted[2].body["previous"]["amount"] == "4000.00"
    (record,) = await store.poll_records()
    assert record.outcome == "ok"
    await store.close()
