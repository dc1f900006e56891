"""Shared pieces of the benchmarks: the broker, the sandbox and the daemon as real processes, a config
writer, reading Kafka back, the daemon's /metrics, its peak RSS and CPU seconds, and the signed floor.

Nothing here is timed against a threshold: every script prints what it measured, and run_all.py
collects the figures into bench/results.json and bench/results.png.

Processes are started with their own process ids and stopped by those ids only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Runnable from a checkout: `python bench/x.py` puts bench/ on the path, not the project root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from unit_env import unit_environment  # noqa: E402

from watcher.devbroker import Broker, free_port, start_broker  # noqa: E402
from watcher.devkeys import DEFAULT_PASSWORD, DevKey, generate_dev_key  # noqa: E402

WORK = ROOT / "bench" / ".work"
PARTNER = "bench"
CONSUMER_KEY = "bench-consumer-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RULES_FILE = ROOT / "rules.example.toml"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def token(index: int, partner: str = PARTNER) -> str:
    """The sandbox's token of account `index` (0-based) of a partner (see watcher/sandbox/world.py)."""
    return f"non_card_token:sbx-{partner}-{index + 1:04d}"


def tokens(count: int, partner: str = PARTNER) -> list[str]:
    return [token(i, partner) for i in range(count)]


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
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


