"""Nothing lost: the outbox and its relay against a real broker that goes away and comes back, and a
daemon killed with SIGKILL at arbitrary moments."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from harness import DaemonProcess, Record, SandboxProcess, read_topics, sandbox_post, write_config
from structlog.testing import capture_logs

from rules.engine import BalanceChange
from rules.types import Balance, BalanceKey, Observation
from watcher.config import KafkaConfig
from watcher.devbroker import Broker, free_port, start_broker
from watcher.devkeys import DevKey
from watcher.events import Event, change_event
from watcher.publisher import KafkaPublisher, PublishError, build_producer
from watcher.relay import OutboxRelay
from watcher.store import OutboxEntry, StateStore, StateUpdate

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test alone, so the test may stop and restart it on the same data directory."""
    broker = start_broker(tmp_path / "kafka", port=free_port())
    yield broker
    broker.stop()


def change(account: str, version: int, amount: str) -> list[Event]:
    balance = Balance(Decimal(amount), "GBP", "IN_CREDIT")
    obs = Observation(BalanceKey("src", account), "mastercard-send", balance, T0, f"c-{account}-{version}")
    return [change_event(BalanceChange(obs, None, version))]


async def store_with_changes(tmp_path: Path) -> tuple[StateStore, list[Event]]:
    """An open store with 20 change events committed, one commit each, over three accounts."""
    store = StateStore(tmp_path / "s.db")
    await store.open()
    written: list[Event] = []
    for version in range(1, 21):
        events = change(f"acct-{version % 3}", version, f"{version}.00")
        written += events
        await store.commit(StateUpdate([], []), events)
    return store, written


async def test_relay_publishes_the_outbox_in_order_and_empties_it(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    """Events committed to the outbox reach Kafka in commit order with their ids, and leave the outbox."""
    store, written = await store_with_changes(tmp_path)
    config = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap_servers, changes_topic="relay-changes",
                         alerts_topic="relay-alerts")
    producer = build_producer(config)
    await producer.start()
    relay = OutboxRelay(store, KafkaPublisher(producer, config), batch_size=7)
    try:
        assert await relay.drain(20)
    finally:
        await producer.stop()
    assert store.outbox_depth == 0
    assert await store.outbox_batch(10) == []
    records = await read_topics(kafka_broker, ["relay-changes"])
    assert [r.headers["ce_id"] for r in records] == [e.id for e in written]
    await store.close()


@pytest.mark.parametrize(("settings", "linger_s"), [({}, 0.0), ({"linger_ms": 20}, 0.02)])
async def test_producer_lingers_as_configured(settings: dict[str, int], linger_s: float) -> None:
    """A batch waits `kafka.linger_ms` for more records before it is sent, by default not at all: under
    load batches form while a request is in flight, and a wait would only delay every acknowledgement."""
    producer = build_producer(KafkaConfig(**settings))  # type: ignore[arg-type]
    try:
        assert producer._message_accumulator._linger_time == linger_s
    finally:
        await producer.stop()


@pytest.mark.parametrize("codec", ["zstd", "lz4", "snappy", "gzip", "none"])
async def test_events_arrive_whole_with_every_compression(
    tmp_path: Path, kafka_broker: Broker, codec: str
) -> None:
    """With each `kafka.compression_type` the producer compresses its batches with that codec (its
    library is installed), and every event reaches Kafka byte for byte, headers included."""
    store, written = await store_with_changes(tmp_path)
    config = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap_servers, changes_topic=f"codec-{codec}",
                         compression_type=codec)  # type: ignore[arg-type]
    producer = build_producer(config)
    assert producer._compression_type == (None if codec == "none" else codec)
    await producer.start()
    try:
        assert await OutboxRelay(store, KafkaPublisher(producer, config), batch_size=7).drain(20)
    finally:
        await producer.stop()
    records = await read_topics(kafka_broker, [f"codec-{codec}"])
    assert [(r.key, r.headers, r.body) for r in records] == [
        (e.key, {name: value.decode() for name, value in e.headers()}, json.loads(e.value())) for e in written
    ]
    await store.close()


