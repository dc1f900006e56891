"""The sandbox's world alone, in process: what its accounts cost to create, hold, move and read.

    .venv/bin/python bench/sandbox_world.py [--accounts 100000] [--repeats 5]

One partner of N accounts (watcher/sandbox/world.py), as `balance-watcher sandbox --accounts N` holds
them: CPU seconds to create them (the first request for the partner), the RSS they add, the CPU of one
tick (`advance(1)`, what the sandbox spends each `--tick` seconds), and of reading every amount, and every
account as a listing does (`view_of`: amount, state, timestamp). Reads and ticks: the best of --repeats,
each at a new tick.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import proc_status  # noqa: E402

from watcher.sandbox.mastercard import view_of  # noqa: E402
from watcher.sandbox.world import World  # noqa: E402


def rss_mib() -> float:
    """This process's resident set now, MiB."""
    return proc_status(os.getpid())["VmRSS"] / 1024


def cpu(action: Callable[[], object]) -> float:
    """CPU seconds of one call."""
    started = time.process_time()
    action()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    world = World(seed=1, accounts_per_partner=args.accounts, mypos_accounts=0, tick_seconds=1,
                  clock=time.monotonic, wall_clock=lambda: datetime.now(UTC), mypos_seed_body=b"")
    before = rss_mib()
    created = cpu(lambda: world.mastercard_accounts("P1"))
    held = rss_mib() - before
    accounts = world.mastercard_accounts("P1")

    def best(action: Callable[[], object]) -> float:
        timings = []
        for _ in range(args.repeats):
            world.advance(1)
            timings.append(cpu(action))
        return min(timings)

    tick = min(cpu(lambda: world.advance(1)) for _ in range(args.repeats))
    amounts = best(lambda: [account.balance.amount for account in accounts])
    views = best(lambda: [view_of(account) for account in accounts])
    per = 1e6 / len(accounts)
    print(f"{args.accounts:,} accounts: created in {created:.2f} CPU s, holding {held:.0f} MiB of RSS")
    print(f"advance(1): {tick * 1e3:.3f} CPU ms")
    print(f"every amount read: {amounts:.3f} CPU s ({amounts * per:.2f} us each)")
    print(f"every account viewed (view_of): {views:.3f} CPU s ({views * per:.2f} us each)")


if __name__ == "__main__":
    main()
