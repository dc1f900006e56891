"""Metrics: recorded values as a real scrape of the HTTP endpoint shows them, and /healthz, /readyz."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from harness import SandboxProcess, write_config
from prometheus_client.parser import text_string_to_metric_families
from test_notify import LOW_RULE, mastercard_source, spawn_daemon

from rules.types import Balance, BalanceKey, KnownBalance
from watcher.devbroker import Broker, free_port
from watcher.devkeys import DevKey
from watcher.metrics import Metrics, MetricsServer, parse_listen
from watcher.poller import RoundSummary

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def known(amount: str, currency: str, **balance: str) -> KnownBalance:
    return KnownBalance(Balance(Decimal(amount), currency, **balance), datetime.now(UTC), "corr", version=1)


def record_some(metrics: Metrics) -> None:
    metrics.declare_sources(["mc-gbp", "mypos", "idle"])
    metrics.observe_call("mc-gbp", 0.2)
    metrics.observe_call("mc-gbp", 3.0)
    metrics.observe_round(
        RoundSummary("mc-gbp", calls=3, outcomes=Counter(ok=2, timeout=1), duration_s=3.1), finished_at=1.7e9
    )
    metrics.observe_round(RoundSummary("mc-gbp", calls=1, outcomes=Counter(ok=1), duration_s=0.1), 1.8e9)
    metrics.observe_round(RoundSummary("mypos", calls=1, outcomes=Counter(http_error=1), duration_s=0.3))
    metrics.record_active_alerts({
        ("gbp-low", "critical", "firing"): 2, ("eur-high", "warning", "firing"): 1,
        ("eur-high", None, "firing"): 1,
    })
    # eur-high resolved; pending states are not firing; a rule without a severity warns
    metrics.record_active_alerts({
        ("gbp-low", "critical", "firing"): 1, ("gbp-low", "critical", "pending"): 4,
        ("usd-low", None, "firing"): 2, ("usd-low", "warning", "firing"): 1,
    })
    metrics.events_sent(["changes", "alerts", "changes", "changes", "changes"])
    metrics.events_not_sent(["changes", "changes"])
    outbox = [7]
    metrics.watch_outbox_depth(lambda: outbox[0])
    metrics.rules_reloaded(ok=True)
    metrics.rules_reloaded(ok=False)
    metrics.rules_reloaded(ok=False)
    gone = BalanceKey("mc-gbp", "nct-gone")
    state = {
        BalanceKey("mc-gbp", "nct-1"): known("120.50", "GBP", state="IN_DEBIT"),
        BalanceKey("mc-gbp", "nct-2"): known("1", "GBP", state="IN_CREDIT"),
        BalanceKey("mypos", "5055", "available"): known("120.260", "EUR", balance_type="available"),
        gone: known("5", "GBP"),
    }
    metrics.record_balances(state)
    del state[gone]
    metrics.record_balances(state)  # a balance no longer known loses its series


async def test_scrape_shows_every_recorded_value() -> None:
    """A real scrape of /metrics parses as the exposition format and holds exactly what was recorded."""
    metrics = Metrics(export_balances=True)
    record_some(metrics)
    async with MetricsServer(metrics, "127.0.0.1", 0) as server, aiohttp.ClientSession() as session:
        status, content_type, text = await scrape(session, f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(text)
    p = "balance_watcher_"
    assert got[(p + "polls_total", (("outcome", "ok"), ("source", "mc-gbp")))] == 3
    assert got[(p + "polls_total", (("outcome", "timeout"), ("source", "mc-gbp")))] == 1
    assert got[(p + "polls_total", (("outcome", "http_error"), ("source", "mypos")))] == 1
    assert got[(p + "polls_total", (("outcome", "ok"), ("source", "mypos")))] == 0  # declared
    assert got[(p + "poll_duration_seconds_count", (("source", "mc-gbp"),))] == 2
    assert got[(p + "poll_duration_seconds_sum", (("source", "mc-gbp"),))] == pytest.approx(3.2)
    assert got[(p + "poll_duration_seconds_bucket", (("le", "0.25"), ("source", "mc-gbp")))] == 1
    assert got[(p + "poll_round_duration_seconds_count", (("source", "mc-gbp"),))] == 2
    assert got[(p + "last_success_timestamp_seconds", (("source", "mc-gbp"),))] == 1.8e9
    assert (p + "last_success_timestamp_seconds", (("source", "mypos"),)) not in got  # never succeeded
    assert got[(p + "accounts_tracked", (("source", "mc-gbp"),))] == 2
    assert got[(p + "accounts_tracked", (("source", "mypos"),))] == 1
    assert got[(p + "accounts_tracked", (("source", "idle"),))] == 0  # declared, nothing known yet
    assert got[(p + "alerts_firing", (("rule", "gbp-low"), ("severity", "critical")))] == 1
    assert (p + "alerts_firing", (("rule", "eur-high"), ("severity", "warning"))) not in got
    assert got[(p + "alerts_firing", (("rule", "usd-low"), ("severity", "warning")))] == 3
    assert got[(p + "events_published_total", (("topic", "changes"),))] == 4
    assert got[(p + "events_published_total", (("topic", "alerts"),))] == 1
    assert got[(p + "events_failed_total", (("topic", "changes"),))] == 2
    assert got[(p + "outbox_depth", ())] == 7
    assert got[(p + "rules_reloads_total", (("result", "success"),))] == 1
    assert got[(p + "rules_reloads_total", (("result", "failure"),))] == 2
    mc_labels = (("account", "nct-1"), ("balance_type", ""), ("currency", "GBP"), ("source", "mc-gbp"))
    assert got[(p + "balance", mc_labels)] == -120.5  # IN_DEBIT is negative
    mypos_labels = (
        ("account", "5055"), ("balance_type", "available"), ("currency", "EUR"), ("source", "mypos")
    )
    assert got[(p + "balance", mypos_labels)] == 120.26
    assert not [k for k in got if k[0] == p + "balance" and ("account", "nct-gone") in k[1]]


async def test_balances_are_opt_in() -> None:
    """Without export_balances no balance series exists; accounts are still counted."""
    metrics = Metrics()
    metrics.record_balances({BalanceKey("mc-gbp", "nct-1"): known("1", "GBP")})
    names = {family.name for family in text_string_to_metric_families(metrics.exposition().decode())}
    assert "balance_watcher_balance" not in names
    assert "balance_watcher_polls" in names


def test_registries_are_independent() -> None:
    """Two Metrics objects never share values: no process-wide registry."""
    first, second = Metrics(), Metrics()
    first.watch_outbox_depth(lambda: 3)
    assert samples(second.exposition().decode())[("balance_watcher_outbox_depth", ())] == 0


async def test_health_and_readiness() -> None:
    """/healthz follows alive(), /readyz answers 503 until ready() holds, then 200."""
    state = {"ready": False, "alive": True}
    server = MetricsServer(
        Metrics(), "127.0.0.1", 0, ready=lambda: state["ready"], alive=lambda: state["alive"]
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            assert (await scrape(session, base + "/healthz"))[0] == 200
            assert (await scrape(session, base + "/readyz"))[0] == 503
            state["ready"] = True
            assert (await scrape(session, base + "/readyz"))[0] == 200
            state["alive"] = False
            assert (await scrape(session, base + "/healthz"))[0] == 503
            assert (await scrape(session, base + "/nothing"))[0] == 404
    finally:
        await server.stop()


async def test_busy_port_raises() -> None:
    """Starting on a port that is taken raises OSError (the daemon turns it into a start-up error)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(Metrics(), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            await server.start()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_listen() -> None:
    """"[::1]:port" binds the IPv6 loopback and serves there."""
    host, _ = parse_listen("[::1]:9464")
    async with MetricsServer(Metrics(), host, 0) as server, aiohttp.ClientSession() as session:
        status, _, text = await scrape(session, f"http://[::1]:{server.port}/metrics")
    assert status == 200
    assert "balance_watcher_outbox_depth" in text


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:9464", ("::1", 9464)),
        ("[fe80::1%eth0]:9464", ("fe80::1%eth0", 9464)),
        (":9464", ("0.0.0.0", 9464)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    """host:port, [IPv6]:port and :port (every interface) are understood."""
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", "::1:9464", "host:port", "host:0", "host:70000", "[::1]"])
def test_parse_listen_refuses(listen: str) -> None:
    """Anything else is a ValueError that quotes the value."""
    with pytest.raises(ValueError, match="listen"):
        parse_listen(listen)


# --- a real daemon process --------------------------------------------------------------------------


async def test_real_daemon_serves_metrics_and_readiness(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """`balance-watcher run` with [metrics]: /readyz turns 200, /healthz is 200, and a scrape shows the
    source's successful polls, its accounts and the time of its last success; SIGTERM still exits 0."""
    port = free_port()
    config = write_config(
        tmp_path, broker=kafka_broker, sources=mastercard_source(sandbox, dev_key), rules=LOW_RULE,
        topic_prefix=f"metrics-{uuid.uuid4().hex[:8]}", interval="1s",
        top_level=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    process = spawn_daemon(config)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, f"daemon exited with {process.returncode}"
                assert time.monotonic() < deadline, "no successful round on /metrics in 15 s"
                try:
                    if (await scrape(session, base + "/readyz"))[0] == 200:
                        got = samples((await scrape(session, base + "/metrics"))[2])
                        if got.get(("balance_watcher_polls_total", (("outcome", "ok"), ("source", "mc")))):
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
            assert (await scrape(session, base + "/healthz"))[0] == 200
        assert got[("balance_watcher_accounts_tracked", (("source", "mc"),))] >= 1
        assert got[("balance_watcher_last_success_timestamp_seconds", (("source", "mc"),))] > time.time() - 60
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
