"""The real daemon (`watcher.cli.main`) with measuring hooks applied in memory (nothing under watcher/ is
edited), and a place for experiments: a patch measures what a change would gain before anyone makes it.

    .venv/bin/python bench/patched_daemon.py PATCHES run -c CONFIG

PATCHES is a comma-separated list (or "none"):
  trace-latency  records, for every event, its ce_time, the wall time of its Kafka acknowledgement, its
                 type, its key, and the wall times it became durable in the outbox (the group commit
                 done) and was appended to the producer (in $BENCH_LATENCY_FILE); measures, changes
                 nothing
  trace-stalls   event loop lags over 10 ms, garbage collections and group commit durations (in
                 $BENCH_STALLS_FILE)
  trace-handles  what fills each event loop iteration whose callbacks take over 10 ms in all: their
                 count, and the time by kind (a task's step by its coroutine and where it stopped, or
                 the callback's name), largest first (in $BENCH_HANDLES_FILE); measures, ~1 us a callback
  relay-serial   the outbox relay with one batch in flight (for comparison)
  tick-whole     the alert clock's tick over every key at once (for comparison)
  tick-250       the alert clock's slices of 250 keys, as before they were sized by time (for comparison)
  tick-budget    the alert clock's time budget per slice from $BENCH_TICK_SLICE_S (for comparison)
  gc-young       gc.set_threshold(7000, 10, 10) (an experiment)
  switch-1ms     sys.setswitchinterval(0.001) (an experiment)
  write-inline   the group commit on the event loop, not in the store's thread (an experiment)
  sign-nice      signing processes at nice $BENCH_SIGN_NICE (default 10) (an experiment)
  tick-1s        the alert clock every second, not every ten (an experiment)
  state-shm      the state database under /dev/shm, in memory, instead of on disk (an experiment)
  uvloop         uvloop's event loop instead of asyncio's (an experiment; needs uvloop installed)
  trace-memory   tracemalloc from the start; after each poll round, the memory traced (alive and peak
                 since the previous round), RSS, and the allocation sites holding the most (in
                 $BENCH_MEMORY_FILE); slows the daemon down two to three times
  memory-probe   a thread samples the process every 0.5 s; at each new high of RSS it writes RSS (anon,
                 file), glibc's heap (mallinfo2: in use, free, mmapped), pymalloc's blocks, and the
                 store's outbox in memory, write queue and keys held (in $BENCH_MEMORY_FILE); cheap
  outbox-memory  the store keeps at most $BENCH_OUTBOX_MEMORY events of the outbox in memory for the
                 relay (the default before the eleventh pass was 50,000; for comparison)
  census         after poll round $BENCH_CENSUS_ROUND (default 2): VmHWM so far, then the objects the
                 garbage collector tracks, by type (count, bytes), and each container of over 20,000
                 items with what holds it (in $BENCH_MEMORY_FILE); a few seconds, and its own lists
                 may raise VmHWM after it: read the peak from the line it writes first

The patches this script carried before (sign-threads, sync-normal, unlocked, listing-limit,
no-checkpoint) measured changes that are now made in watcher/ itself: `[signing] threads`, the group
commit with synchronous=NORMAL, the source's `max_listing_bytes`, and checkpoints off the commit path
(see bench/README.md). A setting the daemon reads needs no patch: its environment overrides the config
file (`BALANCE_WATCHER_KAFKA__LINGER_MS=5`, say), and the benchmarks pass their environment on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def self_status(*fields: str) -> dict[str, int]:
    """These fields of /proc/self/status, in KiB (or a count: Threads). The daemon's own reading of what
    bench/common.py's `proc_status` reads from outside: importing that module would add its imports to the
    memory measured."""
    with open("/proc/self/status") as lines:
        return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(fields)}


def patch_trace_latency() -> None:
    """Append `ce_id ce_time ack_wall_time` to $BENCH_LATENCY_FILE for every record Kafka acknowledges:
    the producer's per-record delivery future resolves when the broker's acks=all answer arrives."""
    import os
    import time as _time

    from watcher.publisher import KafkaPublisher
    from watcher.store import StateStore

    out = open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1 << 16)  # noqa: SIM115
    real_append = KafkaPublisher.append
    real_remember = StateStore._remember
    durable_at: dict[str, float] = {}  # ce_id -> when its group commit completed

    def remember(self: StateStore, entries: Any) -> None:
        now = _time.time()
        for entry in entries:
            durable_at[entry.ce_id] = now
        real_remember(self, entries)

    StateStore._remember = remember  # type: ignore[method-assign]

    async def append(self: KafkaPublisher, entries: Any) -> Any:
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
            acked = await real_append(self, entries)
        finally:
            del producer.send
        acked.add_done_callback(lambda _: out.flush())
        return acked

    KafkaPublisher.append = append  # type: ignore[method-assign]


def patch_trace_stalls() -> None:
    """Append to $BENCH_STALLS_FILE what holds the event loop: `lag T ms` when a 5 ms sleep of a probe
    task wakes more than 10 ms late, `gc T gen ms` for every garbage collection, `write T ms rows cpu_ms`
    for every group commit (in the store's thread; its thread's CPU time beside the wall time: the rest
    is waiting, for the GIL or the disk). Measures, changes nothing but the probe's own wake-ups."""
    import asyncio
    import gc
    import os
    import threading
    import time as _time

    from watcher.daemon import Daemon
    from watcher.store import StateStore

    out = open(os.environ["BENCH_STALLS_FILE"], "a", buffering=1 << 14)  # noqa: SIM115
    # The store's thread writes here too (its commits, and the collections it sets off): a buffered file
    # is not safe across threads, and two lines once came out interleaved mid-byte.
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            out.write(line)

    def flush() -> None:
        with lock:
            out.flush()

    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = _time.perf_counter()
        else:
            took_ms = (_time.perf_counter() - started[0]) * 1000
            tracked = len(gc.get_objects(2)) if info["generation"] == 2 else 0  # after it: what it walks
            emit(f"gc {_time.time():.6f} {info['generation']} {took_ms:.2f} {tracked}\n")

    gc.callbacks.append(on_gc)
    real_write = StateStore._write_sync

    def write_sync(self: StateStore, batch: Any, *args: Any) -> Any:
        t, cpu = _time.perf_counter(), _time.thread_time()
        try:
            return real_write(self, batch, *args)
        finally:
            took_ms, cpu_ms = (_time.perf_counter() - t) * 1000, (_time.thread_time() - cpu) * 1000
            emit(f"write {_time.time():.6f} {took_ms:.2f} {len(batch)} {cpu_ms:.2f}\n")

    StateStore._write_sync = write_sync  # type: ignore[method-assign]
    real_run = Daemon.run

    async def probe() -> None:
        while True:
            t = _time.perf_counter()
            await asyncio.sleep(0.005)
            late = (_time.perf_counter() - t - 0.005) * 1000
            if late > 10:
                emit(f"lag {_time.time():.6f} {late:.2f}\n")
                flush()

    async def run(self: Daemon, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.create_task(probe())
        try:
            return await real_run(self, *args, **kwargs)
        finally:
            task.cancel()
            flush()

    Daemon.run = run  # type: ignore[method-assign]


def patch_trace_handles() -> None:
    """Append to $BENCH_HANDLES_FILE, for each loop iteration whose callbacks ran over 10 ms in all, `iter
    T total_ms callbacks` and then its kinds of callback, largest first: `  ms count kind`. A task's step
    is named by its coroutine and the innermost function it stopped in (where its step ended), another
    callback by its name. The lags trace-stalls sees say that the loop was held; this says by what."""
    import asyncio
    import os
    import time as _time
    from asyncio import base_events, events

    out = open(os.environ["BENCH_HANDLES_FILE"], "a", buffering=1 << 14)  # noqa: SIM115
    ran: list[tuple[float, events.Handle]] = []
    real_run = events.Handle._run
    real_run_once = base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]

    def kind(handle: events.Handle) -> str:
        callback = handle._callback  # type: ignore[attr-defined]
        task = getattr(callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            coro: Any = task.get_coro()
            name = getattr(coro, "__qualname__", type(coro).__name__)
            frame = None  # the innermost frame of the chain of awaits: where the step ended
            while coro is not None:
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or frame
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            where = f"{frame.f_code.co_qualname}:{frame.f_lineno}" if frame is not None else "?"
            return f"task {name} @ {where}"
        return getattr(callback, "__qualname__", None) or type(callback).__name__

    def run(self: events.Handle) -> None:
        started = _time.perf_counter()
        try:
            real_run(self)
        finally:
            ran.append((_time.perf_counter() - started, self))

    def run_once(self: base_events.BaseEventLoop) -> None:
        ran.clear()
        real_run_once(self)
        total_ms = sum(took for took, _ in ran) * 1000
        if total_ms > 10:
            by_kind: dict[str, list[float]] = {}
            for took, handle in ran:
                entry = by_kind.setdefault(kind(handle), [0.0, 0])
                entry[0] += took * 1000
                entry[1] += 1
            out.write(f"iter {_time.time():.6f} {total_ms:.2f} {len(ran)}\n")
            for name, (ms, count) in sorted(by_kind.items(), key=lambda item: -item[1][0])[:8]:
                out.write(f"  {ms:.2f} {count} {name}\n")
            out.flush()

    events.Handle._run = run  # type: ignore[method-assign]
    base_events.BaseEventLoop._run_once = run_once  # type: ignore[attr-defined]


def patch_relay_serial() -> None:
    """The outbox relay with one batch in flight (stop and wait), as before the pipelined relay."""
    import functools

    from watcher.relay import OutboxRelay

    OutboxRelay.__init__ = functools.partialmethod(OutboxRelay.__init__, max_in_flight=1)  # type: ignore[assignment,method-assign]


def _tick_slices_of(keys: int) -> None:
    """The alert clock's slices of `keys` keys each, whatever they take (no time budget)."""
    import watcher.alerting

    watcher.alerting.TICK_SLICE_KEYS_FIRST = watcher.alerting.TICK_SLICE_KEYS_MAX = keys
    watcher.alerting.TICK_SLICE_S = float(1 << 62)


def patch_tick_whole() -> None:
    """The alert clock's tick over every key in one hold of the loop, as before ticks were sliced."""
    _tick_slices_of(1 << 62)


def patch_tick_250() -> None:
    """The alert clock's slices of 250 keys each, as before they were sized to a time budget."""
    _tick_slices_of(250)


def patch_tick_budget() -> None:
    """The alert clock's time budget per slice from $BENCH_TICK_SLICE_S (seconds) instead of TICK_SLICE_S."""
    import os

    import watcher.alerting

    watcher.alerting.TICK_SLICE_S = float(os.environ["BENCH_TICK_SLICE_S"])


def patch_gc_young() -> None:
    """A young generation ten times larger (gc.set_threshold(7000, 10, 10)): fewer collections, and
    the full ones (which walk everything alive) at most a tenth as often."""
    import gc

    gc.set_threshold(7000, 10, 10)


def patch_switch_1ms() -> None:
    """The GIL handed over every 1 ms instead of every 5 (sys.setswitchinterval(0.001)): the store's
    writer thread, which lets the GIL go at every SQLite step, waits less for it behind the event loop."""
    sys.setswitchinterval(0.001)


def patch_write_inline() -> None:
    """The group commit run on the event loop itself, not in the store's thread: no thread hop, and no
    wait for the GIL at every SQLite step (an experiment)."""
    import asyncio

    from watcher.store import StateStore

    real_call = StateStore._call

    async def call(self: StateStore, fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "_write_sync":
            result = fn(*args)
            await asyncio.sleep(0)
            return result
        return await real_call(self, fn, *args)

    StateStore._call = call  # type: ignore[method-assign]


def patch_uvloop() -> None:
    """uvloop's event loop instead of asyncio's (an experiment): its sockets, transports and timers are
    C; aiohttp, aiokafka and the subprocess pipes of signing processes run on it unchanged."""
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def patch_tick_1s() -> None:
    """The alert clock every second instead of every ten (an experiment): the same work in bursts a
    tenth the size, and a `for` elapsing between polls fires within a second of it."""
    import watcher.daemon

    watcher.daemon.TICK_SECONDS = 1.0


def patch_sign_nice() -> None:
    """Signing processes (`[signing] processes`) at a lower priority, nice $BENCH_SIGN_NICE (default 10):
    with both cores busy, the event loop's work on answers in hand goes before signing new requests."""
    import os

    from watcher import sign_process

    niceness = os.environ.get("BENCH_SIGN_NICE", "10")
    sign_process.WORKER = ("nice", "-n", niceness, *sign_process.WORKER)


def patch_trace_memory() -> None:
    """What the daemon's memory is made of: after each poll round, tracemalloc's largest allocation sites
    still alive (by line), the traced total and its peak since the previous round, and VmRSS/VmHWM."""
    import os
    import tracemalloc

    from watcher.poller import Poller

    tracemalloc.start()
    out = open(os.environ["BENCH_MEMORY_FILE"], "a", buffering=1)  # noqa: SIM115
    real_round = Poller.poll_round

    async def poll_round(self: Poller) -> Any:
        summary = await real_round(self)
        current, peak = tracemalloc.get_traced_memory()
        status = self_status("VmRSS", "VmHWM")
        out.write(f"round of {summary.source}: {summary.calls} calls, traced {current / 2**20:.1f} MiB alive,"
                  f" peak {peak / 2**20:.1f} MiB; VmRSS {status['VmRSS'] / 1024:.1f} MiB,"
                  f" VmHWM {status['VmHWM'] / 1024:.1f} MiB\n")
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:30]:
            frame = stat.traceback[0]
            out.write(f"  {stat.size / 2**20:7.2f} MiB {stat.count:8d}  {frame.filename}:{frame.lineno}\n")
        tracemalloc.reset_peak()
        return summary

    Poller.poll_round = poll_round  # type: ignore[method-assign]


def patch_memory_probe() -> None:
    """At each new high of RSS, what it is made of: which allocator holds it and what the store holds then.
    Reads from another thread are racy, but len() of a deque, list or dict is atomic under the GIL."""
    import ctypes
    import os
    import sys as _sys
    import threading
    import time as _time

    from watcher.store import StateStore

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    out = open(os.environ["BENCH_MEMORY_FILE"], "a", buffering=1)  # noqa: SIM115
    stores: list[StateStore] = []
    real_init = StateStore.__init__

    def init(self: StateStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        stores.append(self)

    StateStore.__init__ = init  # type: ignore[method-assign]

    def sample() -> None:
        high = 0
        started = _time.time()
        while True:
            _time.sleep(0.5)
            now = self_status("VmRSS", "RssAnon", "RssFile", "Threads")
            if now["VmRSS"] < high + 2048:
                continue
            high = now["VmRSS"]
            info = libc.mallinfo2()
            store = stores[-1] if stores else None
            held = "" if store is None else (
                f" outbox in memory {len(store._unpublished)}, queued {len(store._queue)},"
                f" writing {len(store._writing)}, hot {len(store._hot._keys)}")
            out.write(
                f"{_time.time() - started:8.1f} s: RSS {now['VmRSS'] / 1024:.1f} MiB (anon"
                f" {now['RssAnon'] / 1024:.1f}, file {now['RssFile'] / 1024:.1f}), threads {now['Threads']};"
                f" malloc heap {info.arena / 2**20:.1f} MiB (in use {info.uordblks / 2**20:.1f}, free"
                f" {info.fordblks / 2**20:.1f}), mmapped {info.hblkhd / 2**20:.1f} MiB in {info.hblks};"
                f" pymalloc blocks {_sys.getallocatedblocks()};{held}\n")

    threading.Thread(target=sample, name="memory-probe", daemon=True).start()


def patch_census() -> None:
    """Which objects the daemon holds, by type, without tracemalloc's cost while it runs: a census of
    what the garbage collector tracks (strings and bytes are not tracked; they show as the containers
    holding them), and the owners of the big containers (a dict of 100,000 keys costs its table)."""
    import collections
    import gc
    import os
    import sys as _sys

    from watcher.poller import Poller

    out = open(os.environ["BENCH_MEMORY_FILE"], "a", buffering=1)  # noqa: SIM115
    census_round = int(os.environ.get("BENCH_CENSUS_ROUND", "2"))
    real_round = Poller.poll_round
    rounds = [0]

    def hwm() -> str:
        return f"{self_status('VmHWM')['VmHWM']} kB"

    def owner(container: object, everything: list[object]) -> str:
        names = []
        for ref in gc.get_referrers(container):
            if ref is everything or type(ref).__name__ == "frame":
                continue
            if isinstance(ref, dict):  # an instance's __dict__, or a dict of dicts
                holders = [type(r).__qualname__ for r in gc.get_referrers(ref)
                           if r is not everything and type(r).__name__ != "frame"]
                names.append(f"dict in {holders[:3]}")
            else:
                names.append(type(ref).__qualname__)
        return ", ".join(names[:4])

    async def poll_round(self: Poller) -> Any:
        summary = await real_round(self)
        rounds[0] += 1
        if rounds[0] != census_round:
            return summary
        out.write(f"census after round {rounds[0]}: VmHWM so far {hwm()}\n")
        frozen = gc.get_freeze_count()  # the daemon froze what it made at start-up: count that too
        gc.unfreeze()
        everything = gc.get_objects()
        by_type: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        big = []
        for obj in everything:
            name = type(obj).__qualname__
            by_type[name] += 1
            sizes[name] += _sys.getsizeof(obj)
            if isinstance(obj, (dict, list, set, tuple, collections.deque)) and len(obj) > 20_000:
                big.append(obj)
        for name, size in sizes.most_common(30):
            out.write(f"  {size / 2**20:8.2f} MiB {by_type[name]:9d}  {name}\n")
        out.write(f"  big containers ({len(big)}):\n")
        for obj in sorted(big, key=_sys.getsizeof, reverse=True):
            out.write(f"  {_sys.getsizeof(obj) / 2**20:8.2f} MiB {len(obj):9d}  {type(obj).__qualname__}"
                      f" held by {owner(obj, everything)}\n")
        del everything, big
        gc.freeze()  # (now with what came since: the census ends a measurement)
        out.write(f"census done ({frozen} objects were frozen): VmHWM {hwm()}\n")
        return summary

    Poller.poll_round = poll_round  # type: ignore[method-assign]


def patch_state_shm() -> None:
    """The state database in a new folder under /dev/shm (memory, no disk) instead of the work folder:
    what the group commits and checkpoints wait for that is the disk's (an experiment). The folder is
    removed when the daemon exits."""
    import atexit
    import shutil
    import tempfile

    from watcher.store import StateStore

    real_init = StateStore.__init__

    def init(self: StateStore, path: Path, *args: Any, **kwargs: Any) -> None:
        folder = tempfile.mkdtemp(prefix="balance-watcher-state-", dir="/dev/shm")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        real_init(self, Path(folder) / Path(path).name, *args, **kwargs)

    StateStore.__init__ = init  # type: ignore[method-assign]


def patch_outbox_memory() -> None:
    """The store's bound of committed events held in memory for the relay, from $BENCH_OUTBOX_MEMORY."""
    import os

    from watcher.store import StateStore

    limit = int(os.environ["BENCH_OUTBOX_MEMORY"])
    real_init = StateStore.__init__

    def init(self: StateStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **{**kwargs, "outbox_memory_limit": limit})

    StateStore.__init__ = init  # type: ignore[method-assign]


PATCHES = {
    "memory-probe": patch_memory_probe,
    "outbox-memory": patch_outbox_memory,
    "census": patch_census,
    "trace-latency": patch_trace_latency,
    "trace-stalls": patch_trace_stalls,
    "trace-handles": patch_trace_handles,
    "relay-serial": patch_relay_serial,
    "tick-whole": patch_tick_whole,
    "tick-250": patch_tick_250,
    "tick-budget": patch_tick_budget,
    "gc-young": patch_gc_young,
    "trace-memory": patch_trace_memory,
    "switch-1ms": patch_switch_1ms,
    "write-inline": patch_write_inline,
    "sign-nice": patch_sign_nice,
    "uvloop": patch_uvloop,
    "tick-1s": patch_tick_1s,
    "state-shm": patch_state_shm,
}


def main() -> int:
    names = [n for n in sys.argv[1].split(",") if n and n != "none"]
    for name in names:
        PATCHES[name]()
    from watcher.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
