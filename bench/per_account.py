"""Per-account signed polls: the real daemon against the real sandbox and broker, and the floor.

    .venv/bin/python bench/per_account.py --accounts 1000 10000 [100000] [--profile] [--out FILE]

For each N: a sandbox with N accounts (balances move every --tick seconds, so every poll of a steady
round sees a change and publishes an event: the heavy case), then
  1. the floor: a bare loop of signed aiohttp GETs of the same N URLs, 64 in flight, signing in the
     event loop, no parsing, no rules, no Kafka (and, for reference, signing on 2 threads, and by one
     signing process as the daemon's `[signing] processes = 1` does: the bound of any daemon that signs
     that way on this machine);
  2. the daemon (`python -m watcher run`), one Mastercard source with non_card_tokens = the N tokens,
     max_concurrency 64, rate limit 10,000/s, the example rules; rounds back to back (interval 1s).
     Round 1 sees every account for the first time; rounds 2.. are the steady state.
Per round: calls / round duration (the round's log line: request, parse, compare, rules, state write
into the outbox), the time until Kafka acknowledged the round's last event (/metrics,
events_published_total, sampled every 200 ms; approximate, as the alert clock's own events count
there too), CPU seconds of the daemon per 1,000 polls (from
/proc/PID/stat, sampled every 50 ms), and the daemon's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CpuSampler,
    Daemon,
    Env,
    PublishedSampler,
    account_urls,
    dump,
    free_port,
    load_key,
    log,
    mastercard_source,
    round_window,
    signed_floor,
    signing_variants,
    start_profile,
    summarise_profile,
    tokens,
    write_config,
)


def measure(env: Env, accounts: int, *, rounds: int, tick: float, log_level: str, profile: bool,
            floor_threads: bool = True, signing: str | None = None,
            floor: dict[str, Any] | None = None, patches: Sequence[str] = (),
            broker_pause: float = 0.0) -> dict[str, Any]:
    variant = "" if signing is None else f"signing.{signing}"
    sandbox = env.sandbox(accounts, tick)
    # The sandbox shares the two cores: its CPU per request says how much of them is left for us.
    sandbox_cpu = CpuSampler(sandbox.process.pid).__enter__()
    try:
        names = tokens(accounts)
        urls = account_urls(sandbox, names)
        key = load_key(env)
        def bare_floor(how: str, **signing: int) -> dict[str, Any]:
            """The bare signed loop over the N URLs, with the sandbox's CPU per call meanwhile."""
            log(f"N={accounts}: floor, signing {how}")
            started = time.time()
            result = asyncio.run(signed_floor(urls, key, **signing))
            result["sandbox_cpu_s_per_1000_calls"] = round(
                1000 * sandbox_cpu.cpu_between(started, time.time()) / result["calls"], 3)
            return result

        if floor is None:
            floor = bare_floor("in the event loop (64 in flight)")
        floor_threads_result = floor_process_result = None
        if floor_threads:
            floor_threads_result = bare_floor("on 2 threads", sign_in_threads=2)
            floor_process_result = bare_floor("by one signing process", sign_in_processes=1)
        folder = env.folder(f"per-account-{accounts}" + (f"-{variant}" if variant else ""))
        port = free_port()
        broker = env.fresh_broker()
        broker_cpu = CpuSampler(broker.process.pid).__enter__()
        config, _topics = write_config(
            folder, env,
            mastercard_source(env, sandbox, accounts=names, interval="1s", max_concurrency=64),
            log_level=log_level, metrics_port=port, signing=signing,
        )
        log(f"N={accounts}: daemon, {rounds} rounds, {variant or 'as configured by default'}")
        daemon = Daemon(config, metrics_port=port, patches=patches)
        try:
            published = None
            profiler = None
            prof_path = folder / "profile.txt"
            while True:
                try:
                    daemon.events_published()
                    break
                except OSError:
                    if daemon.process.poll() is not None:
                        raise RuntimeError(f"daemon exited: {daemon.lines()[-5:]}") from None
                    time.sleep(0.05)
            published = PublishedSampler(daemon)
            lines = daemon.wait_for_rounds(1, timeout=3600)
            if broker_pause:
                # Kafka lagging: the broker stopped (SIGSTOP) for a while after the first round, while
                # the daemon polls on and its outbox grows; then it answers again and the relay catches up.
                log(f"N={accounts}: broker paused for {broker_pause:.0f} s")
                os.kill(broker.process.pid, signal.SIGSTOP)
                try:
                    time.sleep(broker_pause)
                finally:
                    os.kill(broker.process.pid, signal.SIGCONT)
            if profile:
                # The steady rounds: from now for about one round's duration.
                duration = float(lines[0]["duration_ms"]) / 1000
                profiler = start_profile(daemon.pid, prof_path, max(5.0, duration))
            lines = daemon.wait_for_rounds(rounds, timeout=3600)[:rounds]
            total_events = sum(int(line["events"]) for line in lines)
            last_ack = published.wait_for(total_events, timeout=3600)
            if profiler is not None:
                profiler.wait(timeout=600)
            peak_rss = daemon.peak_rss_mib()
            per_round = []
            cumulative = 0
            for line in lines:
                start, end = round_window(line)
                cumulative += int(line["events"])
                acked = published.when_reached(cumulative) or last_ack
                calls = int(line["calls"])
                cpu = daemon.sampler.cpu_between(start, end)
                cpu_sandbox = sandbox_cpu.cpu_between(start, end)
                cpu_broker = broker_cpu.cpu_between(start, end)
                per_round.append({
                    "calls": calls,
                    "outcomes": line["outcomes"],
                    "events": int(line["events"]),
                    "round_s": round(end - start, 3),
                    "polls_per_s": round(calls / (end - start), 1),
                    "acked_after_round_end_s": round(max(0.0, acked - end), 3),
                    "polls_per_s_to_last_ack": round(calls / (max(acked, end) - start), 1),
                    "cpu_s_per_1000_polls": round(1000 * cpu / calls, 3),
                    "sandbox_cpu_s_per_1000_polls": round(1000 * cpu_sandbox / calls, 3),
                    "broker_cpu_s_per_1000_polls": round(1000 * cpu_broker / calls, 3),
                })
            steady = per_round[1:] or per_round
            best = max(r["polls_per_s"] for r in steady)
            mean = sum(r["polls_per_s"] for r in steady) / len(steady)
            result: dict[str, Any] = {
                "accounts": accounts,
                "variant": variant,
                "tick_s": tick,
                "log_level": log_level,
                "floor": floor,
                "floor_sign_2_threads": floor_threads_result,
                "floor_sign_1_process": floor_process_result,
                "rounds": per_round,
                "steady_polls_per_s": round(mean, 1),
                "steady_polls_per_s_best": best,
                "first_sight_polls_per_s": per_round[0]["polls_per_s"],
                "ratio_to_floor": round(mean / floor["per_s"], 3),
                "cpu_s_per_1000_polls": round(
                    sum(r["cpu_s_per_1000_polls"] for r in steady) / len(steady), 3
                ),
                "floor_cpu_s_per_1000_calls": round(1000 * floor["cpu_s"] / floor["calls"], 3),
                "sandbox_cpu_s_per_1000_polls": round(
                    sum(r["sandbox_cpu_s_per_1000_polls"] for r in steady) / len(steady), 3),
                "broker_cpu_s_per_1000_polls": round(
                    sum(r["broker_cpu_s_per_1000_polls"] for r in steady) / len(steady), 3),
                "peak_rss_mib": round(peak_rss, 1),
                "signing_processes_peak_rss_mib": round(daemon.signing_processes_peak_rss_mib(), 1),
            }
            if profiler is not None and prof_path.exists():
                result["profile"] = summarise_profile(prof_path)
                result["profile_file"] = str(prof_path)
        finally:
            if published is not None:
                published.stop()
            daemon.stop()
            broker_cpu.stop()
        result["daemon_cpu_user_s"] = getattr(daemon, "cpu_user_s", None)
        result["daemon_cpu_sys_s"] = getattr(daemon, "cpu_sys_s", None)
        return result
    finally:
        sandbox_cpu.stop()
        sandbox.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per N (the first is first sight)")
    parser.add_argument("--tick", type=float, default=1.0, help="sandbox seconds between balance moves")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--profile", action="store_true", help="py-spy the steady rounds")
    parser.add_argument("--signing-threads", type=int, action="append", default=[],
                        help="also run the daemon with [signing] threads = N (0: sign on the event loop; "
                             "repeatable: one extra run each)")
    parser.add_argument("--signing-processes", type=int, action="append", default=[],
                        help="also run the daemon with [signing] processes = N (repeatable)")
    parser.add_argument("--patches", default="",
                        help="patched_daemon.py patches for the daemon, comma-separated")
    parser.add_argument("--broker-pause", type=float, default=0.0,
                        help="stop the broker for this many seconds after the first round (Kafka lagging)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    patches = [name for name in args.patches.split(",") if name]
    with Env.start() as env:
        results = []
        for n in args.accounts:
            results.append(measure(env, n, rounds=args.rounds, tick=args.tick, log_level=args.log_level,
                                   profile=args.profile, patches=patches, broker_pause=args.broker_pause))
            for signing in signing_variants(args.signing_threads, args.signing_processes):
                results.append(measure(env, n, rounds=args.rounds, tick=args.tick, log_level=args.log_level,
                                       profile=args.profile, floor_threads=False, signing=signing,
                                       floor=results[-1]["floor"], patches=patches,
                                       broker_pause=args.broker_pause))
    dump({"per_account": results}, args.out)
    for r in results:
        label = r["variant"] or "as is"
        print(f"N={r['accounts']:>7} {label:<30}: daemon {r['steady_polls_per_s']:>7.1f} polls/s "
              f"(first sight "
              f"{r['first_sight_polls_per_s']:.1f}), floor {r['floor']['per_s']:.1f}/s, ratio "
              f"{r['ratio_to_floor']:.2f}, {r['cpu_s_per_1000_polls']:.2f} CPU s/1000 polls (sandbox "
              f"{r['sandbox_cpu_s_per_1000_polls']:.2f}, broker {r['broker_cpu_s_per_1000_polls']:.2f}), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        if r["variant"]:
            continue  # its floors are the run's as is, printed there
        for name, label in (("floor", "in the loop"), ("floor_sign_2_threads", "on 2 threads"),
                            ("floor_sign_1_process", "by 1 process")):
            bare = r[name]
            if bare:
                print(f"N={r['accounts']:>7} floor, signing {label:<15}: {bare['per_s']:>7.1f} calls/s, "
                      f"{1000 * bare['cpu_s'] / bare['calls']:.2f} CPU s/1000 calls (sandbox "
                      f"{bare['sandbox_cpu_s_per_1000_calls']:.2f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