class RecordingPublisher:
    """Stands in for Kafka: acknowledges every batch (or refuses while `down`; or, with `hold`, keeps
    each acknowledgement in `acks` for the test to give), and keeps what it got."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[OutboxEntry]] = []
        self.down = False
        self.hold = hold
        self.acks: list[asyncio.Future[None]] = []

    async def append(self, entries: list[OutboxEntry]) -> asyncio.Future[None]:
        await asyncio.sleep(0)
        if self.down:
            raise PublishError("broker away")
        self.batches.append(list(entries))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.acks.append(acked)
        else:
            acked.set_result(None)
        return acked


async def test_relay_takes_batches_from_memory_and_deletes_each_as_a_range(tmp_path: Path) -> None:
    """The relay publishes committed events in order without a SELECT of the outbox per batch, and
    forgets each acknowledged batch with one range delete; a batch Kafka refused is sent again, whole,
    and nothing is deleted before it is acknowledged."""
    store, written = await store_with_changes(tmp_path)
    statements: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(statements.append)
    publisher = RecordingPublisher()
    relay = OutboxRelay(store, publisher, batch_size=7)  # type: ignore[arg-type]
    publisher.down = True
    with pytest.raises(PublishError):
        await relay.publish_pending()
    await store.flush()
    assert store.outbox_depth == 20
    assert not [s for s in statements if s.startswith("DELETE")]
    publisher.down = False
    assert await relay.drain(5)
    assert [len(b) for b in publisher.batches] == [7, 7, 6]
    assert [e.ce_id for b in publisher.batches for e in b] == [e.id for e in written]
    assert not [s for s in statements if s.startswith("SELECT")]
    deletes = [s for s in statements if s.startswith("DELETE")]
    assert deletes
    assert all(s.startswith("DELETE FROM outbox WHERE seq <=") for s in deletes)
    assert deletes[-1] == "DELETE FROM outbox WHERE seq <= 20"
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_relay_keeps_batches_in_flight_and_acknowledges_them_in_order(tmp_path: Path) -> None:
    """Up to `max_in_flight` batches go to the producer before the first is acknowledged; an
    acknowledgement that arrives out of order forgets nothing until those before it are in."""
    store, written = await store_with_changes(tmp_path)
    publisher = RecordingPublisher(hold=True)
    relay = OutboxRelay(store, publisher, batch_size=7, max_in_flight=2)  # type: ignore[arg-type]
    publishing = asyncio.create_task(relay.publish_pending())
    await _until(lambda: len(publisher.acks) == 2)
    assert [len(b) for b in publisher.batches] == [7, 7]  # two in flight, the third waits for room
    publisher.acks[1].set_result(None)
    for _ in range(50):  # the relay's turns: it waits for the first
        await asyncio.sleep(0)
    assert store.outbox_depth == 20  # the second is in, the first is not: nothing forgotten yet
    publisher.acks[0].set_result(None)
    await _until(lambda: store.outbox_depth == 6)  # both forgotten, in order
    assert len(publisher.acks) == 3
    publisher.acks[2].set_result(None)
    assert await publishing == 20
    assert [e.ce_id for b in publisher.batches for e in b] == [e.id for e in written]
    await store.close()


async def test_a_refused_batch_in_flight_sends_it_and_every_later_one_again(tmp_path: Path) -> None:
    """When Kafka refuses the oldest batch in flight, neither it nor the batches after it are
    forgotten, even those already acknowledged: the next attempt sends all of them again, in order."""
    store, written = await store_with_changes(tmp_path)
    publisher = RecordingPublisher(hold=True)
    relay = OutboxRelay(store, publisher, batch_size=7, max_in_flight=3)  # type: ignore[arg-type]
    publishing = asyncio.create_task(relay.publish_pending())
    await _until(lambda: len(publisher.acks) == 3)
    publisher.acks[1].set_result(None)
    publisher.acks[0].set_exception(PublishError("not enough replicas"))
    with pytest.raises(PublishError):
        await publishing
    assert store.outbox_depth == 20
    publisher.hold = False
    assert await relay.publish_pending() == 20
    again = [e.ce_id for b in publisher.batches[3:] for e in b]
    assert again == [e.id for e in written]
    await store.close()


async def test_new_events_do_not_hide_that_kafka_keeps_the_relay_waiting(tmp_path: Path) -> None:
    """Events that keep arriving wake the relay, but do not restart its patience: once the oldest batch
    in flight has waited `patience_s`, the relay says so (and says when Kafka acknowledges again)."""
    store, _ = await store_with_changes(tmp_path)
    publisher = RecordingPublisher(hold=True)
    relay = OutboxRelay(store, publisher, batch_size=7, patience_s=0.2, max_in_flight=8)  # type: ignore[arg-type]
    with capture_logs() as logs:
        publishing = asyncio.create_task(relay.publish_pending())
        for _ in range(10):  # a wake-up every 50 ms, for 0.5 s
            await asyncio.sleep(0.05)
            relay.wake()
        waiting = [line for line in logs if line["event"].startswith("Kafka has not acknowledged")]
        assert waiting
        assert waiting[0]["waited_s"] >= 0.2
        for acked in publisher.acks:
            acked.set_result(None)
        assert await publishing == 20
    assert any(line["event"] == "Kafka acknowledged again" for line in logs)
    await store.close()


def _mastercard(sandbox: SandboxProcess, key: DevKey, partner: str, tokens: list[str]) -> str:
    return f"""
