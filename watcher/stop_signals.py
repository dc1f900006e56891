"""An event set by SIGTERM or SIGINT: how the sandbox and `tail` learn to stop (the daemon has its own
handlers: a second signal, and SIGHUP, mean more to it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """While the block runs, SIGTERM and SIGINT set the event it is given (handlers of the running loop
    that only set it). Our own handlers, not asyncio.run's: a process started with SIGINT ignored (a
    background job of a script, nohup) gets none from Python, and would never stop on it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
