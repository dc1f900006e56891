"""Test harness shared by the integration tests: processes, config files, reading Kafka back.

Imported as `harness` (pytest puts tests/ on the path; see pyproject.toml).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from watcher.devbroker import Broker, free_port
from watcher.devkeys import DevKey

ROOT = Path(__file__).resolve().parent.parent


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


@dataclass
class SandboxProcess:
    """`balance-watcher sandbox` running as its own process."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_sandbox_process(dev_key: DevKey, log_path: Path, *extra: str) -> SandboxProcess:
    port = free_port()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "watcher", "sandbox", "--host", "127.0.0.1", "--port", str(port),
             "--certificate", str(dev_key.certificate_path), "--tick", "0", *extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    wait_for_port(port, process)
    return SandboxProcess(port, process)


# --- the daemon as a real process, and reading Kafka back ------------------------------------------


def write_config(
    directory: Path,
    *,
    broker: Broker,
    sources: str,
    rules: str,
    topic_prefix: str,
    interval: str = "1s",
    kafka_extra: str = "",
    top_level: str = "",
) -> Path:
    """A config file (and its rules file) for a test, with its own topics and state database."""
    (directory / "rules.toml").write_text(rules)
    config = directory / "config.toml"
    config.write_text(
        f"""
shutdown_grace = "10s"
{top_level}
[state]
path = "state.db"
[kafka]
bootstrap_servers = "{broker.bootstrap_servers}"
changes_topic = "{topic_prefix}-changes"
alerts_topic = "{topic_prefix}-alerts"
{kafka_extra}
[rules]
files = ["rules.toml"]
[logging]
format = "json"
"""
        + sources.replace("INTERVAL", interval)
    )
    return config


class DaemonProcess:
    """`balance-watcher run` as its own process, its JSON log lines read from a file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "-c", str(config)],
            stdout=self._log, stderr=self._log, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._offset = log_path.stat().st_size if log_path.exists() else 0

    def lines(self) -> list[dict[str, object]]:
        """Every JSON log line this process wrote so far."""
        import json

        out = []
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            for raw in f.read().splitlines():
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    out.append({"event": "(not JSON)", "raw": raw.decode("utf-8", "replace")})
        return out

    def wait_for_rounds(self, sources: set[str], rounds: int = 1, timeout: float = 30) -> None:
        """Block until every named source finished `rounds` poll rounds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}: {self.lines()[-5:]}")
            done = [str(line.get("source")) for line in self.lines() if line.get("event") == "poll round"]
            if all(done.count(s) >= rounds for s in sources):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {rounds} poll round(s) of {sources} in {timeout}s: {self.lines()[-10:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()


@dataclass(frozen=True)
class Record:
    """One Kafka record read back from the broker."""

    topic: str
    key: str
    headers: dict[str, str]
    body: dict[str, object]
    offset: int


async def read_topics(broker: Broker, topics: Sequence[str], idle: float = 1.5) -> list[Record]:
    """Every record of the topics from the beginning, until none arrives for `idle` seconds,
    ordered by topic and offset."""
    import json

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=broker.bootstrap_servers, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, metadata_max_age_ms=500,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for r in batch:
                    quiet_since = time.monotonic()
                    records.append(
                        Record(r.topic, (r.key or b"").decode(), {k: v.decode() for k, v in r.headers},
                               json.loads(r.value), r.offset)
                    )
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.topic, r.offset))


def sandbox_post(sandbox: SandboxProcess, path: str, payload: dict[str, object]) -> None:
    """Call the sandbox's control API."""
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{sandbox.url}/_sandbox/{path}", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201), response.read()