[[sources]]
name = "mc"
type = "mastercard-send"
base_url = "{sandbox.url}/send"
partner_id = "{partner}"
consumer_key = "ck"
signing_key_path = "{key.p12_path}"
signing_key_password = "devpassword"
non_card_tokens = {json.dumps(tokens)}
interval = "INTERVAL"
timeout = "5s"
"""


def assert_complete_and_ordered(records: list[Record], expected: dict[str, list[str]]) -> None:
    """Per key: the amounts published are exactly the ones set, in order; duplicates only with an
    id already seen (the same event again)."""
    seen_ids: dict[str, str] = {}
    by_key: dict[str, list[str]] = defaultdict(list)
    for r in records:
        ce_id = r.headers["ce_id"]
        amount = r.body["balance"]["amount"]  # type: ignore[index]
        if ce_id in seen_ids:
            assert seen_ids[ce_id] == amount, "a repeated id carries the same event"
            continue
        seen_ids[ce_id] = amount
        by_key[r.key].append(amount)
    for key, amounts in expected.items():
        # A balance set twice between two polls is observed once: the published amounts are the
        # set ones in order, possibly with some skipped, always ending at the last one.
        got = by_key[key]
        assert got[-1] == amounts[-1], (key, got, amounts)
        positions = [amounts.index(a) for a in got]
        assert positions == sorted(positions), (key, got, amounts)


async def test_broker_outage_loses_nothing(
    own_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """The broker stops mid-run and comes back on the same data directory: polling goes on, and
    every change reaches the topic, in order per key."""
    tokens = [f"non_card_token:out-{n}" for n in range(3)]
    config = write_config(tmp_path, broker=own_broker, sources=_mastercard(sandbox, dev_key, "OUT", tokens),
                          rules="rules = []\n", topic_prefix="outage", interval="500ms",
                          kafka_extra='request_timeout = "2s"')
    expected: dict[str, list[str]] = defaultdict(list)

    def set_all(step: int) -> None:
        for token in tokens:
            amount = f"{1000 + step}.00"
            sandbox_post(sandbox, "mastercard/balance",
                         {"partner": "OUT", "account": token, "amount": amount})
            expected[f"mc:{token}"].append(amount)

    set_all(0)
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"mc"}, rounds=2)
    step = 1
    for _ in range(3):
        set_all(step)
        step += 1
        await asyncio.sleep(0.6)
    own_broker.stop()
    for _ in range(6):  # changes while the broker is away
        set_all(step)
        step += 1
        await asyncio.sleep(0.6)
    assert daemon.process.poll() is None, "the daemon keeps running without Kafka"
    restarted = start_broker(own_broker.data_dir, port=own_broker.port)
    try:
        for _ in range(3):
            set_all(step)
            step += 1
            await asyncio.sleep(0.6)
        rounds = sum(1 for line in daemon.lines() if line.get("event") == "poll round")
        daemon.wait_for_rounds({"mc"}, rounds=rounds + 2)
        assert daemon.stop() == 0
        records = await read_topics(restarted, ["outage-changes"], idle=2.0)
    finally:
        restarted.stop()
    assert_complete_and_ordered(records, expected)
    assert any(str(line.get("event", "")).startswith("Kafka has not acknowledged") for line in daemon.lines())


async def test_sigkill_at_random_moments_loses_nothing(
    own_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """SIGKILL the daemon at random points while balances change, start it again each time: every
    change reaches Kafka (a repeat only with the same ce_id), and no alert fires twice."""
    tokens = [f"non_card_token:kill-{n}" for n in range(2)]
    rules = '[[rules]]\nname = "low"\nkind = "below"\nthreshold = "1000.00"\n'
    config = write_config(tmp_path, broker=own_broker, sources=_mastercard(sandbox, dev_key, "KILL", tokens),
                          rules=rules, topic_prefix="kill", interval="300ms")
    expected: dict[str, list[str]] = defaultdict(list)
    rng = random.Random(7)
    for token in tokens:
        sandbox_post(sandbox, "mastercard/balance",
                     {"partner": "KILL", "account": token, "amount": "3000.00"})
        expected[f"mc:{token}"].append("3000.00")
    step = 0
    for _ in range(5):
        daemon = start_daemon(config)
        daemon.wait_for_rounds({"mc"}, rounds=1)
        for _ in range(3):
            step += 1
            for token in tokens:
                amount = f"{rng.choice([500, 1500, 2500]) + step}.00"
                sandbox_post(sandbox, "mastercard/balance", {"partner": "KILL", "account": token,
                                                             "amount": amount})
                expected[f"mc:{token}"].append(amount)
            await asyncio.sleep(rng.uniform(0.05, 0.5))
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
    final = start_daemon(config)
    final.wait_for_rounds({"mc"}, rounds=3)
    assert final.stop() == 0
    records = await read_topics(own_broker, ["kill-changes", "kill-alerts"])
    assert_complete_and_ordered([r for r in records if r.topic == "kill-changes"], expected)
    alerts = [r for r in records if r.topic == "kill-alerts"]
    by_fingerprint: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in alerts:
        by_fingerprint[(str(r.body["fingerprint"]), int(r.body["episode"]))].add(r.headers["ce_id"])  # type: ignore[call-overload]
    for ids in by_fingerprint.values():
        assert len(ids) <= 2, "one firing and at most one resolved id per episode"
