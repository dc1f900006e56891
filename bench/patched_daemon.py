"""The real daemon (`watcher.cli.main`) with experimental patches applied in memory, to measure what a
change to watcher/ would gain before anyone makes it. Nothing under watcher/ is edited.

    .venv/bin/python bench/patched_daemon.py PATCHES run -c CONFIG

PATCHES is a comma-separated list (or "none"):
  listing-limit  the partner-wide listing's body limit raised from 32 MiB to 512 MiB
  sign-threads   OAuth1 signing on a pool of 2 threads, off the event loop (cryptography releases the
                 GIL while it signs); the header is computed just before the request is sent.
  sync-normal    the state store's SQLite with PRAGMA synchronous=NORMAL instead of FULL (WAL mode:
                 still atomic and safe against a process crash; a power loss may lose the last commits,
                 state and events together, which the next poll derives again with the same ids).
  trace-latency  records, for every event, its ce_time and the wall time of its Kafka acknowledgement
                 (in $BENCH_LATENCY_FILE); measures, changes nothing
  unlocked       Poller._process without the global evaluation lock held across the durable commit
                 (an upper bound for a per-key lock or a group commit; unsafe in general, fine for this
                 benchmark, where every call touches only its own account).
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def patch_sign_threads(threads: int = 2) -> None:
    import watcher.sources.mastercard as mastercard
    import watcher.sources.transport as transport
    from watcher.signing import authorization_header

    pool = ThreadPoolExecutor(threads, thread_name_prefix="sign")

    class Deferred(str):
        args: tuple[Any, ...] = ()

    def deferred(url: str, method: str, consumer_key: str, key: Any) -> str:
        d = Deferred("deferred")
        d.args = (url, method, consumer_key, key)
        return d

    real_get = transport.get

    async def get(session: Any, url: str, *, headers: Any, **kwargs: Any) -> Any:
        auth = headers.get("Authorization")
        if isinstance(auth, Deferred):
            headers = dict(headers)
            headers["Authorization"] = await asyncio.get_running_loop().run_in_executor(
                pool, authorization_header, *auth.args
            )
        return await real_get(session, url, headers=headers, **kwargs)

    mastercard.authorization_header = deferred  # type: ignore[assignment]
    transport.get = get  # type: ignore[assignment]


def patch_sync_normal() -> None:
    from watcher.store import StateStore

    real = StateStore._open_sync

    def open_sync(self: StateStore) -> None:
        real(self)
        assert self._db is not None
        self._db.execute("PRAGMA synchronous=NORMAL")

    StateStore._open_sync = open_sync  # type: ignore[method-assign]


def patch_unlocked() -> None:
    from watcher.poller import Poller

    async def process(self: Poller, result: Any, log: Any) -> int | None:
        return await self._assess_and_deliver(result, log)

    Poller._process = process  # type: ignore[method-assign]


def patch_trace_latency() -> None:
    """Append `ce_id ce_time ack_wall_time` to $BENCH_LATENCY_FILE for every record Kafka acknowledges:
    the producer's per-record delivery future resolves when the broker's acks=all answer arrives."""
    import os
    import time as _time

    from watcher.publisher import KafkaPublisher

    out = open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1 << 16)  # noqa: SIM115
    real_send = KafkaPublisher.send

    async def send(self: KafkaPublisher, entries: Any) -> None:
        producer = self._producer
        real = producer.send

        async def traced(topic: str, **kwargs: Any) -> Any:
            future = await real(topic, **kwargs)
            headers = dict(kwargs.get("headers") or ())
            ce_id = headers.get("ce_id", b"").decode()
            ce_time = headers.get("ce_time", b"").decode()

            def done(f: Any) -> None:
                if not f.cancelled() and f.exception() is None:
                    out.write(f"{ce_id} {ce_time} {_time.time():.6f}\n")

            future.add_done_callback(done)
            return future

        producer.send = traced
        try:
            await real_send(self, entries)
        finally:
            del producer.send
            out.flush()

    KafkaPublisher.send = send  # type: ignore[method-assign]


def patch_listing_limit() -> None:
    """The listing body limit raised from 32 MiB to 512 MiB: 100,000 accounts as the sandbox renders
    them (indented JSON, about 37 MB) are refused by the limit as it is."""
    import watcher.sources.mastercard as mastercard

    mastercard._LISTING_BODY_LIMIT = 512 * 1024 * 1024


PATCHES = {
    "listing-limit": patch_listing_limit,
    "sign-threads": patch_sign_threads,
    "sync-normal": patch_sync_normal,
    "unlocked": patch_unlocked,
    "trace-latency": patch_trace_latency,
}


def main() -> int:
    names = [n for n in sys.argv[1].split(",") if n and n != "none"]
    for name in names:
        PATCHES[name]()
    from watcher.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
