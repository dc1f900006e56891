"""One poll round with a scripted source (a unit test of the poller, the real store and the outbox;
the real sources and broker are exercised end to end elsewhere): a poll's state and events are
written together or not at all, and a retry derives the same event ids; a round runs max_concurrency
workers, and a big listing lets the event loop run between its slices."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from loop_turns import counting_loop_turns

import watcher.poller as poller_module
from rules.loader import parse_rules
from rules.types import Balance, BalanceKey, Observation
from watcher.events import Event
from watcher.poller import OutboxDelivery, Poller, RulesHolder
from watcher.sources.base import FetchResult
from watcher.store import PollRecord, StateStore, StateUpdate

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
RULES = parse_rules(
    {"rules": [{"name": "low", "kind": "below", "threshold": "5000.00", "currency": "GBP"}]}, "test.toml"
)


class ScriptedSource:
    """Answers each call with the next amount of its script (one account, GBP), under the next
    description of `descriptions` when it has one."""

    name = "mc"
    provider = "mastercard-send"
    max_concurrency = 4

    def __init__(self, amounts: list[str | None], descriptions: Sequence[str] = ()) -> None:
        self._amounts = amounts
        self._descriptions = descriptions
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
            description=self._descriptions[self.calls - 1] if self._descriptions else None,
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
    store.acknowledge(await store.outbox_batch(10))
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


class ManyAccountsSource:
    """Answers every account with its own balance, after yielding to the loop; counts calls in flight."""

    name = "mc"
    provider = "mastercard-send"

    def __init__(self, accounts: int, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self._targets = [f"tok-{n}" for n in range(accounts)]
        self.called: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.tasks: set[asyncio.Task[object]] = set()

    def targets(self) -> Sequence[str]:
        return self._targets

    async def fetch(self, target: str) -> FetchResult:
        self.called.append(target)
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        obs = Observation(
            key=BalanceKey(self.name, target), provider=self.provider,
            balance=Balance(Decimal("9000.00"), "GBP", "IN_CREDIT"), observed_at=T0, correlation_id=target,
        )
        return FetchResult(self.name, target, "ok", target, observations=(obs,), http_status=200)


async def test_round_of_many_accounts_runs_max_concurrency_workers(tmp_path: Path) -> None:
    """A round of 500 accounts makes every call exactly once through max_concurrency worker tasks (not
    one task per account): at most that many calls in flight, and every result stored and recorded."""
    store = StateStore(tmp_path / "s.db", outbox_limit=10_000)
    await store.open()
    source = ManyAccountsSource(500, max_concurrency=8)
    delivery = OutboxDelivery(store, wake=lambda: None)
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
    summary = await poller.poll_round()
    assert sorted(source.called) == sorted(source.targets())
    assert source.most_in_flight == 8
    assert len(source.tasks) == 8
    assert (summary.calls, summary.outcomes["ok"], summary.events) == (500, 500, 500)
    assert summary.delivery_failures == 0
    assert len(await store.poll_records()) == 500
    assert store.outbox_depth == 500
    assert store.group_commits < 500, "calls landing together share a transaction"
    await store.close()


async def test_a_rounds_workers_start_one_a_loop_turn(tmp_path: Path) -> None:
    """A round's workers make their first calls in successive turns of the loop, not all in one: 64 first
    calls (each signed and sent) in one turn held the loop ~50 ms while the first answers waited."""
    store = StateStore(tmp_path / "s.db", outbox_limit=10_000)
    await store.open()
    first_call_turns: list[int] = []
    async with counting_loop_turns() as loop:

        class TurnRecordingSource(ManyAccountsSource):
            async def fetch(self, target: str) -> FetchResult:
                if len(self.called) < self.max_concurrency:
                    first_call_turns.append(loop.turns)
                return await super().fetch(target)

        source = TurnRecordingSource(40, max_concurrency=8)
        delivery = OutboxDelivery(store, wake=lambda: None)
        poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
        summary = await poller.poll_round()
    assert summary.calls == 40
    assert len(first_call_turns) == 8
    assert len(set(first_call_turns)) == 8, f"first calls by turn: {first_call_turns}"
    await store.close()


async def test_a_rounds_call_outcomes_are_saved_in_batches_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round does not hold every call's outcome to its end: they are saved in batches of
    POLL_RECORDS_BATCH while calls are still being made, and every outcome is saved once by the end."""
    monkeypatch.setattr(poller_module, "POLL_RECORDS_BATCH", 40)
    store = StateStore(tmp_path / "s.db", outbox_limit=10_000)
    await store.open()
    saved: list[tuple[int, int]] = []  # (outcomes in the batch, calls made when it was saved)
    source = ManyAccountsSource(500, max_concurrency=8)
    record_polls = store.record_polls

    async def watched(records: Sequence[PollRecord]) -> None:
        saved.append((len(records), len(source.called)))
        await record_polls(records)

    monkeypatch.setattr(store, "record_polls", watched)
    delivery = OutboxDelivery(store, wake=lambda: None)
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
    await poller.poll_round()
    assert [count for count, _ in saved] == [40] * 12 + [20], "saved when full, the rest at the end"
    assert saved[0][1] < 100, "the first batch is saved early in the round, not at its end"
    assert sorted(r.target for r in await store.poll_records()) == sorted(source.targets())
    await store.close()


