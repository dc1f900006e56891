"""The listing's memory, in process: peak RSS (VmHWM) of each round of a partner-wide listing.

    .venv/bin/python bench/listing_memory.py [--format json|xml] [--accounts 100000] [--rounds 4] [--trace]
                                             [--spool]

No broker, no sandbox process, no HTTP: the real state store (SQLite, in a temporary folder), the real
poller and rules (rules.example.toml), the real parser of the Mastercard source on a body the sandbox's
renderer made, and an outbox relay whose "Kafka" acknowledges each batch after --ack-delay seconds.
Round 1 is first sight; before each later round, every 100th account's amount moves (1 % changed).

The body is made once (in a child process, so that the sandbox's world does not stay in this one's
heap) and kept as a bytearray; each fetch copies it into a new bytes object, as a read does, or with
`--spool` writes it 64 KiB at a time into a spool file in the state database's folder, as the transport
does with a large body, and parses it back from there. So RSS here is the daemon's plus that one body
(the bytearray), ~35 MiB for JSON, and minus what the daemon has besides (aiohttp, aiokafka, the alert
clock). The peak of each round is measured alone: VmHWM is
reset before it (/proc/self/clear_refs). `--trace` adds tracemalloc (slow): traced memory at the end of
each round and its peak, and the largest allocation sites still alive at the end of the round.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from unit_env import unit_environment  # noqa: E402

from rules.loader import load_rule_files  # noqa: E402
from watcher.poller import OutboxDelivery, Poller, RoundSummary, RulesHolder  # noqa: E402
from watcher.relay import OutboxRelay  # noqa: E402
from watcher.sources.base import FetchResult  # noqa: E402
from watcher.sources.body import Spool  # noqa: E402
from watcher.sources.mastercard import ListingKeys, parse_mastercard_json, parse_mastercard_xml  # noqa: E402
from watcher.store import OutboxEntry, StateStore  # noqa: E402

WORK = ROOT / "bench" / ".work"


def status() -> dict[str, float]:
    """VmHWM and VmRSS of this process, in MiB."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) / 1024
    return out


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_body(fmt: str, accounts: int) -> tuple[Path, Path]:
    """The sandbox's rendering of a listing of `accounts` accounts, and every 100th token (cached)."""
    body = WORK / f"listing-{fmt}-{accounts}.body"
    tokens = body.with_suffix(".tokens")
    if not body.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        script = f"""
import time
from datetime import UTC, datetime
from pathlib import Path
from watcher.sandbox.mastercard import render_{fmt}, view_of
from watcher.sandbox.world import World
world = World(seed=7, accounts_per_partner={accounts}, mypos_accounts=0, tick_seconds=0, clock=time.monotonic,
              wall_clock=lambda: datetime.now(UTC), mypos_seed_body=b"")
accounts = world.mastercard_accounts("bench")
Path({str(body)!r}).write_bytes(render_{fmt}([view_of(a) for a in accounts], listing=True))
Path({str(tokens)!r}).write_text("\\n".join(a.non_card_token for a in accounts[::100]))
"""
        subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    return body, tokens


class Body:
    """The listing as the sandbox would answer it now; `move` changes 1 % of the amounts (the cents of
    every 100th account, in place: the body keeps its length)."""

    def __init__(self, fmt: str, accounts: int) -> None:
        path, tokens = make_body(fmt, accounts)
        self.buffer = bytearray(path.read_bytes())
        number = re.compile(rb"[0-9][0-9.]*")
        self.cents: list[tuple[int, int]] = []
        for token in tokens.read_text().split("\n"):
            at = self.buffer.index(b"amount", self.buffer.index(token.encode()))
            found = number.search(self.buffer, at)
            assert found is not None
            self.cents.append((found.end() - 2, found.end()))

    def move(self, round_no: int) -> None:
        for start, end in self.cents:
            self.buffer[start:end] = b"%02d" % ((int(self.buffer[start:end]) + 1 + round_no) % 100)


class Source:
    """The Mastercard listing's parse on the body, as MastercardSendSource.fetch does it after the read."""

    name = "mc-list"
    provider = "mastercard-send"
    max_concurrency = 1

    def __init__(self, body: Body, fmt: str, spool: Spool | None = None) -> None:
        self._body = body
        self._parse = parse_mastercard_json if fmt == "json" else parse_mastercard_xml
        self._keys = ListingKeys()
        self._spool = spool

    def targets(self) -> Sequence[str]:
        return ("*",)

    def share_known(self, known: object, quiet: object = None) -> None:
        # Either may be missing from an older commit's ListingKeys (measured alternately with this one).
        if hasattr(self._keys, "known"):
            self._keys.known = known  # type: ignore[assignment]
        if quiet is not None and hasattr(self._keys, "quiet"):
            self._keys.quiet = quiet

    async def fetch(self, target: str) -> FetchResult:
        started = time.monotonic()
        if self._spool is None:
            body = bytes(self._body.buffer)  # a new body, as a read makes
            parsed = self._parse(
                body, source=self.name, observed_at=datetime.now(UTC), correlation_id="corr", keys=self._keys
            )
            del body
        else:
            # As the transport spools a large body: 64 KiB at a time into an unlinked file.
            writer = self._spool.open()
            try:
                with memoryview(self._body.buffer) as view:
                    for at in range(0, len(view), 64 * 1024):
                        writer.write(view[at : at + 64 * 1024])
                spooled = writer.finish()
            finally:
                writer.close()
            with spooled:
                parsed = self._parse(
                    spooled, source=self.name, observed_at=datetime.now(UTC), correlation_id="corr",
                    keys=self._keys,
                )
        # The accounts left out unchanged, when the parse left any out (an older commit's never does).
        unchanged = {"unchanged": parsed.unchanged} if getattr(parsed, "unchanged", 0) else {}
        return FetchResult(self.name, target, "ok", "corr", observations=parsed.observations,
                           rejected=parsed.rejected, http_status=200, duration_s=time.monotonic() - started,
                           accounts=self._keys.latest,  # as MastercardSendSource names a listing's accounts
                           **unchanged)