def stop_process(process: subprocess.Popen[Any], timeout: float = 30) -> int | None:
    """SIGTERM this process (by its own id), SIGKILL it if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


# --- /proc: peak RSS and CPU seconds of a process ------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def signing_variants(threads: Sequence[int], processes: Sequence[int]) -> list[str]:
    """The `--signing-threads` and `--signing-processes` of a benchmark, as `write_config`'s `signing`."""
    return [f"threads={n}" for n in threads] + [f"processes={n}" for n in processes]


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (the daemon's signing processes), from every one of its threads."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(child) for child in f.read().split()]
    return children


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


class CpuSampler:
    """Samples a process's CPU seconds and RSS every `period` s, with wall time, on a thread; so CPU can be
    attributed to an interval of wall time (a poll round) read from the log afterwards."""

    def __init__(self, pid: int, period: float = 0.05, *, children: bool = False) -> None:
        """`children`: count the CPU of the processes `pid` starts too (the daemon's signing processes;
        a child's last figure stays counted after it ends), and keep their summed peak RSS."""
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self.peak_rss_kib = 0
        self.children = children
        self.children_peak_rss_kib = 0
        self._children_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cpu = cpu_seconds(self.pid)
                self.peak_rss_kib = max(self.peak_rss_kib, proc_status(self.pid).get("VmHWM", 0))
            except (OSError, IndexError, ValueError):
                return
            if self.children:
                cpu += self._sample_children()
            self.samples.append((time.time(), cpu))
            self._stop.wait(self.period)

    def _sample_children(self) -> float:
        rss = 0
        for child in child_pids(self.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                self._children_cpu[child] = cpu_seconds(child)
                rss += proc_status(child).get("VmHWM", 0)
        self.children_peak_rss_kib = max(self.children_peak_rss_kib, rss)
        return sum(self._children_cpu.values())

    def cpu_at(self, wall: float) -> float:
        """CPU seconds at wall time `wall`, interpolated between samples."""
        s = self.samples
        if not s:
            return 0.0
        if wall <= s[0][0]:
            return s[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t0 <= wall <= t1:
                return c0 + (c1 - c0) * (wall - t0) / (t1 - t0 or 1)
        return s[-1][1]

    def cpu_between(self, start: float, end: float) -> float:
        return self.cpu_at(end) - self.cpu_at(start)


# --- the environment: dev key, broker, sandbox ----------------------------------------------------


@dataclass
class Sandbox:
    port: int
    process: subprocess.Popen[bytes]
    accounts: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mastercard_url(self) -> str:
        return f"{self.url}/send"

    def control(self, method: str, path: str, payload: object | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            f"{self.url}/_sandbox/{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def add_delay(self, accounts: Iterable[str], seconds: float) -> None:
        """A persistent `delay` fault on each account: the simulated API latency."""
        for account in accounts:
            self.control("POST", "faults", {"api": "mastercard", "account": account, "partner": PARTNER,
                                            "kind": "delay", "delay_seconds": seconds, "count": None})

    async def set_balances(self, changes: Sequence[tuple[str, str]], concurrency: int = 16) -> None:
        """Put accounts at amounts through the control API, a few at a time."""
        import aiohttp

        limit = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one(account: str, amount: str) -> None:
                async with limit, session.post(
                    f"{self.url}/_sandbox/mastercard/balance",
                    json={"partner": PARTNER, "account": account, "amount": amount, "currency": "GBP"},
                ) as response:
                    if response.status != 200:
                        raise RuntimeError(f"sandbox refused a balance: {await response.text()}")

            await asyncio.gather(*(one(a, m) for a, m in changes))

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Env:
    """One benchmark run's dev key, broker and working folder."""

    root: Path
    dev_key: DevKey
    broker: Broker
    _sandboxes: list[Sandbox] = field(default_factory=list)
    _counter: int = 0
    _brokers: int = 0

    @classmethod
    def start(cls, root: Path | None = None) -> Env:
        # SIGTERM unwinds like Ctrl-C, so every process started here is stopped on the way out.
        signal.signal(signal.SIGTERM, _interrupt)
        root = root or WORK / time.strftime("%Y%m%d-%H%M%S")
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        dev_key = generate_dev_key(root / "keys")
        broker = start_broker(root / "kafka", log_path=root / "broker.log")
        log(f"broker on {broker.bootstrap_servers} (pid {broker.process.pid}); work folder {root}")
        return cls(root, dev_key, broker)

    def fresh_broker(self) -> Broker:
        """Stop the broker, drop its data, and start an empty one: call it before each measurement that
        publishes. noida-db rewrites everything it holds to one JSON file every few seconds while it is
        written to (100,000 events of ~700 bytes: ~270 MiB, and 0.6 of a core at a steady 500 events/s,
        against 0.08 when empty), so a broker that kept the events of earlier measurements took more of
        the two cores from each later one. Apache Kafka appends to its log at the same cost whatever it
        holds."""
        self.broker.stop()
        shutil.rmtree(self.broker.data_dir, ignore_errors=True)
        self._brokers += 1
        self.broker = start_broker(self.root / f"kafka-{self._brokers}", log_path=self.root / "broker.log")
        return self.broker

    def folder(self, name: str) -> Path:
        self._counter += 1
        path = self.root / f"{self._counter:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def sandbox(self, accounts: int, tick: float = 0.0, *extra: str) -> Sandbox:
        port = free_port()
        log_path = self.root / f"sandbox-{port}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "watcher", "sandbox", "--host", "127.0.0.1", "--port", str(port),
                 "--certificate", str(self.dev_key.certificate_path), "--tick", str(tick),
                 "--accounts", str(accounts), *extra],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_for_port(port, process)
        sandbox = Sandbox(port, process, accounts)
        self._sandboxes.append(sandbox)
        return sandbox

    def stop(self) -> None:
        for sandbox in self._sandboxes:
            sandbox.stop()
        self.broker.stop()

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- config and the daemon ------------------------------------------------------------------------


def mastercard_source(
    env: Env,
    sandbox: Sandbox,
    *,
    name: str = "mc-bench",
    fmt: str = "json",
    accounts: Sequence[str] = (),
    interval: str = "1h",
    max_concurrency: int = 64,
    max_requests_per_second: float = 10_000,
    timeout: str = "30s",
) -> str:
    """One [[sources]] table: the listing when `accounts` is empty, else one call per account."""
    return f"""
[[sources]]
name = "{name}"
type = "mastercard-send"
base_url = "{sandbox.mastercard_url}"
partner_id = "{PARTNER}"
consumer_key = "{CONSUMER_KEY}"
signing_key_path = "{env.dev_key.p12_path}"
signing_key_password = "{DEFAULT_PASSWORD}"
format = "{fmt}"
non_card_tokens = {json.dumps(list(accounts))}
interval = "{interval}"
jitter = "1ms"
max_concurrency = {max_concurrency}
max_requests_per_second = {max_requests_per_second}
timeout = "{timeout}"
retries = 1
breaker_threshold = 1000
"""


def write_config(
    folder: Path,
    env: Env,
    sources: str,
    *,
    log_level: str = "info",
    metrics_port: int | None = None,
    rules: Path = RULES_FILE,
    topic_prefix: str | None = None,
    signing: str | None = None,
) -> tuple[Path, list[str]]:
    """config.toml (and a copy of the rules) in `folder`; returns it and the two topics. `signing`:
    "threads=N" or "processes=N", a `[signing]` setting (None: the daemon's default)."""
    shutil.copy(rules, folder / "rules.toml")
    prefix = re.sub(r"[^A-Za-z0-9._-]", "_", topic_prefix or folder.name)
    topics = [f"{prefix}-changes", f"{prefix}-alerts"]
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    if signing is not None:  # else the daemon's default
        name, _, count = signing.partition("=")
        metrics += f"[signing]\n{name} = {int(count)}\n"
    config = folder / "config.toml"
    config.write_text(
        f"""
shutdown_grace = "60s"
[state]
path = "state.db"
[kafka]
bootstrap_servers = "{env.broker.bootstrap_servers}"
changes_topic = "{topics[0]}"
alerts_topic = "{topics[1]}"
[outbox]
max_events = 10000000
[rules]
files = ["rules.toml"]
[logging]
level = "{log_level}"
format = "json"
{metrics}
"""
        + sources
    )
    return config, topics


def parse_log_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Daemon:
    """`python -m watcher run -c CONFIG` as its own process, with the systemd unit's environment; its JSON
    log lines read from a file."""

    def __init__(self, config: Path, *, metrics_port: int | None = None, command: str = "run",
                 patches: Sequence[str] = (), extra_env: dict[str, str] | None = None) -> None:
        self.config = config
        self.metrics_port = metrics_port
        self.log_path = config.parent / f"daemon-{command}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watcher", command, "-c", str(config)] if not patches else
            [sys.executable, str(ROOT / "bench" / "patched_daemon.py"), ",".join(patches), command, "-c",
             str(config)],
            stdout=self._log, stderr=self._log, cwd=ROOT,
            env={**os.environ, **unit_environment(), "PYTHONUNBUFFERED": "1", **(extra_env or {})},
        )
        self._offset = 0
        self._lines: list[dict[str, Any]] = []
        # The round lines, kept as they are read: `wait_for_rounds` asks 20 times a second, and a filter
        # over every line so far (one per poll: 200,000 at 100,000 accounts) cost the benchmark's own
        # process a third of a core, taken from the daemon it measures.
        self._rounds: list[dict[str, Any]] = []
        # The daemon's CPU includes its signing processes' (`[signing] processes`): their work is its work.
        self.sampler = CpuSampler(self.pid, children=True)
        self.sampler.__enter__()

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> list[dict[str, Any]]:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "(not JSON)", "raw": raw.decode("utf-8", "replace")}
            self._lines.append(line)
            if line.get("event") == "poll round":
                self._rounds.append(line)
        return self._lines

    def rounds(self) -> list[dict[str, Any]]:
        self.lines()
        return list(self._rounds)

    def wait_for_rounds(self, count: int, timeout: float = 600) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}: {self.lines()[-5:]}")
            rounds = self.rounds()
            if len(rounds) >= count:
                return rounds
            time.sleep(0.05)
        raise RuntimeError(f"no {count} poll rounds in {timeout}s: {self.lines()[-5:]}")

    def metrics(self) -> dict[str, float]:
        """The daemon's /metrics, as {name{labels}: value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def events_published(self) -> int:
        m = self.metrics()
        return int(sum(v for k, v in m.items() if k.startswith("balance_watcher_events_published_total")))

    def wait_published(self, count: int, timeout: float = 600, period: float = 0.02) -> float:
        """Block until /metrics says `count` events were acknowledged; returns the wall time seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events_published() >= count:
                return time.time()
            time.sleep(period)
        raise RuntimeError(f"only {self.events_published()} of {count} events acknowledged in {timeout}s")

    def peak_rss_mib(self) -> float:
        try:
            return proc_status(self.pid)["VmHWM"] / 1024
        except OSError:
            return self.sampler.peak_rss_kib / 1024

    def signing_processes_peak_rss_mib(self) -> float:
        """The daemon's children's peak RSS, summed (its signing processes); 0 without any."""
        return self.sampler.children_peak_rss_kib / 1024

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> int | None:
        with contextlib.suppress(OSError):
            self.cpu_user_s, self.cpu_sys_s = cpu_split(self.pid)
        self.sampler.stop()
        try:
            return stop_process(self.process, timeout=90)
        finally:
            self._log.close()