class MovingAccountsSource(ManyAccountsSource):
    """Every account's balance is `amount` (set between rounds)."""

    amount = "9000.00"

    async def fetch(self, target: str) -> FetchResult:
        result = await super().fetch(target)
        (obs,) = result.observations
        balance = replace(obs.balance, amount=Decimal(self.amount))
        return replace(result, observations=(replace(obs, balance=balance),))


async def test_a_record_that_cannot_be_read_back_fails_its_poll_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the hot keys, an account's records are read back from the database when it is polled: when
    that read fails (a disk error), that account's poll fails loudly and advances nothing, every other
    account is processed, and the next round, with the disk back, processes it too."""
    store = StateStore(tmp_path / "s.db", outbox_limit=10_000, hot_keys=0)
    await store.open()
    source = MovingAccountsSource(20, max_concurrency=4)
    # A stale rule: each account then has a freshness record of its own, what makes it one polled alone.
    rules = parse_rules({"rules": [{"name": "stale", "kind": "stale", "after": "15m"}]}, "stale.toml")
    delivery = OutboxDelivery(store, wake=lambda: None)
    poller = Poller(source, store, delivery, RulesHolder(rules), clock=lambda: T0)
    await poller.poll_round()
    await store.flush()
    broken = BalanceKey("mc", "tok-7")
    rows = store._disk._rows

    def failing(sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        if "tok-7" in args:
            raise sqlite3.OperationalError("disk I/O error")
        return rows(sql, args)

    monkeypatch.setattr(store._disk, "_rows", failing)
    source.amount = "8000.00"
    summary = await poller.poll_round()
    assert (summary.calls, summary.events, summary.delivery_failures) == (20, 19, 1)
    assert store.known(BalanceKey("mc", "tok-8")).balance.amount == Decimal("8000.00")  # type: ignore[union-attr]
    monkeypatch.setattr(store._disk, "_rows", rows)
    assert store.known(broken).balance.amount == Decimal("9000.00")  # type: ignore[union-attr]
    summary = await poller.poll_round()
    assert (summary.events, summary.delivery_failures) == (1, 0)
    assert store.known(broken).balance.amount == Decimal("8000.00")  # type: ignore[union-attr]
    await store.close()


class PacedAccountsSource(ManyAccountsSource):
    """Accounts whose budget allows a call now, in a moment, or only in hours."""

    def __init__(self, waits: dict[str, float]) -> None:
        super().__init__(len(waits), max_concurrency=1)
        self._targets = list(waits)
        self._waits = waits

    def next_allowed(self, target: str, now: datetime) -> datetime | None:
        return now + timedelta(seconds=self._waits[target])


async def test_a_call_waiting_for_its_budget_does_not_hold_a_worker(tmp_path: Path) -> None:
    """With one worker, an account that may be called in a moment is set aside while the others are
    called, then called once due; one beyond MAX_PACING_WAIT_S is deferred to a later round."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    source = PacedAccountsSource({"soon": 0.2, "now-1": 0, "later": 3600, "now-2": 0})
    delivery = OutboxDelivery(store, wake=lambda: None)
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
    summary = await poller.poll_round()
    assert source.called == ["now-1", "now-2", "soon"]
    assert (summary.calls, summary.deferred, summary.ok) == (3, 1, True)
    await store.close()