class Kafka:
    """Acknowledges every batch after a delay."""

    def __init__(self, delay: float) -> None:
        self._delay = delay

    async def append(self, entries: Sequence[OutboxEntry]) -> asyncio.Future[None]:
        return asyncio.ensure_future(asyncio.sleep(self._delay))


async def run(args: argparse.Namespace) -> None:
    body = Body(args.format, args.accounts)
    folder = Path(tempfile.mkdtemp(prefix="listing-memory-", dir=WORK))
    try:
        await _rounds(args, body, folder)
    finally:  # the state database of 100,000 accounts is ~50 MB
        shutil.rmtree(folder, ignore_errors=True)


async def _rounds(args: argparse.Namespace, body: Body, folder: Path) -> None:
    store = StateStore(folder / "state.db", outbox_limit=10_000_000)
    await store.open()
    relay = OutboxRelay(store, Kafka(args.ack_delay), batch_size=1000)  # type: ignore[arg-type]
    relay_task = asyncio.create_task(relay.run())
    rules = load_rule_files([ROOT / "rules.example.toml"])
    spool = Spool(folder) if args.spool else None
    poller = Poller(Source(body, args.format, spool), store, OutboxDelivery(store, relay.wake),
                    RulesHolder(rules.rules), lambda: datetime.now(UTC))
    gc.collect()
    print(f"{args.format}, {'spooled' if args.spool else 'bytes'}; before round 1: RSS "
          f"{status()['VmRSS']:.1f} MiB (the body's bytearray {len(body.buffer) / 2**20:.1f} MiB of it)")
    if args.trace:
        tracemalloc.start()
    for round_no in range(1, args.rounds + 1):
        if round_no > 1:
            body.move(round_no)
        summary, wall, cpu, now = await measured_round(poller, store, trace=args.trace)
        wal = store.path.with_name(store.path.name + "-wal")
        wal_mib = wal.stat().st_size / 2**20 if wal.exists() else 0.0
        print(f"round {round_no}: {wall:.2f} s ({cpu:.2f} CPU s), {summary.events} events; "
              f"peak RSS {now['VmHWM']:.1f} MiB, RSS after {now['VmRSS']:.1f} MiB; write-ahead log file "
              f"{wal_mib:.1f} MiB, {store.checkpointer.checkpoints} checkpoints")
        if args.trace:
            print_traced(sites=12)
    relay.stop()
    relay.wake()
    relay_task.cancel()
    await store.close()


async def measured_round(
    poller: Poller, store: StateStore, *, trace: bool
) -> tuple[RoundSummary, float, float, dict[str, float]]:
    """One poll round with its own peak: its summary, wall and CPU seconds, and /proc's memory figures
    once every event of it is acknowledged and its state written."""
    gc.collect()
    reset_peak()
    if trace:
        tracemalloc.reset_peak()
    wall, cpu = time.monotonic(), time.process_time()
    summary = await poller.poll_round()
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    while store.outbox_depth:  # every event acknowledged, as the listing bench waits for  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await store.flush()
    return summary, wall, cpu, status()


def print_traced(sites: int) -> None:
    """tracemalloc's figures: the memory alive and its peak, and the largest allocation sites alive."""
    current, peak = tracemalloc.get_traced_memory()
    print(f"  traced: {current / 2**20:.1f} MiB alive, peak {peak / 2**20:.1f} MiB")
    for stat in tracemalloc.take_snapshot().statistics("lineno")[:sites]:
        frame = stat.traceback[0]
        print(f"  {stat.size / 2**20:7.2f} MiB {stat.count:8d}  {frame.filename}:{frame.lineno}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", choices=["json", "xml"], default="json")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ack-delay", type=float, default=0.05)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--spool", action="store_true", help="parse the body back from a spool file")
    parser.add_argument("--allocator", choices=["unit", "default"], default="unit",
                        help="unit (the default): with the systemd unit's environment, glibc's tuning"
                             " among it, as the daemon runs; default: glibc as it comes")
    args = parser.parse_args()
    wanted = unit_environment() if args.allocator == "unit" else {}
    if args.allocator == "default":
        wanted = {name: "" for name in os.environ if name.startswith("MALLOC_")}
    if any(os.environ.get(name, "") != value for name, value in wanted.items()):
        # glibc reads its tuning at start-up: the process starts again with it.
        env = {**os.environ, **wanted}
        env = {name: value for name, value in env.items() if value or not name.startswith("MALLOC_")}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    tuning = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    print(f"allocator: {args.allocator} ({tuning or 'glibc as it comes'})")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
