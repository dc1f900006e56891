"""The real daemon (`watcher.cli.main`) with measuring hooks applied in memory (nothing under watcher/ is
edited), and a place for experiments: a patch measures what a change would gain before anyone makes it.

    .venv/bin/python bench/patched_daemon.py PATCHES run -c CONFIG

PATCHES is a comma-separated list (or "none"):
  trace-latency  records, for every event, its ce_time, the wall time of its Kafka acknowledgement, its
                 type, its key, and the wall times it became durable in the outbox (the group commit
                 done) and was appended to the producer (in $BENCH_LATENCY_FILE); measures, changes
                 nothing

The patches this script carried before (sign-threads, sync-normal, unlocked, listing-limit) measured
changes that are now made in watcher/ itself: `[signing] threads`, the group commit with
synchronous=NORMAL, and the source's `max_listing_bytes` (see bench/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def patch_trace_latency() -> None:
    """Append `ce_id ce_time ack_wall_time` to $BENCH_LATENCY_FILE for every record Kafka acknowledges:
    the producer's per-record delivery future resolves when the broker's acks=all answer arrives."""
    import os
    import time as _time

    from watcher.publisher import KafkaPublisher
    from watcher.store import StateStore

    out = open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1 << 16)  # noqa: SIM115
    real_send = KafkaPublisher.send
    real_remember = StateStore._remember
    durable_at: dict[str, float] = {}  # ce_id -> when its group commit completed

    def remember(self: StateStore, entries: Any) -> None:
        now = _time.time()
        for entry in entries:
            durable_at[entry.ce_id] = now
        real_remember(self, entries)

    StateStore._remember = remember  # type: ignore[method-assign]

    async def send(self: KafkaPublisher, entries: Any) -> None:
        producer = self._producer
        real = producer.send

        async def traced(topic: str, **kwargs: Any) -> Any:
            appended = _time.time()
            future = await real(topic, **kwargs)
            headers = dict(kwargs.get("headers") or ())
            ce_id = headers.get("ce_id", b"").decode()
            ce_time = headers.get("ce_time", b"").decode()
            ce_type = headers.get("ce_type", b"").decode() or "-"
            key = (kwargs.get("key") or b"-").decode()
            durable = durable_at.pop(ce_id, 0.0)  # 0: read from the table (after a restart)

            def done(f: Any) -> None:
                if not f.cancelled() and f.exception() is None:
                    out.write(f"{ce_id} {ce_time} {_time.time():.6f} {ce_type} {key} {durable:.6f}"
                              f" {appended:.6f}\n")

            future.add_done_callback(done)
            return future

        producer.send = traced
        try:
            await real_send(self, entries)
        finally:
            del producer.send
            out.flush()

    KafkaPublisher.send = send  # type: ignore[method-assign]


PATCHES = {
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