class ListingSource:
    """One partner-wide listing of `accounts` balances."""

    name = "mc"
    provider = "mastercard-send"
    max_concurrency = 1

    def __init__(self, accounts: int, amount: str = "9000.00") -> None:
        self.accounts = accounts
        self.amount = amount

    def targets(self) -> Sequence[str]:
        return ["*"]

    async def fetch(self, target: str) -> FetchResult:
        observations = tuple(
            Observation(
                key=BalanceKey(self.name, f"tok-{n}"), provider=self.provider,
                balance=Balance(Decimal(self.amount), "GBP", "IN_CREDIT"), observed_at=T0, correlation_id="c",
            )
            for n in range(self.accounts)
        )
        return FetchResult(self.name, "*", "ok", "c", observations=observations, http_status=200)


async def test_a_big_listing_is_processed_in_slices_between_which_the_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing is assessed and staged a slice at a time: other tasks run, and the evaluation lock is
    free, between slices; all of it is stored, and the call's staleness is assessed once."""
    monkeypatch.setattr(poller_module, "SLICE_SIZE", 10)
    rules = parse_rules(
        {"rules": [{"name": "low", "kind": "below", "threshold": "5000.00", "currency": "GBP"},
                   {"name": "quiet", "kind": "stale", "after": "1h"}]},
        "test.toml",
    )
    store = StateStore(tmp_path / "s.db", outbox_limit=10_000)
    await store.open()
    lock = asyncio.Lock()
    poller = Poller(ListingSource(35), store, OutboxDelivery(store, wake=lambda: None), RulesHolder(rules),
                    clock=lambda: T0, lock=lock)
    ticks = 0
    lock_taken = 0
    staged_at: list[tuple[int, int]] = []
    real_stage = store.stage

    def stage(update: StateUpdate, events: Sequence[Event] = ()) -> object:
        staged_at.append((ticks, len(update.freshness)))
        return real_stage(update, events)

    monkeypatch.setattr(store, "stage", stage)

    async def heartbeat() -> None:
        nonlocal ticks, lock_taken
        while True:
            ticks += 1
            if not lock.locked():
                async with lock:
                    lock_taken += 1
            await asyncio.sleep(0)

    beating = asyncio.create_task(heartbeat())
    summary = await poller.poll_round()
    beating.cancel()
    assert (summary.observations, summary.events, summary.delivery_failures) == (35, 35, 0)
    assert len(staged_at) == 4, "35 observations in slices of 10"
    assert len({t for t, _ in staged_at}) == 4, "the loop ran between every two slices"
    assert [bool(f) for _, f in staged_at] == [False, False, False, True], "staleness once, with the last"
    assert lock_taken >= 3
    assert len(store.all_known()) == 35
    await store.close()


async def test_failed_write_changes_nothing_and_the_retry_has_the_same_ids(tmp_path: Path) -> None:
    """When the disk refuses a poll's write, the call counts as a delivery failure, memory is reloaded
    to what is on disk, and the next poll derives the same events, with the same ids, as a poll that
    never failed."""
    reference, reference_store, reference_events = await make(tmp_path / "reference", ["4000.00"])
    await reference.poll_round()
    await reference_store.close()

    poller, store, delivered = await make(tmp_path, ["4000.00", "4000.00"])
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("CREATE TABLE refuse (n INTEGER)")
        db.execute("INSERT INTO refuse VALUES (1)")
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN (SELECT COUNT(*) FROM refuse) > 0"
                   " BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END")
    failed = await poller.poll_round()
    assert failed.delivery_failures == 1
    await store.flush()  # the reload after the failure is done
    assert store.known(BalanceKey("mc", "tok")) is None
    assert store.outbox_depth == 0
    assert delivered == []
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("DELETE FROM refuse")
    retried = await poller.poll_round()
    assert (retried.delivery_failures, retried.events) == (0, 2)
    assert [e.id for e in delivered] == [e.id for e in reference_events]
    assert [e.ce_id for e in await store.outbox_batch(10)] == [e.id for e in reference_events]
    await store.close()


