"""The naive baseline, written as a typical script would be, against the daemon, both with 20 ms of
simulated API latency, in the same run.

    .venv/bin/python bench/naive.py [--accounts 1000] [--naive-accounts 300] [--latency 0.02] [--out FILE]

The script: `requests` (one keep-alive Session) with the signer's own requests helper
(`oauth1.oauth_ext.OAuth1RSA`, mastercard-oauth1-signer), one account after another; the JSON parsed
with `json.loads`; the last balance kept in a dict; a `balance.changed`-like event for every change,
each sent with a producer call that waits for its acknowledgement (aiokafka's `send_and_wait` through
a sync wrapper on a background event loop: what kafka-python's `send(...).get()` does).

Latency: every account gets a persistent `delay` fault in the sandbox (delay_seconds = --latency), so
every answer is held back that long, for the script and the daemon alike. The sandbox moves every
balance each second, so every poll of either sees a change and publishes one event (the daemon also
publishes the example rules' alerts). The daemon: per-account source, max_concurrency 64; its steady
rounds (2 and 3) are compared with the script's polls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CONSUMER_KEY,
    Daemon,
    Env,
    account_urls,
    dump,
    free_port,
    load_key,
    log,
    mastercard_source,
    round_window,
    signing_variants,
    tokens,
    write_config,
)


class SyncProducer:
    """A blocking producer: send() returns once Kafka acknowledged the record."""

    def __init__(self, bootstrap: str) -> None:
        from aiokafka import AIOKafkaProducer

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> Any:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            return producer

        self._producer = self._run(make())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self._run(self._producer.send_and_wait(topic, value=value, key=key))

    def close(self) -> None:
        self._run(self._producer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


def naive_script(urls: list[str], key: Any, bootstrap: str, topic: str) -> dict[str, Any]:
    """The typical script, timed."""
    import requests
    from oauth1.oauth_ext import OAuth1RSA

    auth = OAuth1RSA(CONSUMER_KEY, key)
    session = requests.Session()
    producer = SyncProducer(bootstrap)
    last: dict[str, tuple[str, str]] = {}
    events = 0
    started = time.perf_counter()
    cpu0 = time.process_time()
    for url in urls:
        response = session.get(url, auth=auth, headers={"Accept": "application/json"}, timeout=30)
        response.raise_for_status()
        account = response.json()["account_balances"]["account_balance"]
        token = account["non_card_token"]
        balance = (account["balance"]["amount"], account["balance"]["state"])
        if last.get(token) != balance:
            last[token] = balance
            event = {"type": "balance.changed", "account": token, "amount": balance[0], "state": balance[1],
                     "currency": account["balance"]["currency"], "observed_at": time.time()}
            producer.send(topic, token.encode(), json.dumps(event).encode())
            events += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    producer.close()
    return {"polls": len(urls), "events": events, "seconds": round(elapsed, 3),
            "polls_per_s": round(len(urls) / elapsed, 2),
            "cpu_s_per_1000_polls": round(1000 * cpu / len(urls), 3)}


def measure(env: Env, accounts: int, naive_accounts: int, latency: float, rounds: int = 3,
            signing: str | None = None) -> dict[str, Any]:
    variant = "" if signing is None else f"signing.{signing}"
    sandbox = env.sandbox(accounts, 1.0)
    try:
        names = tokens(accounts)
        log(f"naive: {accounts} persistent delay faults of {latency * 1000:.0f} ms")
        sandbox.add_delay(names, latency)
        key = load_key(env)
        log(f"naive: the script over {naive_accounts} accounts")
        env.fresh_broker()
        naive = naive_script(account_urls(sandbox, names[:naive_accounts]), key, env.broker.bootstrap_servers,
                             "naive-changes")
        log(f"naive: {naive}")
        folder = env.folder("naive-daemon" + (f"-{variant}" if variant else ""))
        port = free_port()
        source = mastercard_source(env, sandbox, accounts=names, interval="1s", max_concurrency=64)
        env.fresh_broker()
        config, _topics = write_config(folder, env, source, metrics_port=port,
                                       signing=signing)
        daemon = Daemon(config, metrics_port=port)
        try:
            lines = daemon.wait_for_rounds(rounds, timeout=1800)[:rounds]
            total = sum(int(line["events"]) for line in lines)
            daemon.wait_published(total, timeout=600, period=0.2)
        finally:
            daemon.stop()
        per_round = []
        for line in lines:
            start, end = round_window(line)
            per_round.append(round(int(line["calls"]) / (end - start), 1))
        steady = per_round[1:] or per_round
        daemon_rate = sum(steady) / len(steady)
        return {
            "latency_s": latency,
            "accounts": accounts,
            "variant": variant,
            "naive": naive,
            "daemon_polls_per_s_rounds": per_round,
            "daemon_polls_per_s": round(daemon_rate, 1),
            "ratio": round(daemon_rate / naive["polls_per_s"], 1),
        }
    finally:
        sandbox.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000, help="accounts the daemon polls")
    parser.add_argument("--naive-accounts", type=int, default=300, help="accounts the script polls")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--signing-threads", type=int, action="append", default=[],
                        help="also run the daemon with [signing] threads = N (repeatable)")
    parser.add_argument("--signing-processes", type=int, action="append", default=[],
                        help="also run the daemon with [signing] processes = N (repeatable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with Env.start() as env:
        results = [measure(env, args.accounts, args.naive_accounts, args.latency)]
        for signing in signing_variants(args.signing_threads, args.signing_processes):
            results.append(measure(env, args.accounts, args.naive_accounts, args.latency,
                                   signing=signing))
    dump({"naive": results}, args.out)
    for r in results:
        print(f"{r['latency_s'] * 1000:.0f} ms latency {r['variant'] or 'as is':<30}: naive "
              f"{r['naive']['polls_per_s']} polls/s, daemon {r['daemon_polls_per_s']} polls/s, "
              f"ratio {r['ratio']}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
