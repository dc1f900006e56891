"""The partner-wide listing (`account-balances`, every account in one response), JSON and XML.

    .venv/bin/python bench/listing.py [--accounts 100000] [--formats json xml] [--profile] [--out FILE]

A static sandbox (tick 0) with N accounts of one partner; the daemon polls the listing every
--interval seconds. Round 1 is the first sight: every account is new, N `balance.changed` events (and
the alerts the example rules fire) go through the outbox to Kafka. Before each later round, 1 % of the
accounts (every 100th, all "Main prefunding" GBP accounts, kept away from every threshold) are moved
through the sandbox's control API: the steady state.

Figures per format:
  fetch_s         a bare signed GET of the listing, body read (the sandbox renders it): the HTTP part
  round_s         the daemon's round, from its log line: fetch, parse, compare, evaluate, state + outbox
  processing_s    round_s - fetch_s: parse, compare and evaluate (and the state write)
  first sight:    also the time from the round's start until Kafka acknowledged its last event
                  (/metrics events_published_total, sampled every 200 ms). Not for later rounds: the
                  alert clock's own events (`for` durations ending) are counted there too.
  peak_rss_mib    the daemon's VmHWM with N accounts tracked
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Daemon,
    Env,
    PublishedSampler,
    Sandbox,
    dump,
    free_port,
    listing_url,
    load_key,
    log,
    mastercard_source,
    round_window,
    signed_floor,
    start_profile,
    summarise_profile,
    token,
    write_config,
)


def fetch_time(sandbox: Sandbox, env: Env, fmt: str, times: int = 3) -> float:
    key = load_key(env)
    accept = "application/xml" if fmt == "xml" else "application/json"
    seconds = [
        asyncio.run(signed_floor([listing_url(sandbox)], key, concurrency=1, accept=accept))["seconds"]
        for _ in range(times)
    ]
    return min(seconds)


_generation = 0


def changes_for(accounts: int) -> list[tuple[str, str]]:
    """1 % of the accounts: every 100th (index % 5 == 0: "Main prefunding", about 24,000 GBP), each time
    to amounts not used before."""
    global _generation
    _generation += 1
    return [(token(i), f"{24000 + _generation * 7 + (i % 97) / 100:.2f}") for i in range(0, accounts, 100)]


def measure(env: Env, sandbox: Sandbox, fmt: str, *, accounts: int, interval: float, rounds: int,
            profile: bool, patches: Sequence[str] = ()) -> dict[str, Any]:
    fetch_s = fetch_time(sandbox, env, fmt)
    log(f"listing {fmt}: bare signed fetch of {accounts} accounts {fetch_s:.2f}s")
    folder = env.folder(f"listing-{fmt}")
    port = free_port()
    source = mastercard_source(env, sandbox, name=f"mc-list-{fmt}", fmt=fmt, interval=f"{interval}s",
                               timeout="120s")
    env.fresh_broker()
    config, _topics = write_config(folder, env, source, metrics_port=port)
    memory_file = folder / "memory.txt"
    daemon = Daemon(config, metrics_port=port, patches=patches,
                    extra_env={"BENCH_MEMORY_FILE": str(memory_file)})
    published = None
    try:
        while True:
            try:
                daemon.events_published()
                break
            except OSError:
                if daemon.process.poll() is not None:
                    raise RuntimeError(f"daemon exited: {daemon.lines()[-5:]}") from None
                time.sleep(0.05)
        published = PublishedSampler(daemon)
        first = daemon.wait_for_rounds(1, timeout=1800)[0]
        # The next round's changes go in at once, well before its start (--interval is long enough).
        changed = changes_for(accounts)
        asyncio.run(sandbox.set_balances(changed))
        start, end = round_window(first)
        acked = published.wait_for(int(first["events"]), timeout=1800)
        result: dict[str, Any] = {
            "format": fmt,
            "accounts": accounts,
            "fetch_s": round(fetch_s, 3),
            "first_sight": {
                "events": int(first["events"]),
                "observations": int(first["observations"]),
                "round_s": round(end - start, 3),
                "processing_s": round(end - start - fetch_s, 3),
                "to_last_ack_s": round(acked - start, 3),
                "cpu_s": round(daemon.sampler.cpu_between(start, acked), 2),
            },
        }
        log(f"listing {fmt}: first sight {result['first_sight']}")
        steady = []
        profiler = None
        prof_path = folder / "profile.txt"
        for round_no in range(2, rounds + 1):
            if profile and profiler is None:
                profiler = start_profile(daemon.pid, prof_path, interval)
            line = daemon.wait_for_rounds(round_no, timeout=1800)[round_no - 1]
            now_changed = len(changed)
            if round_no < rounds:
                changed = changes_for(accounts)
                asyncio.run(sandbox.set_balances(changed))
            start, end = round_window(line)
            steady.append({
                "changed": now_changed,
                "events": int(line["events"]),
                "round_s": round(end - start, 3),
                "processing_s": round(end - start - fetch_s, 3),
                "cpu_s": round(daemon.sampler.cpu_between(start, end), 2),
            })
            log(f"listing {fmt}: steady round {steady[-1]}")
        result["steady"] = steady
        result["steady_round_s"] = round(statistics.median(s["round_s"] for s in steady), 3)
        result["steady_processing_s"] = round(statistics.median(s["processing_s"] for s in steady), 3)
        result["peak_rss_mib"] = round(daemon.peak_rss_mib(), 1)
        if memory_file.exists():
            result["memory_file"] = str(memory_file)
        if profiler is not None:
            profiler.wait(timeout=600)
            if prof_path.exists():
                result["profile"] = summarise_profile(prof_path)
                result["profile_file"] = str(prof_path)
        return result
    finally:
        if published is not None:
            published.stop()
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--formats", nargs="+", default=["json", "xml"])
    parser.add_argument("--interval", type=float, default=45.0,
                        help="seconds between the daemon's rounds: more than a first-sight round takes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per format, the first is first sight")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--patch", action="append", default=[],
                        help="run the daemon with this bench/patched_daemon.py patch (repeatable), e.g."
                             " trace-memory (written to memory.txt in the format's work folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with Env.start() as env:
        sandbox = env.sandbox(args.accounts, 0.0)
        results = [
            measure(env, sandbox, fmt, accounts=args.accounts, interval=args.interval, rounds=args.rounds,
                    profile=args.profile, patches=args.patch)
            for fmt in args.formats
        ]
    dump({"listing": results}, args.out)
    for r in results:
        print(f"listing {r['format']} N={r['accounts']}: first sight {r['first_sight']['round_s']:.2f}s "
              f"(to last ack {r['first_sight']['to_last_ack_s']:.2f}s), steady {r['steady_round_s']:.2f}s "
              f"(fetch {r['fetch_s']:.2f}s, processing {r['steady_processing_s']:.2f}s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