class SharingSource(ScriptedSource):
    """A ScriptedSource that takes the known balances' look-up, as the Mastercard source does."""

    def __init__(self, amounts: list[str | None]) -> None:
        super().__init__(amounts)
        self.known: object = None
        self.quiet: object = None

    def share_known(self, known: object, quiet: object) -> None:
        self.known = known
        self.quiet = quiet


async def test_a_source_that_shares_known_objects_is_given_the_stores_look_up(tmp_path: Path) -> None:
    """A source with `share_known` gets the state store's look-up of known balances and the poller's
    `quiet` judgement, when the poller is built and when a reload replaces the source; what it looks up
    is what the store holds, and `quiet` follows the key's alert."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    source = SharingSource(["4000.00"])
    delivery = OutboxDelivery(store, wake=lambda: None)
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
    await poller.poll_round()
    assert callable(source.known)
    key = BalanceKey("mc", "tok")
    assert source.known(key) is store.known(key) is not None
    replacement = SharingSource(["6000.00"])
    poller.source = replacement
    assert callable(replacement.known)
    assert replacement.known(key) is store.known(key)
    # `quiet`: the 4,000.00 under the `low` rule's 5,000.00 is firing, so seeing it again is not quiet;
    # once 6,000.00 resolved it, it is.
    assert callable(replacement.quiet)
    assert callable(source.quiet)
    assert replacement.quiet(key, store.known(key), T0) is False
    await poller.poll_round()
    assert replacement.quiet(key, store.known(key), T0) is True
    await store.close()


class TwoAccountListing:
    """A partner-wide listing of two accounts (one call, target "*")."""

    name = "mc"
    provider = "mastercard-send"
    max_concurrency = 1

    def targets(self) -> Sequence[str]:
        return ["*"]

    async def fetch(self, target: str) -> FetchResult:
        observations = tuple(
            Observation(
                key=BalanceKey(self.name, account), provider=self.provider,
                balance=Balance(Decimal("9000.00"), "GBP", "IN_CREDIT"), observed_at=T0, correlation_id="c",
            )
            for account in ("a", "b")
        )
        return FetchResult(self.name, target, "ok", "c", observations=observations, http_status=200)


async def test_a_listings_freshness_records_hold_its_observations_keys(tmp_path: Path) -> None:
    """With stale rules, the freshness records of a first listing's accounts are kept by the very account
    strings of its observations' keys (and of the stored balances), not strings or keys of their own, and
    read back as listed records of those subjects."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    rules = parse_rules({"rules": [{"name": "quiet", "kind": "stale", "after": "1h"}]}, "test.toml")
    poller = Poller(TwoAccountListing(), store, OutboxDelivery(store, wake=lambda: None), RulesHolder(rules),
                    clock=lambda: T0)
    await poller.poll_round()
    keys = {key.account: key for key in store.known_view()}
    assert set(keys) == {"a", "b"}
    listed = store.listed_accounts("mc")
    assert set(listed) == {"a", "b"}
    for account in listed:
        assert account is keys[account].account
        record = store.freshness(BalanceKey("mc", account))
        assert record is not None
        assert record.listed
        assert record.subject == keys[account]
        assert record.watched_since == T0
    await store.close()



