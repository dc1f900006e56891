"""The whole pipeline, end to end: the daemon process, the sandbox process, a real Kafka-protocol broker.

Events are read back from the broker with aiokafka; nothing here is a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from harness import (
    DaemonProcess,
    Record,
    SandboxProcess,
    read_topics,
    sandbox_post,
    write_config,
)

from watcher.devbroker import Broker
from watcher.devkeys import DevKey

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {
    name: json.loads((ROOT / "watcher" / "schemas" / f"{name}.json").read_text())
    for name in ("balance.changed", "balance.alert.firing", "balance.alert.resolved")
}
CE_HEADERS = {
    "ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "ce_correlationid",
    "content-type",
}

RULES = """
[[rules]]
name = "gbp-low"
kind = "below"
threshold = "5000.00"
currency = "GBP"
severity = "critical"

[[rules]]
name = "card-low"
kind = "below"
threshold = "100.00"
balance_type = "available"
source = "cards"
"""


def mastercard(name: str, sandbox: SandboxProcess, key: DevKey, partner: str, fmt: str, tokens: str) -> str:
    return f"""
[[sources]]
name = "{name}"
type = "mastercard-send"
base_url = "{sandbox.url}/send"
partner_id = "{partner}"
consumer_key = "test-consumer-key"
signing_key_path = "{key.p12_path}"
signing_key_password = "devpassword"
format = "{fmt}"
non_card_tokens = {tokens}
interval = "INTERVAL"
timeout = "5s"
"""


def mypos(sandbox: SandboxProcess, accounts: str) -> str:
    return f"""
