"""Shared fixtures: a real Kafka-protocol broker, a development signing key, the sandbox process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from watcher.devbroker import Broker, free_port, start_broker
from watcher.devkeys import DevKey, generate_dev_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One noida-db broker for the session, on a free loopback port, with its own data directory."""
    broker = start_broker(tmp_path_factory.mktemp("kafka"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def dev_key(tmp_path_factory: pytest.TempPathFactory) -> DevKey:
    """A development signing key (PKCS#12, password "devpassword") and its certificate."""
    return generate_dev_key(tmp_path_factory.mktemp("keys"))


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


@pytest.fixture
def sandbox(dev_key: DevKey, tmp_path: Path) -> Iterator[SandboxProcess]:
    """A static sandbox (balances move only when a test sets them), stopped after the test."""
    proc = start_sandbox_process(dev_key, tmp_path / "sandbox.log")
    yield proc
    proc.process.terminate()
    proc.process.wait(10)
