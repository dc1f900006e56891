"""Per-account polling's memory, in process: peak RSS (VmHWM) of each round of polling N accounts one by
one, and what the state of N accounts holds.

    .venv/bin/python bench/per_account_memory.py [--accounts 100000] [--rounds 3] [--hot-keys N] [--trace]

No broker, no sandbox process, no HTTP: the real state store (SQLite, in a temporary folder), the real
poller and rules (rules.example.toml), the real alert clock, the Mastercard single-account parser on the
body the sandbox renders for an account (its token and amount put in), and an outbox relay whose "Kafka"
acknowledges each batch after --ack-delay seconds. The clock is simulated, in the daemon benchmark's
shape (bench/per_account.py at 100,000 accounts): a round lasts --round-minutes, longer than the example
rules' two-minute stale `after`, so between two polls of an account its stale alert fires (the alert
clock ticks every simulated 10 s) and the next poll resolves it; every poll sees a new amount.

Round 1 is first sight. The peak of each round is measured alone (VmHWM reset before it), with the
records read back from disk (beyond --hot-keys, see watcher/disk_records.py); `--trace` adds tracemalloc
(slow): traced memory after each round and the largest allocation sites still alive.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from listing_memory import Kafka, measured_round, print_traced, status  # noqa: E402
from unit_env import unit_environment  # noqa: E402

from rules.loader import load_rule_files  # noqa: E402
from rules.types import BalanceKey, KnownBalance  # noqa: E402
from watcher.alerting import AlertClock  # noqa: E402
from watcher.app import Components  # noqa: E402
from watcher.config import StateConfig  # noqa: E402
from watcher.poller import OutboxDelivery, Poller, RulesHolder  # noqa: E402
from watcher.relay import OutboxRelay  # noqa: E402
from watcher.sources.base import FetchResult  # noqa: E402
from watcher.sources.mastercard import ListingKeys, parse_mastercard_json  # noqa: E402
from watcher.store import StateStore  # noqa: E402

T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
TOKEN = b"non_card_token:sbx-bench-0001"
AMOUNT = b"24031.62"


def account_body() -> bytes:
    """The sandbox's answer for one account (made in a child process: the sandbox's world stays there)."""
    script = f"""
import sys, time
from datetime import UTC, datetime
from watcher.sandbox.mastercard import render_json, view_of
from watcher.sandbox.world import World
world = World(seed=7, accounts_per_partner=1, mypos_accounts=0, tick_seconds=0, clock=time.monotonic,
              wall_clock=lambda: datetime.now(UTC), mypos_seed_body=b"")
account = world.mastercard_accounts("bench")[0]
assert account.non_card_token.encode() == {TOKEN!r}
sys.stdout.buffer.write(render_json([view_of(account)], listing=False))
"""
    body = subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, capture_output=True).stdout
    assert TOKEN in body, body
    assert AMOUNT in body, body
    return body


class Clock:
    """Simulated time: each call to `fetch` moves it on by one poll's share of the round."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Source:
    """The Mastercard single-account endpoint's parse on the sandbox's body, as MastercardSendSource.fetch
    does it after the read; every call answers a new amount."""

    name = "mc-bench"
    provider = "mastercard-send"
    max_concurrency = 64

    def __init__(self, tokens: Sequence[str], clock: Clock, step: timedelta) -> None:
        self._tokens = tokens
        self._template = account_body()
        self._clock = clock
        self._step = step
        self._calls = 0
        # The fixed keys and the known look-up, as MastercardSendSource holds them for single-account calls.
        self._keys = ListingKeys.of_accounts(self.name, tokens)

    def targets(self) -> Sequence[str]:
        return self._tokens

    def share_known(self, known: Callable[[BalanceKey], KnownBalance | None]) -> None:
        self._keys.known = known

    async def fetch(self, target: str) -> FetchResult:
        started = time.monotonic()
        self._calls += 1
        self._clock.now += self._step
        amount = b"%d.%02d" % (10_000 + self._calls % 7919, self._calls % 100)
        body = self._template.replace(TOKEN, target.encode()).replace(AMOUNT, amount)  # a new body, as a read
        correlation = f"corr-{self._calls}"  # a new string per call, as the header's value is
        parsed = parse_mastercard_json(body, source=self.name, observed_at=self._clock(),
                                       correlation_id=correlation, keys=self._keys)
        return FetchResult(self.name, target, "ok", correlation, observations=parsed.observations,
                           rejected=parsed.rejected, http_status=200, duration_s=time.monotonic() - started)


async def run(args: argparse.Namespace) -> None:
    tokens = [f"non_card_token:sbx-bench-{i:04d}" for i in range(1, args.accounts + 1)]
    clock = Clock()
    round_span = timedelta(minutes=args.round_minutes)
    source = Source(tokens, clock, round_span / args.accounts)
    folder = Path(tempfile.mkdtemp(prefix="per-account-memory-", dir=ROOT / "bench" / ".work"))
    store = StateStore(folder / "state.db", outbox_limit=10_000_000, hot_keys=args.hot_keys)
    await store.open()
    relay = OutboxRelay(store, Kafka(args.ack_delay), batch_size=1000)  # type: ignore[arg-type]
    relay_task = asyncio.create_task(relay.run())
    rules = RulesHolder(load_rule_files([ROOT / "rules.example.toml"]).rules)
    lock = asyncio.Lock()
    delivery = OutboxDelivery(store, relay.wake)
    poller = Poller(source, store, delivery, rules, clock, lock)
    components = SimpleNamespace(
        settings=SimpleNamespace(sources=[SimpleNamespace(name=source.name, type=source.provider)]),
        store=store, lock=lock, rules=rules, delivery=delivery,
    )
    alert_clock = AlertClock(cast(Components, components), clock)
    ticks = 0

    async def tick_every_10s() -> None:
        """The daemon's alert clock, every 10 simulated seconds (its default tick) while polls run."""
        nonlocal ticks
        due = T0
        while True:
            if clock.now >= due:
                await alert_clock.tick()
                ticks += 1
                due = clock.now + timedelta(seconds=10)
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(tick_every_10s())
    gc.collect()
    print(f"{args.accounts} accounts, a round {args.round_minutes} simulated minutes, {args.hot_keys} hot"
          f" keys; before round 1: RSS {status()['VmRSS']:.1f} MiB")
    if args.trace:
        tracemalloc.start()
    for round_no in range(1, args.rounds + 1):
        reads = store.disk_reads
        summary, wall, cpu, now = await measured_round(poller, store, trace=args.trace)
        print(f"round {round_no}: {wall:.2f} s ({cpu:.2f} CPU s), {summary.events} events, {ticks} ticks so "
              f"far, {store.disk_reads - reads} records read back from disk; peak RSS {now['VmHWM']:.1f} MiB,"
              f" RSS after {now['VmRSS']:.1f} MiB")
        if args.trace:
            print_traced(args.sites)
    ticking.cancel()
    relay.stop()
    relay.wake()
    relay_task.cancel()
    await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-minutes", type=float, default=8.0,
                        help="simulated length of a round (the daemon bench's at 100,000: ~8 minutes)")
    parser.add_argument("--ack-delay", type=float, default=0.05)
    parser.add_argument("--hot-keys", type=int, default=StateConfig().hot_keys,
                        help="the store's limit of unpacked keys ([state] hot_keys; default: the daemon's)")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--sites", type=int, default=20, help="allocation sites to show with --trace")
    args = parser.parse_args()
    wanted = unit_environment()
    if any(os.environ.get(name, "") != value for name, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})  # glibc's tuning
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
