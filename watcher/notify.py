"""The systemd notification protocol (sd_notify), without libsystemd: one datagram per message.

`Type=notify` units hand the service a NOTIFY_SOCKET; outside systemd it is unset and every call here
is a no-op, so the daemon can notify unconditionally. Sending never blocks and never raises: a lost
status line must not stop the polls.

The watchdog is gated on progress (`WatchdogGate`): a ping proves that the scheduler still dispatches
jobs and the main loop still turns, not merely that some coroutine is alive, so a wedged daemon stops
pinging and systemd restarts it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from watcher.poller import RoundSummary

log = structlog.get_logger("watcher.notify")

# sd_notify's documented limit is far above this; one STATUS= line should stay readable in `systemctl status`.
MAX_STATUS_CHARS = 400


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares RELOADING=1's MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(notify_socket: str) -> str | bytes:
    """NOTIFY_SOCKET as a sendto() address: a path, or an abstract socket when it starts with '@'."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


def watchdog_usec_from(env: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC when the watchdog is meant for this process (WATCHDOG_PID absent or ours), else None."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None  # inherited from a parent: that watchdog is not ours to feed
    return int(usec)


def should_ping(now: float, last_progress: float, watchdog_usec: int) -> bool:
    """True when the last sign of progress (monotonic seconds) is younger than the watchdog timeout."""
    return 0 <= now - last_progress < watchdog_usec / 1_000_000


class SystemdNotifier:
    """Sends sd_notify messages to `address`; with no address (not under systemd) it does nothing."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from the environment (os.environ by default)."""
        env = os.environ if env is None else env
        notify_socket = env.get("NOTIFY_SOCKET", "")
        address = socket_address(notify_socket) if notify_socket else None
        return cls(address, watchdog_usec_from(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of newline-separated VAR=value lines; False when it could not be sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:  # systemd gone, queue full: notification is best effort
            log.warning("sd_notify failed", message=assignments[0], error=str(exc))
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        # One line: systemd shows STATUS= verbatim, and a newline would start another assignment.
        line = " ".join(text.split())[:MAX_STATUS_CHARS]
        return self.send(f"STATUS={line}")

    def reloading(self) -> bool:
        """Before a reload; systemd uses MONOTONIC_USEC to tell this reload from an earlier one."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec, as systemd recommends); None without a watchdog."""
        if self._watchdog_usec is None or self._sock is None:
            return None
        return self._watchdog_usec / 2_000_000

    @property
    def watchdog_usec(self) -> int | None:
        return self._watchdog_usec

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class WatchdogGate:
    """Remembers the last sign of progress; the pinger feeds the watchdog only while it is recent.

    Call `beat()` where progress happens: a scheduler job that fires every few seconds (proves
    APScheduler dispatches), the start and end of each poll round, each turn of the main loop.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last_progress = clock()

    def beat(self) -> None:
        self.last_progress = self._clock()

    def allows_ping(self, watchdog_usec: int) -> bool:
        return should_ping(self._clock(), self.last_progress, watchdog_usec)

    def stalled_for(self) -> float:
        """Seconds since the last progress."""
        return self._clock() - self.last_progress


async def feed_watchdog(notifier: SystemdNotifier, gate: WatchdogGate) -> None:
    """Ping WATCHDOG=1 every half watchdog period while `gate` sees progress; returns at once without one.

    Run it as a task for the daemon's lifetime and cancel it on shutdown.
    """
    interval = notifier.watchdog_interval()
    usec = notifier.watchdog_usec
    if interval is None or usec is None:
        return
    while True:
        if gate.allows_ping(usec):
            notifier.watchdog()
        else:
            log.error(
                "no progress: watchdog not fed, systemd will restart the service",
                stalled_s=round(gate.stalled_for(), 1),
            )
        await asyncio.sleep(interval)


def status_line(summaries: Sequence[RoundSummary]) -> str:
    """One line for STATUS=: the latest round of each source, e.g. `mc-gbp 12/12 ok 3 ev 0.4s`."""
    if not summaries:
        return "waiting for the first poll round"
    parts = []
    for s in sorted(summaries, key=lambda s: s.source):
        text = f"{s.source} {s.outcomes['ok']}/{s.calls} ok {s.events} ev {s.duration_s:.1f}s"
        failed = {k: v for k, v in s.outcomes.items() if k != "ok" and v}
        if failed:
            text += " (" + ", ".join(f"{v} {k}" for k, v in sorted(failed.items())) + ")"
        if s.delivery_failures:
            text += f" {s.delivery_failures} not delivered"
        parts.append(text)
    return "; ".join(parts)