async def test_an_account_polled_on_its_own_keeps_its_observations_key(tmp_path: Path) -> None:
    """With stale rules, the freshness record of an account polled on its own holds the very key object
    of its answer's observation (the key its balance is stored under), not a key of its own; a later
    poll stores the record again."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    rules = parse_rules({"rules": [{"name": "quiet", "kind": "stale", "after": "1s"}]}, "test.toml")
    now = [T0]
    source = ScriptedSource(["1.00", "2.00"])
    poller = Poller(source, store, OutboxDelivery(store, wake=lambda: None), RulesHolder(rules),
                    clock=lambda: now[0])
    await poller.poll_round()
    (key,) = store.known_view()
    record = store.freshness(BalanceKey("mc", "tok"))
    assert record is not None
    assert record.subject is key
    now[0] = T0 + timedelta(minutes=5)  # long enough for the record to be stored again
    await poller.poll_round()
    record = store.freshness(BalanceKey("mc", "tok"))
    assert record is not None
    assert record.last_success_at == now[0]
    assert record.subject == key
    await store.close()

class LargeListing(TwoAccountListing):
    """A partner-wide listing of `count` accounts, made anew for each call and kept by nobody else."""

    name = "big"

    def __init__(self, count: int) -> None:
        self.count = count

    async def fetch(self, target: str) -> FetchResult:
        balance = Balance(Decimal("9000.00"), "GBP", "IN_CREDIT")
        observations = tuple(
            Observation(key=BalanceKey(self.name, f"acct-{n}"), provider=self.provider, balance=balance,
                        observed_at=T0, correlation_id="c")
            for n in range(self.count)
        )
        return FetchResult(self.name, target, "ok", "c", observations=observations, http_status=200)


class CountingDelivery:
    """Stages nothing durable; at each slice, counts the listing's observations still alive."""

    def __init__(self) -> None:
        self.alive: list[int] = []
        self.slices: list[int] = []

    def stage(self, update: StateUpdate, events: Sequence[Event]) -> asyncio.Future[None]:
        gc.collect()
        alive = [o for o in gc.get_objects() if type(o) is Observation and o.key.source == "big"]
        self.alive.append(len(alive))
        self.slices.append(len(update.balances))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_a_large_listings_observations_are_let_go_as_their_slices_are_staged(tmp_path: Path) -> None:
    """The observations of a listing larger than a slice are not all held until its round ends: once a
    slice is staged, its observations are let go (a first listing of 100,000 accounts would otherwise
    hold 11 MiB of them at its peak); every account is still assessed once, in order, and counted."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    delivery = CountingDelivery()
    count = 3 * poller_module.SLICE_SIZE + 10
    rules = parse_rules({"rules": [{"name": "quiet", "kind": "stale", "after": "1h"}]}, "test.toml")
    poller = Poller(LargeListing(count), store, delivery, RulesHolder(rules), clock=lambda: T0)
    summary = await poller.poll_round()
    assert summary.observations == count
    assert delivery.slices == [poller_module.SLICE_SIZE] * 3 + [10]
    # While a slice is staged: that slice's observations and those still to come, never the ones before.
    assert delivery.alive == [count - n * poller_module.SLICE_SIZE for n in range(4)]
    await store.close()


async def test_a_renamed_account_keeps_its_new_description_without_an_event(tmp_path: Path) -> None:
    """The same balance under a new account description publishes nothing, keeps the balance's version,
    and stores the new description, durably (it is what the account's later alerts are described by)."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    delivered: list[Event] = []
    delivery = OutboxDelivery(store, wake=lambda: None, on_event=delivered.append)
    source = ScriptedSource(["6000.00", "6000.00"], descriptions=["Payouts", "Payouts EU"])
    poller = Poller(source, store, delivery, RulesHolder(RULES), clock=lambda: T0)
    key = BalanceKey("mc", "tok")
    await poller.poll_round()
    first = store.known(key)
    await poller.poll_round()
    renamed = store.known(key)
    assert len(delivered) == 1  # the first balance only
    assert first is not None
    assert renamed is not None
    assert (renamed.description, renamed.version) == ("Payouts EU", first.version)
    assert renamed.balance == first.balance
    await store.close()
    reopened = StateStore(tmp_path / "s.db")
    await reopened.open()
    stored = reopened.known(key)
    assert stored is not None
    assert stored.description == "Payouts EU"
    await reopened.close()