def round_window(line: dict[str, Any]) -> tuple[float, float]:
    """The wall-clock start and end of a poll round, from its log line."""
    end = parse_log_time(line["timestamp"])
    return end - float(line["duration_ms"]) / 1000, end


# --- reading Kafka back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    key: str
    headers: dict[str, str]
    value: bytes
    timestamp_ms: int
    timestamp_type: int  # 0 CreateTime, 1 LogAppendTime


async def read_topics(
    bootstrap: str, topics: Sequence[str], expected: int | None = None, idle: float = 2.0,
    give_up_s: float = 300,
) -> list[KafkaRecord]:
    """Every record of the topics from the beginning: until `expected` arrived (then `idle` more
    seconds of quiet is not waited for), or until none arrives for `idle` seconds."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, metadata_max_age_ms=500, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    records: list[KafkaRecord] = []
    started = time.monotonic()
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle and time.monotonic() - started < give_up_s:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for batch in batches.values():
                for r in batch:
                    quiet_since = time.monotonic()
                    records.append(KafkaRecord(
                        r.topic, (r.key or b"").decode(), {k: v.decode() for k, v in r.headers},
                        r.value or b"", r.timestamp, r.timestamp_type,
                    ))
            if expected is not None and len(records) >= expected:
                break
    finally:
        await consumer.stop()
    return records


# --- the floor: a bare loop of signed aiohttp GETs ------------------------------------------------


def load_key(env: Env) -> Any:
    from watcher.signing import load_signing_key

    return load_signing_key(env.dev_key.p12_path, DEFAULT_PASSWORD)


async def signed_floor(
    urls: Sequence[str],
    key: Any,
    *,
    concurrency: int = 64,
    sign_in_threads: int = 0,
    sign_in_processes: int = 0,
    sign: bool = True,
    accept: str = "application/json",
) -> dict[str, float]:
    """GET every URL once, `concurrency` in flight, each OAuth1-signed with Mastercard's signer in the
    event loop (or on `sign_in_threads` threads, or by `sign_in_processes` of the daemon's signing
    processes); the body is read and dropped. No parsing, no rules, no Kafka. Returns calls/s, CPU seconds
    of this process (and of its signing processes, their start-up left out) and the non-200 count."""
    from concurrent.futures import ThreadPoolExecutor

    import aiohttp
    from yarl import URL

    from watcher.sign_process import SigningProcesses
    from watcher.signing import authorization_header

    pool = ThreadPoolExecutor(sign_in_threads) if sign_in_threads else None
    processes = SigningProcesses(sign_in_processes) if sign_in_processes else None
    signers: list[int] = []
    if processes is not None:
        others = set(child_pids(os.getpid()))  # the sandbox and the broker
        await processes.start()
        signers = [pid for pid in child_pids(os.getpid()) if pid not in others]
    loop = asyncio.get_running_loop()
    errors = 0
    queue = list(reversed(urls))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while queue:
            url = queue.pop()
            headers = {"Accept": accept}
            if sign:
                if processes is not None:
                    headers["Authorization"] = await processes.authorization_header(
                        url, "GET", CONSUMER_KEY, key)
                elif pool is None:
                    headers["Authorization"] = authorization_header(url, "GET", CONSUMER_KEY, key)
                else:
                    headers["Authorization"] = await loop.run_in_executor(
                        pool, authorization_header, url, "GET", CONSUMER_KEY, key
                    )
            async with session.get(URL(url, encoded=True), headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1

    cpu0 = time.process_time() + sum(map(cpu_seconds, signers))
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() + sum(map(cpu_seconds, signers)) - cpu0
    if pool is not None:
        pool.shutdown()
    if processes is not None:
        await processes.close()
    return {"calls": len(urls), "seconds": elapsed, "per_s": len(urls) / elapsed, "cpu_s": cpu,
            "errors": errors}


def account_urls(sandbox: Sandbox, accounts: Sequence[str]) -> list[str]:
    from watcher.sources.mastercard import _segment

    base = f"{sandbox.mastercard_url}/v1/partners/{PARTNER}/non-card-tokens"
    return [f"{base}/{_segment(a)}/account-balance" for a in accounts]


def listing_url(sandbox: Sandbox) -> str:
    return f"{sandbox.mastercard_url}/v1/partners/{PARTNER}/account-balances"


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


def dump(result: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text, flush=True)
    if path is not None:
        path.write_text(text + "\n")


def main_guard(fn: Callable[[], int]) -> None:
    sys.exit(fn())


class PublishedSampler:
    """Polls the daemon's /metrics on a thread: (wall time, events acknowledged so far)."""

    def __init__(self, daemon: Daemon, period: float = 0.2) -> None:
        self.daemon = daemon
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.time(), self.daemon.events_published()))
            self._stop.wait(self.period)

    def when_reached(self, count: int) -> float | None:
        for at, published in self.samples:
            if published >= count:
                return at
        return None

    def wait_for(self, count: int, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = self.when_reached(count)
            if at is not None:
                return at
            if self.daemon.process.poll() is not None:
                raise RuntimeError("the daemon exited")
            time.sleep(self.period)
        raise RuntimeError(f"{count} events not acknowledged within {timeout}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- profiles -------------------------------------------------------------------------------------


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def start_profile(pid: int, out: Path, duration: float, rate: int = 250) -> subprocess.Popen[bytes]:
    """py-spy attached to a running process (sampling; --nonblocking: it never pauses the process),
    writing collapsed stacks to `out`. With BENCH_PROFILE_GIL=1 only the samples of the thread holding
    the GIL (py-spy --gil): where the interpreter's time goes, without the threads waiting for it."""
    gil = ["--gil"] if os.environ.get("BENCH_PROFILE_GIL") == "1" else []
    return subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(duration))), "--rate",
         str(rate), "--nonblocking", *gil, "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks ("f1;f2;f3 count") to the top functions by own samples and by inclusive samples."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = _frame(frames[-1])
        if "select" in leaf and ("selectors" in frames[-1] or "epoll" in leaf):
            idle += count
        own[leaf] = own.get(leaf, 0) + count
        for name in {_frame(f) for f in frames}:
            inclusive[name] = inclusive.get(name, 0) + count

    def table(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "idle_pct": round(100 * idle / max(total, 1), 1),
            "own_pct": table(own), "inclusive_pct": table(inclusive)}


def _frame(frame: str) -> str:
    """`function (path/to/file.py:123)` -> `function (file.py)`; paths shortened to the package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"