[[sources]]
name = "cards"
type = "mypos-psd2"
base_url = "{sandbox.url}"
api_key = "aGDmxHAmpMWUL1txqCsjEcOS"
consent_id = "3c7816ee-3d51-4bf5-8ced-ece2af35d431"
access_token = "oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X"
account_numbers = {accounts}
interval = "INTERVAL"
daily_access_budget = 0  # the tests poll every second
timeout = "5s"
"""


def set_mc(sandbox: SandboxProcess, partner: str, token: str, amount: str, state: str = "IN_CREDIT") -> None:
    sandbox_post(
        sandbox, "mastercard/balance",
        {"partner": partner, "account": token, "amount": amount, "currency": "GBP", "state": state},
    )


def assert_cloudevent(record: object) -> None:
    """Every record is a CloudEvent in binary mode whose body validates against its JSON Schema."""
    assert isinstance(record, Record)
    assert set(record.headers) >= CE_HEADERS, record.headers
    assert record.headers["ce_specversion"] == "1.0"
    assert record.headers["content-type"] == "application/json"
    assert record.headers["ce_subject"] == record.key
    assert record.headers["ce_source"] == f"balance-watcher/{record.key.split(':', 1)[0]}"
    assert record.headers["ce_time"].endswith("Z")
    uuid.UUID(record.headers["ce_id"])
    jsonschema.validate(record.body, SCHEMAS[record.headers["ce_type"]])
    account = record.body["account"]
    assert isinstance(account, dict)
    assert record.key == f"{account['source']}:{account['id']}"
    assert record.headers["ce_correlationid"] == record.body["correlation_id"]


async def test_pipeline_publishes_changes_and_alerts(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """Listing (JSON), single accounts (XML) and myPOS all reach Kafka as valid CloudEvents with the
    right keys; a balance below the threshold fires one alert per source that sees it."""
    set_mc(sandbox, "E2E", "non_card_token:sbx-E2E-0001", "4000.00")
    set_mc(sandbox, "E2E", "non_card_token:sbx-E2E-0002", "250.50", "IN_DEBIT")
    for n in range(3, 6):
        set_mc(sandbox, "E2E", f"non_card_token:sbx-E2E-000{n}", "12000.00")
    sandbox_post(sandbox, "mypos/balance", {"account": "50553500001", "amount": "99.990"})
    sources = (
        mastercard("mc-list", sandbox, dev_key, "E2E", "json", "[]")
        + mastercard("mc-xml", sandbox, dev_key, "E2E", "xml",
                     '["non_card_token:sbx-E2E-0001", "non_card_token:never-seen"]')
        + mypos(sandbox, '["50553500971", "50553500001"]')
    )
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=RULES, topic_prefix="e2e")
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"mc-list", "mc-xml", "cards"})
    assert daemon.stop() == 0
    records = await read_topics(kafka_broker, ["e2e-changes", "e2e-alerts"])

    for record in records:
        assert_cloudevent(record)
    assert len({r.headers["ce_id"] for r in records}) == len(records), "ids are unique"
    changes = [r for r in records if r.topic == "e2e-changes"]
    assert all(r.headers["ce_type"] == "balance.changed" and r.body["previous"] is None for r in changes)
    by_key = Counter((r.key, r.body["balance"].get("type")) for r in changes)  # type: ignore[union-attr]
    assert max(by_key.values()) == 1, "a static balance is announced once"
    keys = {k for k, _ in by_key}
    assert {
        "mc-list:non_card_token:sbx-E2E-0001", "mc-list:non_card_token:sbx-E2E-0002",
        "mc-xml:non_card_token:sbx-E2E-0001", "mc-xml:non_card_token:never-seen",
        "cards:50553500971", "cards:50553500001",
    } <= keys

    bodies = {r.key: r.body for r in changes}
    assert bodies["mc-list:non_card_token:sbx-E2E-0002"]["balance"] == {
        "amount": "250.50", "currency": "GBP", "state": "IN_DEBIT",
    }
    assert bodies["mc-xml:non_card_token:never-seen"]["balance"] == {
        "amount": "11223344", "currency": "GBP", "state": "IN_CREDIT",
    }
    seed_card = next(r.body for r in changes if r.key == "cards:50553500971")
    assert seed_card["balance"] == {"amount": "120.260", "currency": "EUR", "type": "available"}
    assert seed_card["account"] == {
        "source": "cards", "provider": "mypos-psd2", "id": "50553500971", "description": None,
    }
    uuid.UUID(str(seed_card["correlation_id"]))  # myPOS: the X-Request-ID we sent

    alerts = [r for r in records if r.topic == "e2e-alerts"]
    firing = {(r.key, r.body["rule"]["name"]) for r in alerts}  # type: ignore[index]
    assert all(r.headers["ce_type"] == "balance.alert.firing" for r in alerts)
    assert firing == {
        ("mc-list:non_card_token:sbx-E2E-0001", "gbp-low"),
        ("mc-list:non_card_token:sbx-E2E-0002", "gbp-low"),  # IN_DEBIT is below any positive line
        ("mc-xml:non_card_token:sbx-E2E-0001", "gbp-low"),
        ("cards:50553500001", "card-low"),
    }
    low = next(r for r in alerts if r.key == "mc-list:non_card_token:sbx-E2E-0001")
    assert low.body["rule"] == {"name": "gbp-low", "kind": "below", "threshold": "5000.00",
                                "severity": "critical"}

    # Every poll's log line names the source, the account and the correlation id.
    polls = [line for line in daemon.lines() if line.get("event") == "poll"]
    assert polls
    for line in polls:
        assert line["source"], line
        assert line["account"], line
        assert line["correlation_id"], line
        assert line["outcome"] == "ok"
        assert line["http_status"] == 200
    log_text = daemon.log_path.read_text()
    for secret in ("devpassword", "test-consumer-key", "oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X",
                   "aGDmxHAmpMWUL1txqCsjEcOS"):
        assert secret not in log_text


async def test_restart_publishes_only_what_changed(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """A restart with unchanged balances publishes nothing; with one changed balance, exactly one
    change event and the alert transition it implies."""
    set_mc(sandbox, "RST", "non_card_token:sbx-RST-0001", "4000.00")
    for n in range(2, 6):
        set_mc(sandbox, "RST", f"non_card_token:sbx-RST-000{n}", "9000.00")
    sources = mastercard("mc", sandbox, dev_key, "RST", "json", "[]") + mypos(sandbox, '["50553500971"]')
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=RULES, topic_prefix="rst")
    topics = ["rst-changes", "rst-alerts"]

    first = start_daemon(config)
    first.wait_for_rounds({"mc", "cards"}, rounds=2)
    assert first.stop() == 0
    before = await read_topics(kafka_broker, topics)
    assert Counter(r.headers["ce_type"] for r in before) == {"balance.changed": 6, "balance.alert.firing": 1}

    second = start_daemon(config)
    second.wait_for_rounds({"mc", "cards"}, rounds=2)
    assert second.stop() == 0
    assert await read_topics(kafka_broker, topics) == before

    set_mc(sandbox, "RST", "non_card_token:sbx-RST-0001", "6000.00")
    third = start_daemon(config)
    third.wait_for_rounds({"mc", "cards"}, rounds=2)
    assert third.stop() == 0
    after = await read_topics(kafka_broker, topics)
    new = [r for r in after if r not in before]
    assert [(r.headers["ce_type"], r.key) for r in sorted(new, key=lambda r: r.topic, reverse=True)] == [
        ("balance.changed", "mc:non_card_token:sbx-RST-0001"),
        ("balance.alert.resolved", "mc:non_card_token:sbx-RST-0001"),
    ]
    change = next(r for r in new if r.topic == "rst-changes")
    assert change.body["previous"] == {"amount": "4000.00", "currency": "GBP", "state": "IN_CREDIT"}
    assert change.body["version"] == 2
    resolved = next(r for r in new if r.topic == "rst-alerts")
    assert_cloudevent(resolved)
    firing = next(r for r in before if r.topic == "rst-alerts")
    assert resolved.body["fingerprint"] == firing.body["fingerprint"]
    assert resolved.body["started_at"] == firing.body["started_at"]


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_bad_responses_do_not_stop_the_others(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess], fmt: str,
) -> None:
    """An HTTP error, a malformed body, a wrong content type and a missing field are each logged
    with the call's correlation id; the daemon keeps running and the healthy accounts are published."""
    partner = f"BAD{fmt.upper()}"
    tokens = [f"non_card_token:sbx-{partner}-000{n}" for n in range(1, 6)]
    malformed = "malformed_json" if fmt == "json" else "malformed_xml"
    for token, kind in zip(tokens, ["http_500", malformed, "wrong_content_type", "missing_field"],
                           strict=False):
        sandbox_post(sandbox, "faults", {"api": "mastercard", "partner": partner, "account": token,
                                         "kind": kind, "count": None})
    sandbox_post(sandbox, "faults", {"api": "mypos", "account": "50553500002", "kind": "malformed_json",
                                     "count": None})
    sources = (
        mastercard("mc", sandbox, dev_key, partner, fmt, json.dumps(tokens))
        + mypos(sandbox, '["50553500002", "50553500971"]')
    )
    prefix = f"bad{fmt}"
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=RULES, topic_prefix=prefix)
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"mc", "cards"}, rounds=2)
    assert daemon.process.poll() is None, "the daemon is still running"
    assert daemon.stop() == 0

    failed = [line for line in daemon.lines() if line.get("event") == "poll failed"]
    failures = {(line["account"], line["outcome"]) for line in failed}
    assert failures == {
        (tokens[0], "http_error"), (tokens[1], "bad_response"), (tokens[2], "bad_response"),
        (tokens[3], "bad_response"), ("50553500002", "bad_response"),
    }
    for line in daemon.lines():
        if line.get("event") == "poll failed":
            assert line["source"] in ("mc", "cards"), line
            assert line["error"], line
            if line["outcome"] == "http_error" or line["source"] == "cards":
                assert line["correlation_id"], line
    records = await read_topics(kafka_broker, [f"{prefix}-changes"])
    assert {r.key for r in records} == {f"mc:{tokens[4]}", "cards:50553500971"}


