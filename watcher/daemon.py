"""The daemon's main loop: schedule poll rounds, reload rules on SIGHUP, drain and stop on SIGTERM.

Signal handlers only set flags. Every poll round is a task owned by the daemon: APScheduler's job
only launches it (APScheduler 3.11 would cancel a running coroutine job at shutdown), and shutdown
waits for the rounds in flight, up to the grace period, before the producer is flushed.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from rules.loader import RulesError, load_rule_files
from rules.model import Rule
from watcher.alerting import AlertClock
from watcher.app import Components, StartupError
from watcher.events import now_utc
from watcher.metrics import MetricsServer, parse_listen
from watcher.notify import SystemdNotifier, WatchdogGate, feed_watchdog, status_line
from watcher.poller import Poller, RoundSummary
from watcher.reload import reload_sources

log = structlog.get_logger("watcher.daemon")

TICK_SECONDS = 10.0


def default_jitter(interval: timedelta) -> float:
    """A little jitter, so that sources started together do not stay in lock-step: 10 %, at most 30 s."""
    return min(interval.total_seconds() * 0.1, 30.0)


class Daemon:
    """Runs the pollers of `components` on their intervals until asked to stop."""

    def __init__(
        self,
        components: Components,
        rule_files: Sequence[Path],
        load_rules: Callable[[Sequence[Path]], Sequence[Rule]] | None = None,
        notifier: SystemdNotifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self._config_path = config_path
        self._c = components
        self._notify = notifier or SystemdNotifier(None)
        self.gate = WatchdogGate()
        self.ready = False
        self._rule_files = list(rule_files)
        self._load_rules = load_rules or (lambda paths: load_rule_files(paths).rules)
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._rounds: dict[str, asyncio.Task[RoundSummary | None]] = {}
        self._alert_clock = AlertClock(components, now_utc)
        self.last_summaries: dict[str, RoundSummary] = {}

    # Signal handlers: flags only.
    def request_stop(self) -> None:
        if self._stop_requested:
            # A second SIGTERM/SIGINT: the operator does not want to wait for the drain.
            raise SystemExit(1)
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    async def run(self) -> int:
        """Poll until stopped; returns the exit code."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for poller in self._c.pollers:
            cfg = next(s for s in self._c.settings.sources if s.name == poller.source.name)
            jitter = cfg.jitter.total_seconds() if cfg.jitter is not None else default_jitter(cfg.interval)
            scheduler.add_job(
                self._launch,
                IntervalTrigger(seconds=cfg.interval.total_seconds(), jitter=jitter or None, timezone=UTC),
                args=[poller],
                id=poller.source.name,
                next_run_time=now,  # the first round runs at start
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
            )
        # Progress for the watchdog: this job runs on the loop only while APScheduler dispatches jobs.
        ping = self._notify.watchdog_interval()
        scheduler.add_job(self._heartbeat, IntervalTrigger(seconds=min(10.0, ping or 10.0), timezone=UTC),
                          id="heartbeat", coalesce=True, max_instances=1)
        # Time moves alerts on too (`for`, `repeat`, mute windows, staleness).
        scheduler.add_job(self._tick, IntervalTrigger(seconds=TICK_SECONDS, timezone=UTC), id="alert-clock",
                          coalesce=True, max_instances=1)
        # Alerts of rules removed while the daemon was stopped resolve now.
        await self._alert_clock.reconcile()
        # Everything alive now (imported modules, the loaded state) lives as long as the process: the
        # permanent generation spares it the full collections that would otherwise walk it again and
        # again, each a pause of 100 ms and more for the polls in flight.
        gc.collect()
        gc.freeze()
        server = await self._start_metrics_server()
        relay = self._c.relay
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay") if relay else None
        scheduler.start()
        watchdog = asyncio.create_task(feed_watchdog(self._notify, self.gate), name="watchdog")
        self.ready = True
        self._notify.ready()
        self._notify.status(status_line([]))
        log.info("daemon started", sources=[p.source.name for p in self._c.pollers],
                 outbox_depth=self._c.store.outbox_depth)
        try:
            while not self._stop_requested:
                await self._wake.wait()
                self._wake.clear()
                if self._reload_requested and not self._stop_requested:
                    self._reload_requested = False
                    await self._reload()
        finally:
            self.ready = False
            self._notify.stopping()
            scheduler.shutdown(wait=False)
            started = time.monotonic()
            await self._drain()
            if relay is not None and relay_task is not None:
                relay.stop()
                await relay_task
                grace = self._c.settings.shutdown_grace.total_seconds()
                await relay.drain(max(1.0, grace - (time.monotonic() - started)))
            watchdog.cancel()
            if server is not None:
                await server.stop()
        log.info("daemon stopped")
        return 0

    async def _tick(self) -> None:
        if self._stop_requested:
            return
        try:
            await self._alert_clock.tick()
        except Exception:
            log.exception("alert clock tick failed")

    async def _heartbeat(self) -> None:
        self.gate.beat()

    async def _start_metrics_server(self) -> MetricsServer | None:
        config = self._c.settings.metrics
        if config is None:
            return None
        host, port = parse_listen(config.listen)
        server = MetricsServer(self._c.metrics, host, port, ready=lambda: self.ready,
                               alive=lambda: self.gate.stalled_for() < 120)
        try:
            await server.start()
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {config.listen}: {exc.strerror or exc}") from None
        return server

    async def _launch(self, poller: Poller) -> None:
        """The scheduler's job: start a round unless one of this source is still running."""
        name = poller.source.name
        if self._stop_requested:
            return
        running = self._rounds.get(name)
        if running is not None and not running.done():
            log.warning("round skipped: the previous one is still running", source=name)
            return
        task = asyncio.create_task(self._round(poller), name=f"poll-round:{name}")
        self._rounds[name] = task

    async def _round(self, poller: Poller) -> RoundSummary | None:
        self.gate.beat()
        try:
            summary = await poller.poll_round()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("poll round failed", source=poller.source.name)
            return None
        self.gate.beat()
        self.last_summaries[summary.source] = summary
        self._notify.status(status_line(list(self.last_summaries.values())))
        metrics, store = self._c.metrics, self._c.store
        metrics.observe_round(summary)
        metrics.record_balances(store.known_view())  # read at once: no copy of 100,000 entries
        metrics.record_active_alerts(store.active_alert_counts())  # counted as put: nothing read back
        return summary

    async def _drain(self) -> None:
        pending = [t for t in self._rounds.values() if not t.done()]
        if pending:
            grace = self._c.settings.shutdown_grace.total_seconds()
            log.info("draining poll rounds in flight", rounds=len(pending), grace_s=grace)
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("poll rounds cancelled after the grace period", rounds=len(late))
                await asyncio.gather(*late, return_exceptions=True)

    async def _reload(self) -> None:
        """Reload the config's sources (when the config path is known) and the rules files; on any
        error keep what is in force."""
        self._notify.reloading()
        if self._config_path is not None:
            settings = await reload_sources(self._c, self._config_path)
            if settings is not None:
                self._rule_files = list(settings.rules.files)
        try:
            rules = await asyncio.to_thread(self._load_rules, self._rule_files)
            old_rules = tuple(self._c.rules.rules)
            self._c.rules.replace(rules)
        except RulesError as exc:
            log.error("rules reload rejected; the previous rules stay in force", error=str(exc))
            self._c.metrics.rules_reloaded(ok=False)
        else:
            log.info("rules reloaded", rules=len(rules))
            self._c.metrics.rules_reloaded(ok=True)
            await self._alert_clock.reconcile(old_rules)
        finally:
            self._notify.ready()


async def run_daemon(
    components: Components, rule_files: Sequence[Path], config_path: Path | None = None
) -> int:
    """Run the daemon with signal handlers installed."""
    daemon = Daemon(
        components, rule_files, notifier=SystemdNotifier.from_environment(), config_path=config_path
    )
    loop = asyncio.get_running_loop()
    daemon.install_signal_handlers(loop)
    try:
        return await daemon.run()
    finally:
        daemon.remove_signal_handlers(loop)
