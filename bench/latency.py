"""Latency from the moment a response arrives to the Kafka acknowledgement of its events, p50 and p99.

    .venv/bin/python bench/latency.py [--rates 250 500] [--seconds 20] [--signing-threads N] [--patch P]
                                      [--out FILE]

The daemon polls N = rate x seconds accounts one by one, its rate limit set to `rate` polls per second
(max_requests_per_second), 64 in flight; the sandbox moves every balance each second, so every poll
publishes a `balance.changed` event (and some alerts). Two rounds: first sight, then steady.

Method. An event's `ce_time` is the observation time: the daemon's clock read right after the
response body arrived, before it is parsed (watcher/sources/mastercard.py, `observed_at`). The end is
the Kafka acknowledgement (acks=all) of that record:
  ack      the daemon runs with bench/patched_daemon.py's `trace-latency` hook, which adds a callback to
           the producer's per-record delivery future and writes `ce_id ce_time ack_time` for every
           record; this changes nothing in the daemon's behaviour (one line written per record).
  append   cross-check from outside: every record is read back from the broker, and its record
           timestamp (CreateTime, stamped by the producer when the record is appended to its batch;
           the broker keeps it) minus ce_time is the part up to the producer, without the broker's
           round trip.
Same host, same clock: no clock skew. Also reported: the polls per second actually reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Daemon,
    Env,
    dump,
    free_port,
    log,
    mastercard_source,
    percentile,
    read_topics,
    round_window,
    signing_variants,
    tokens,
    write_config,
)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stats_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2) if ms else float("nan")}


def stall_summary(path: Path, start: float, end: float) -> dict[str, Any]:
    """What held the loop in [start, end]: loop lags over 10 ms, collections by generation, group
    commits (from bench/patched_daemon.py's trace-stalls)."""
    lags: list[float] = []
    gcs: dict[str, list[float]] = {"0": [], "1": [], "2": []}
    writes: list[float] = []
    for row in path.read_text().splitlines() if path.exists() else []:
        kind, at, *rest = row.split()
        if not start <= float(at) <= end:
            continue
        if kind == "lag":
            lags.append(float(rest[0]))
        elif kind == "gc":
            gcs[rest[0]].append(float(rest[1]))
        elif kind == "write":
            writes.append(float(rest[0]))
    return {
        "seconds": round(end - start, 1),
        "loop_lags_over_10ms": len(lags),
        "loop_lags_over_50ms": sum(1 for lag in lags if lag > 50),
        "loop_lag_max_ms": round(max(lags, default=0.0), 1),
        "loop_lag_total_ms": round(sum(lags), 1),
        "gc": {gen: {"count": len(v), "max_ms": round(max(v, default=0.0), 1), "total_ms": round(sum(v), 1)}
               for gen, v in gcs.items()},
        "group_commits": {"count": len(writes), "max_ms": round(max(writes, default=0.0), 1),
                          "p50_ms": round(percentile(writes, 50), 2) if writes else 0.0},
    }


def measure(env: Env, rate: int, seconds: float, signing: str | None = None,
            patch: str | None = None) -> dict[str, Any]:
    variant = " ".join(
        ([] if signing is None else [f"signing.{signing}"])
        + ([f"patch {patch}"] if patch else [])
    )
    accounts = max(100, int(rate * seconds))
    sandbox = env.sandbox(accounts, 1.0)
    try:
        folder = env.folder(f"latency-{rate}" + (f"-{variant.replace(' ', '-')}" if variant else ""))
        trace = folder / "latency.txt"
        port = free_port()
        source = mastercard_source(env, sandbox, accounts=tokens(accounts), interval="1s",
                                   max_concurrency=64, max_requests_per_second=rate)
        env.fresh_broker()
        config, topics = write_config(folder, env, source, metrics_port=port, signing=signing)
        log(f"latency at {rate} polls/s: {accounts} accounts, {variant or 'default settings'}")
        stalls = folder / "stalls.txt"
        patches = ("trace-latency", "trace-stalls", *([patch] if patch else []))
        daemon = Daemon(config, metrics_port=port, patches=patches,
                        extra_env={"BENCH_LATENCY_FILE": str(trace), "BENCH_STALLS_FILE": str(stalls)})
        try:
            lines = daemon.wait_for_rounds(2, timeout=1800)[:2]
            total = sum(int(line["events"]) for line in lines)
            daemon.wait_published(total, timeout=600, period=0.2)
            peak = daemon.peak_rss_mib()
        finally:
            daemon.stop()
        steady_start, steady_end = round_window(lines[1])
        acks: list[float] = []
        acks_steady: list[float] = []
        rows = [row.split() for row in trace.read_text().splitlines()]
        # The events of a response: its change events, and alerts with the same key and time (the time of
        # an event is its response's arrival). The alert clock's events (a `for` elapsed, a reminder) carry
        # the tick's time and belong to no response: counted in "all", not in "responses".
        responses = {(r[4], r[1]) for r in rows if r[3] == "balance.changed"}
        acks_responses: list[float] = []
        # Where a response's events spend the time: until durable (parse, evaluate, stage, the group
        # commit), durable until appended to the producer (the relay), appended until acknowledged.
        parts: dict[str, list[float]] = {"to_durable": [], "durable_to_append": [], "append_to_ack": []}
        for _ce_id, ce_time, acked, _ce_type, key, durable, appended in rows:
            start = _ts(ce_time)
            delta = float(acked) - start
            acks.append(delta)
            if start >= steady_start:
                acks_steady.append(delta)
                if (key, ce_time) in responses:
                    acks_responses.append(delta)
                    if float(durable) > 0:
                        parts["to_durable"].append(float(durable) - start)
                        parts["durable_to_append"].append(float(appended) - float(durable))
                        parts["append_to_ack"].append(float(acked) - float(appended))
        records = asyncio.run(read_topics(env.broker.bootstrap_servers, topics, expected=total))
        appends = [r.timestamp_ms / 1000 - _ts(r.headers["ce_time"]) for r in records
                   if _ts(r.headers["ce_time"]) >= steady_start]
        achieved = [int(line["calls"]) / (round_window(line)[1] - round_window(line)[0]) for line in lines]
        return {
            "rate_asked": rate,
            "accounts": accounts,
            "variant": variant,
            "polls_per_s_reached": [round(a, 1) for a in achieved],
            "events": total,
            "records_read_back": len(records),
            "ack_all_rounds": stats_ms(acks),
            "ack_steady_round": stats_ms(acks_steady),
            "ack_steady_round_responses": stats_ms(acks_responses),
            "producer_append_steady_round": stats_ms(appends),
            "steady_round_responses_parts": {name: stats_ms(values) for name, values in parts.items()},
            "timestamp_types": sorted({r.timestamp_type for r in records}),
            "steady_round_stalls": stall_summary(stalls, steady_start, steady_end),
            "peak_rss_mib": round(peak, 1),
            "steady_window": [steady_start, steady_end],
        }
    finally:
        sandbox.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one round")
    parser.add_argument("--signing-threads", type=int, action="append", default=[],
                        help="also run with [signing] threads = N (repeatable)")
    parser.add_argument("--signing-processes", type=int, action="append", default=[],
                        help="also run with [signing] processes = N (repeatable)")
    parser.add_argument("--patch", action="append", default=[],
                        help="also run with this bench/patched_daemon.py patch (repeatable)")
    parser.add_argument("--patch-signing-processes", type=int, default=None,
                        help="the --patch runs with [signing] processes = N")
    parser.add_argument("--patch-signing-threads", type=int, default=None,
                        help="the --patch runs with [signing] threads = N")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threads, processes = args.patch_signing_threads, args.patch_signing_processes
    patch_signing = next(iter(signing_variants([] if threads is None else [threads],
                                               [] if processes is None else [processes])), None)
    with Env.start() as env:
        results = []
        for rate in args.rates:
            results.append(measure(env, rate, args.seconds))
            for signing in signing_variants(args.signing_threads, args.signing_processes):
                results.append(measure(env, rate, args.seconds, signing))
            for patch in args.patch:
                results.append(measure(env, rate, args.seconds, patch_signing, patch=patch))
    dump({"latency": results}, args.out)
    for r in results:
        a = r["ack_steady_round"]
        print(f"{r['rate_asked']:>5}/s asked {r['variant'] or 'as is':<30} reached "
              f"{r['polls_per_s_reached']}: response->ack p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms "
              f"(to producer append p99 {r['producer_append_steady_round']['p99_ms']} ms)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
