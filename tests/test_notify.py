"""sd_notify: the exact datagrams a real AF_UNIX listener receives, and the watchdog's progress gate."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ROOT, SandboxProcess, write_config

from watcher.devbroker import Broker
from watcher.devkeys import DevKey
from watcher.notify import (
    SystemdNotifier,
    WatchdogGate,
    feed_watchdog,
    should_ping,
    socket_address,
    status_line,
    watchdog_usec_from,
)
from watcher.poller import RoundSummary


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notification socket, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_messages_arrive_verbatim_in_order(listener: tuple[str, socket.socket]) -> None:
    """READY, STATUS, WATCHDOG, RELOADING (+MONOTONIC_USEC) and STOPPING arrive as sent, one datagram each."""
    address, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready()
    assert notifier.status("mc-gbp 3/3 ok")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.ready()
    assert notifier.stopping()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert received(sock) == "READY=1"
    assert received(sock) == "STATUS=mc-gbp 3/3 ok"
    assert received(sock) == "WATCHDOG=1"
    reloading, usec = received(sock).split("\n")
    assert reloading == "RELOADING=1"
    name, _, value = usec.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert received(sock) == "READY=1"
    assert received(sock) == "STOPPING=1"
    notifier.close()


def test_abstract_socket_address() -> None:
    """An '@' NOTIFY_SOCKET names an abstract socket: the message reaches a listener bound to it."""
    name = f"balance-watcher-test-{uuid.uuid4().hex}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert received(sock) == "READY=1"
        notifier.close()


def test_status_is_one_line(listener: tuple[str, socket.socket]) -> None:
    """A status text with newlines becomes one line, so it cannot inject another assignment."""
    address, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address})
    notifier.status("two\nlines\nREADY=1")
    assert received(sock) == "STATUS=two lines READY=1"
    notifier.close()


def test_no_socket_means_no_op() -> None:
    """Outside systemd (no NOTIFY_SOCKET) every call returns False and nothing fails."""
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.reloading()
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.watchdog_interval() is None


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """When systemd's socket is gone, sending is reported as failed, never raised."""
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert notifier.enabled
    assert not notifier.ready()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 120_000_000),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "{pid}"}, 120_000_000),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_usec_is_ours_only(env: dict[str, str], expected: int | None) -> None:
    """WATCHDOG_USEC counts only when WATCHDOG_PID is absent or this process's pid."""
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    assert watchdog_usec_from(env, os.getpid()) == expected


def test_watchdog_interval_is_half_the_timeout(listener: tuple[str, socket.socket]) -> None:
    """WatchdogSec=120 (WATCHDOG_USEC=120000000) means a ping every 60 s."""
    address, _ = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "120000000"})
    assert notifier.watchdog_interval() == 60.0
    notifier.close()


@pytest.mark.parametrize(
    ("now", "last", "expected"),
    [
        (100.0, 99.0, True),      # fresh progress
        (100.0, 0.5, True),       # 99.5 s ago, timeout 100 s
        (100.0, 0.0, False),      # exactly the timeout: too late
        (100.0, -50.0, False),    # long stalled
        (100.0, 101.0, False),    # progress in the future: a broken clock is not progress
    ],
)
def test_should_ping(now: float, last: float, expected: bool) -> None:
    """A ping is allowed only while the last progress is younger than WATCHDOG_USEC."""
    assert should_ping(now, last, 100_000_000) is expected


def test_gate_follows_beats() -> None:
    """The gate allows pings after a beat and refuses them once the watchdog timeout passed."""
    now = [1000.0]
    gate = WatchdogGate(clock=lambda: now[0])
    assert gate.allows_ping(10_000_000)
    now[0] += 10.0
    assert not gate.allows_ping(10_000_000)
    assert gate.stalled_for() == 10.0
    gate.beat()
    assert gate.allows_ping(10_000_000)


async def test_feed_watchdog_pings_only_while_progressing(listener: tuple[str, socket.socket]) -> None:
    """The pinger sends WATCHDOG=1 while beats arrive and falls silent when they stop."""
    address, sock = listener
    sock.setblocking(False)
    # 0.2 s timeout: a ping every 0.1 s.
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    gate = WatchdogGate()
    pinger = asyncio.create_task(feed_watchdog(notifier, gate))
    try:
        for _ in range(5):
            gate.beat()
            await asyncio.sleep(0.05)
        fed = drain(sock)
        assert fed
        assert set(fed) == {"WATCHDOG=1"}
        await asyncio.sleep(0.4)  # no beats: stalled beyond the timeout
        drain(sock)  # pings sent before the gate closed
        await asyncio.sleep(0.3)
        assert drain(sock) == []
    finally:
        pinger.cancel()
        await asyncio.gather(pinger, return_exceptions=True)
        notifier.close()


