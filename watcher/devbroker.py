"""A local Kafka-protocol broker for the demo and the tests: noida-db, from the `dev` extra.

Not used by the daemon, which speaks plain Kafka to whatever `kafka.bootstrap_servers` names.
Run it alone with `python -m watcher.devbroker --port 9092 --data-dir .demo/kafka`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The broker could not be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> Path:
    """The noida-db binary shipped inside the noida_db package (not its Python wrapper)."""
    try:
        import noida_db  # type: ignore[import-untyped]
    except ImportError:
        raise BrokerError("noida-db is not installed: pip install -e '.[dev]'") from None
    path = Path(os.path.dirname(noida_db.__file__)) / "noida-db"
    if not path.is_file():
        raise BrokerError(f"the noida-db binary is missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"noida-db exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BrokerError(f"noida-db did not listen on {host}:{port} within {timeout:.0f}s")


@dataclass
class Broker:
    """A running noida-db process with its own data directory; stop it by its PID."""

    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not go; the data directory is kept."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_broker(
    data_dir: Path, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None,
    timeout: float = 30.0,
) -> Broker:
    """Start noida-db with only its Kafka service, and wait until its port accepts connections."""
    binary = broker_binary()
    port = port or free_port(host)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path or data_dir / "broker.log", "ab")  # noqa: SIM115 - owned by the process
    try:
        process = subprocess.Popen(
            [str(binary), "start", "--only", "kafka", "--host", host, "--kafka-port", str(port),
             "--data-dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()
    broker = Broker(host, port, data_dir, process)
    try:
        _wait_for_port(host, port, process, timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m watcher.devbroker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--data-dir", type=Path, default=Path(".demo/kafka"))
    args = parser.parse_args(argv)
    try:
        broker = start_broker(args.data_dir, args.port, args.host)
    except BrokerError as exc:
        print(f"devbroker: {exc}", file=sys.stderr)
        return 1
    print(f"kafka broker listening on {broker.bootstrap_servers} (pid {broker.process.pid})", flush=True)
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop and broker.process.poll() is None:
        time.sleep(0.2)
    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