async def test_sigterm_drains_a_slow_poll_then_exits_0(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """SIGTERM while a poll is in flight: the poll finishes within the grace period, its event is
    published, and the daemon exits 0."""
    token = "non_card_token:slow-one"
    sandbox_post(sandbox, "faults", {"api": "mastercard", "account": token, "kind": "delay",
                                     "delay_seconds": 3, "count": None})
    sources = mastercard("mc", sandbox, dev_key, "SLOW", "json", json.dumps([token]))
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=RULES, topic_prefix="slow")
    daemon = start_daemon(config)
    _wait_for_event(daemon, "daemon started")
    await asyncio.sleep(1.0)  # the first round is now waiting for the slow answer
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    events = [line.get("event") for line in daemon.lines()]
    assert "draining poll rounds in flight" in events
    assert "daemon stopped" in events
    records = await read_topics(kafka_broker, ["slow-changes"])
    assert [r.key for r in records] == [f"mc:{token}"]


def _children(pid: int) -> list[tuple[int, str]]:
    """The processes `pid` started, with their command lines."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                children.append((int(child), Path(f"/proc/{child}/cmdline").read_text().replace("\0", " ")))
    return children


async def test_signing_processes_sign_and_stop_with_the_daemon(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """`[signing] processes = 1`: the sandbox accepts the process's signatures; SIGTERM sent to the daemon
    and its signing process alike (as systemd does) while a poll is in flight: the poll finishes, its
    event is published, the daemon exits 0, and no signing process is left."""
    token = "non_card_token:slow-signed"
    sandbox_post(sandbox, "faults", {"api": "mastercard", "account": token, "kind": "delay",
                                     "delay_seconds": 3, "count": None})
    sources = mastercard("mc", sandbox, dev_key, "SIGNED", "json", json.dumps([token]))
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=RULES, topic_prefix="signed",
                          top_level="[signing]\nprocesses = 1")
    daemon = start_daemon(config)
    _wait_for_event(daemon, "daemon started")
    children = _children(daemon.process.pid)
    assert len(children) == 1
    assert "watcher.sign_worker" in children[0][1]
    await asyncio.sleep(1.0)  # the first round is now waiting for the slow answer
    for pid in (daemon.process.pid, children[0][0]):
        os.kill(pid, signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    assert not Path(f"/proc/{children[0][0]}").exists()  # noqa: ASYNC240 - /proc, not a disk
    lines = daemon.lines()
    assert [line["outcome"] for line in lines if line.get("event") == "poll"] == ["ok"]
    records = await read_topics(kafka_broker, ["signed-changes"])
    assert [r.key for r in records] == [f"mc:{token}"]


async def test_sighup_reloads_rules_and_keeps_them_on_a_broken_file(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """SIGHUP loads the rules files again: a broken file is rejected with a logged error and the old
    rules stay; a valid one is applied to the next poll."""
    token = "non_card_token:hup"
    set_mc(sandbox, "HUP", token, "7000.00")
    sources = mastercard("mc", sandbox, dev_key, "HUP", "json", json.dumps([token]))
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=RULES, topic_prefix="hup")
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"mc"})
    (tmp_path / "rules.toml").write_text("[[rules]\nbroken")
    daemon.process.send_signal(signal.SIGHUP)
    _wait_for_event(daemon, "rules reload rejected; the previous rules stay in force")
    (tmp_path / "rules.toml").write_text(RULES.replace('"5000.00"', '"8000.00"'))
    daemon.process.send_signal(signal.SIGHUP)
    _wait_for_event(daemon, "rules reloaded")
    rounds = sum(1 for line in daemon.lines() if line.get("event") == "poll round")
    daemon.wait_for_rounds({"mc"}, rounds=rounds + 1)
    assert daemon.stop() == 0
    alerts = await read_topics(kafka_broker, ["hup-alerts"])
    assert [(r.headers["ce_type"], r.body["rule"]["threshold"]) for r in alerts] == [  # type: ignore[index]
        ("balance.alert.firing", "8000.00")
    ]


def _wait_for_event(daemon: DaemonProcess, event: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.get("event") == event for line in daemon.lines()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event!r} in the daemon's log: {daemon.lines()[-5:]}")


STALE_RULES = """
[[rules]]
name = "cards-access"
kind = "stale"
after = "1h"
source = "cards"
severity = "critical"
annotations = { summary = "no balance for {account}" }
"""


async def test_revoked_consent_raises_a_stale_alert_with_the_providers_reason(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """When myPOS answers that the consent expired, a `stale` alert fires at once with the provider's
    reason (no balance in the event), it validates against the schema, and a restart does not fire it
    again."""
    config = write_config(tmp_path, broker=kafka_broker, sources=mypos(sandbox, '["50553500971"]'),
                          rules=STALE_RULES, topic_prefix="stale")
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"cards"})
    sandbox_post(sandbox, "mypos/consent", {"status": "expired"})
    rounds = sum(1 for line in daemon.lines() if line.get("event") == "poll round")
    daemon.wait_for_rounds({"cards"}, rounds=rounds + 2)
    assert daemon.stop() == 0
    again = start_daemon(config)
    again.wait_for_rounds({"cards"}, rounds=2)
    assert again.stop() == 0

    alerts = await read_topics(kafka_broker, ["stale-alerts"])
    assert len(alerts) >= 1
    for record in alerts:
        assert_cloudevent(record)
    firing = [r for r in alerts if r.headers["ce_type"] == "balance.alert.firing"]
    assert len({r.headers["ce_id"] for r in firing}) == len(firing) == len({r.key for r in firing})
    account = next(r for r in firing if r.key == "cards:50553500971")
    assert "CONSENT_EXPIRED" in str(account.body["reason"])
    assert account.body["rule"]["kind"] == "stale"  # type: ignore[index]
    assert account.body["balance"] is None
    assert account.body["annotations"] == {"summary": "no balance for 50553500971"}


async def test_removing_a_rule_on_sighup_resolves_its_alerts(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """A SIGHUP whose rules files no longer hold a firing rule resolves its alert (same fingerprint),
    while the alerts of rules that remain keep their state and fire nothing again."""
    token = "non_card_token:gone"
    set_mc(sandbox, "GONE", token, "500.00")
    two_rules = RULES + '\n[[rules]]\nname = "gbp-very-low"\nkind = "below"\nthreshold = "1000.00"\n'
    sources = mastercard("mc", sandbox, dev_key, "GONE", "json", json.dumps([token]))
    config = write_config(tmp_path, broker=kafka_broker, sources=sources, rules=two_rules,
                          topic_prefix="gone")
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"mc"})
    (tmp_path / "rules.toml").write_text(RULES)
    daemon.process.send_signal(signal.SIGHUP)
    _wait_for_event(daemon, "rules reloaded")
    rounds = sum(1 for line in daemon.lines() if line.get("event") == "poll round")
    daemon.wait_for_rounds({"mc"}, rounds=rounds + 1)
    assert daemon.stop() == 0
    alerts = await read_topics(kafka_broker, ["gone-alerts"])
    seen = [(r.headers["ce_type"], r.body["rule"]["name"]) for r in alerts]  # type: ignore[index]
    assert sorted(seen) == [
        ("balance.alert.firing", "gbp-low"),
        ("balance.alert.firing", "gbp-very-low"),
        ("balance.alert.resolved", "gbp-very-low"),
    ]
    very_low = [r for r in alerts if r.body["rule"]["name"] == "gbp-very-low"]  # type: ignore[index]
    fired, resolved = sorted(very_low, key=lambda r: r.headers["ce_type"])
    assert resolved.body["fingerprint"] == fired.body["fingerprint"]
    assert resolved.body["reason"]
    assert_cloudevent(resolved)


async def test_new_consent_on_sighup_resumes_polling_and_resolves_the_stale_alert(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path,
    start_daemon: Callable[[Path], DaemonProcess],
) -> None:
    """After a consent expired (stale alert firing), a config reload with a new consent rebuilds the
    source: polling resumes and the stale alert resolves."""
    config = write_config(tmp_path, broker=kafka_broker, sources=mypos(sandbox, '["50553500971"]'),
                          rules=STALE_RULES, topic_prefix="consent")
    daemon = start_daemon(config)
    daemon.wait_for_rounds({"cards"})
    sandbox_post(sandbox, "mypos/consent", {"status": "expired"})
    rounds = sum(1 for line in daemon.lines() if line.get("event") == "poll round")
    daemon.wait_for_rounds({"cards"}, rounds=rounds + 2)
    new_consent = "6f0b8f5e-2a57-4c8e-9d59-9a3f0f1f2c11"
    sandbox_post(sandbox, "mypos/consent", {"consent_id": new_consent, "status": "valid"})
    config.write_text(config.read_text().replace("3c7816ee-3d51-4bf5-8ced-ece2af35d431", new_consent))
    daemon.process.send_signal(signal.SIGHUP)
    _wait_for_event(daemon, "source rebuilt from the reloaded config")
    rounds = sum(1 for line in daemon.lines() if line.get("event") == "poll round")
    daemon.wait_for_rounds({"cards"}, rounds=rounds + 2)
    assert daemon.stop() == 0
    alerts = await read_topics(kafka_broker, ["consent-alerts"])
    account = [r.headers["ce_type"] for r in alerts if r.key == "cards:50553500971"]
    assert account == ["balance.alert.firing", "balance.alert.resolved"]
    secret_free = daemon.log_path.read_text()
    assert new_consent not in secret_free