async def test_feed_watchdog_returns_without_a_watchdog(listener: tuple[str, socket.socket]) -> None:
    """Without WATCHDOG_USEC the pinger ends at once instead of idling forever."""
    address, _ = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": address})
    await asyncio.wait_for(feed_watchdog(notifier, WatchdogGate()), timeout=1)
    notifier.close()


def test_status_line_summarises_each_source() -> None:
    """STATUS= names every source with its calls, failures and events, sorted by source."""
    assert status_line([]) == "waiting for the first poll round"
    mc = RoundSummary("mc-gbp", calls=12, outcomes=Counter(ok=11, timeout=1), events=3, duration_s=0.42)
    mypos = RoundSummary("mypos", calls=2, outcomes=Counter(ok=2), delivery_failures=1, duration_s=1.0)
    assert status_line([mypos, mc]) == (
        "mc-gbp 11/12 ok 3 ev 0.4s (1 timeout); mypos 2/2 ok 0 ev 1.0s 1 not delivered"
    )


# --- a real daemon process --------------------------------------------------------------------------

LOW_RULE = """
[[rules]]
name = "low"
kind = "below"
threshold = "100.00"
"""


def mastercard_source(sandbox: SandboxProcess, key: DevKey) -> str:
    return f"""
[[sources]]
name = "mc"
type = "mastercard-send"
base_url = "{sandbox.url}/send"
partner_id = "NOTIFY"
consumer_key = "test-consumer-key"
signing_key_path = "{key.p12_path}"
signing_key_password = "devpassword"
interval = "INTERVAL"
timeout = "5s"
"""


def spawn_daemon(config: Path, **env: str) -> subprocess.Popen[bytes]:
    """`balance-watcher run -c config` with extra environment, logging to daemon.log next to the config."""
    with open(config.parent / "daemon.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "-c", str(config)],
            stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )


def collect_until(
    sock: socket.socket, got: list[str], done: Callable[[list[str]], bool], process: subprocess.Popen[bytes],
    timeout: float = 30,
) -> None:
    """Append every datagram to `got` until `done(got)` holds; fail on timeout or an early exit."""
    deadline = time.monotonic() + timeout
    while True:
        exited = process.poll() is not None
        got.extend(drain(sock))
        if done(got):
            return
        if exited:
            raise AssertionError(f"daemon exited with {process.returncode}; received {got}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; received {got}")
        time.sleep(0.05)


def test_real_daemon_notifies_in_order(
    kafka_broker: Broker, dev_key: DevKey, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """`balance-watcher run` under a NOTIFY_SOCKET: READY=1, STATUS= after a round, WATCHDOG=1 while it
    polls, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around SIGHUP, and STOPPING=1 at SIGTERM, last."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    config = write_config(
        tmp_path, broker=kafka_broker, sources=mastercard_source(sandbox, dev_key),
        rules=LOW_RULE, topic_prefix=f"notify-{uuid.uuid4().hex[:8]}", interval="1s",
    )
    # No WATCHDOG_PID: the watchdog is the daemon's own.
    process = spawn_daemon(config, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="2000000")
    got: list[str] = []
    try:
        collect_until(sock, got, lambda g: "READY=1" in g and any(m.startswith("STATUS=mc ") for m in g)
                      and "WATCHDOG=1" in g, process, timeout=15)
        process.send_signal(signal.SIGHUP)
        reload_from = len(got)
        collect_until(sock, got, lambda g: "READY=1" in g[reload_from:], process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        got.extend(drain(sock))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        sock.close()
    first = got.index("READY=1")
    assert any(m.startswith("STATUS=mc ") for m in got[first:]), got
    reloading = next(i for i, m in enumerate(got) if m.startswith("RELOADING=1\n"))
    assert reloading >= reload_from, got
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", got[reloading]), got[reloading]
    assert "READY=1" in got[reloading + 1:], got
    assert got[-1] == "STOPPING=1", got
