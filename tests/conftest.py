"""Shared fixtures: a real Kafka-protocol broker, a development signing key, the sandbox process,
and daemons started as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from harness import DaemonProcess, SandboxProcess, start_sandbox_process

from watcher.devbroker import Broker, start_broker
from watcher.devkeys import DevKey, generate_dev_key


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


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for the sources under test, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture(scope="module")
def key() -> RSAPrivateKey:
    """A throwaway RSA signing key, made once per test module (a parametrized `key` takes precedence)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sandbox(dev_key: DevKey, tmp_path: Path) -> Iterator[SandboxProcess]:
    """A static sandbox (balances move only when a test sets them), stopped after the test."""
    proc = start_sandbox_process(dev_key, tmp_path / "sandbox.log")
    yield proc
    proc.process.terminate()
    proc.process.wait(10)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[[Path], DaemonProcess]]:
    """Start daemons; any still running at the end of the test is killed."""
    started: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
