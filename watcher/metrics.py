"""Prometheus metrics and the optional HTTP endpoint that serves them with /healthz and /readyz.

`Metrics` owns its CollectorRegistry (no process-wide default registry), so the composition root builds
one and hands it down, and tests build as many as they like. Every name starts with `balance_watcher_`.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rules.types import BalanceKey, KnownBalance

if TYPE_CHECKING:  # at run time poller.py may import this module: no cycle
    from watcher.poller import RoundSummary

NAMESPACE = "balance_watcher"
# The classic text format generate_latest() writes, understood by every Prometheus version.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PORT = 9464

# One API call: sub-second normally, up to the source timeout (30 s by default).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# One round: many calls, max_concurrency at a time.
ROUND_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_IPV6_LISTEN = re.compile(r"^\[([0-9A-Fa-f:.%\w]+)\]:(\d+)$")


class Metrics:
    """Every metric of the daemon, in one registry. Recording methods never raise on valid input."""

    def __init__(self, export_balances: bool = False) -> None:
        self.registry = CollectorRegistry()
        self._sources: set[str] = set()
        r = self.registry
        self.polls = Counter(
            "polls", "API calls by source and outcome (ok, http_error, bad_response, network_error, timeout)",
            ["source", "outcome"], namespace=NAMESPACE, registry=r,
        )
        self.poll_duration = Histogram(
            "poll_duration_seconds", "Latency of one balance API call.",
            ["source"], namespace=NAMESPACE, registry=r, buckets=CALL_BUCKETS,
        )
        self.round_duration = Histogram(
            "poll_round_duration_seconds", "Duration of one poll round of a source (every call of it).",
            ["source"], namespace=NAMESPACE, registry=r, buckets=ROUND_BUCKETS,
        )
        self.last_success = Gauge(
            "last_success_timestamp_seconds", "Unix time of the last round with a successful call.",
            ["source"], namespace=NAMESPACE, registry=r,
        )
        self.accounts_tracked = Gauge(
            "accounts_tracked", "Balances held in the state store, by source.",
            ["source"], namespace=NAMESPACE, registry=r,
        )
        # Opt-in: one series per account and balance type; and balances are business data.
        self.balance: Gauge | None = None
        if export_balances:
            self.balance = Gauge(
                "balance", "Last known balance, signed (IN_DEBIT is negative), in units of the currency.",
                ["source", "account", "currency", "balance_type"], namespace=NAMESPACE, registry=r,
            )
        self.alerts_firing = Gauge(
            "alerts_firing", "Alerts currently firing, by rule and severity.",
            ["rule", "severity"], namespace=NAMESPACE, registry=r,
        )
        self.events_published = Counter(
            "events_published", "Events Kafka acknowledged, by topic (changes, alerts).",
            ["topic"], namespace=NAMESPACE, registry=r,
        )
        self.events_failed = Counter(
            "events_failed", "Events Kafka did not acknowledge, by topic (they stay in the outbox).",
            ["topic"], namespace=NAMESPACE, registry=r,
        )
        self.delivery_failures = Counter(
            "delivery_failures",
            "Calls whose state and events could not be written (outbox full, store failure); retried.",
            ["source"], namespace=NAMESPACE, registry=r,
        )
        self.outbox_depth = Gauge(
            "outbox_depth", "Events waiting in the outbox for Kafka.", namespace=NAMESPACE, registry=r,
        )
        self.rules_reloads = Counter(
            "rules_reloads", "Rules reloads (SIGHUP) by result: success or failure.",
            ["result"], namespace=NAMESPACE, registry=r,
        )
        for result in ("success", "failure"):
            self.rules_reloads.labels(result=result)

    def declare_sources(self, names: Iterable[str]) -> None:
        """Create the per-source series at zero, so that rate() and absent() work from the first scrape."""
        for name in names:
            self._sources.add(name)
            self.polls.labels(source=name, outcome="ok")
            self.poll_duration.labels(source=name)
            self.round_duration.labels(source=name)
            self.accounts_tracked.labels(source=name).set(0)

    def observe_call(self, source: str, duration_s: float) -> None:
        """One API call finished (whatever its outcome): its latency."""
        self.poll_duration.labels(source=source).observe(duration_s)

    def observe_round(self, summary: RoundSummary, finished_at: float | None = None) -> None:
        """One poll round finished: count its calls by outcome, its duration, the time of success."""
        for outcome, count in summary.outcomes.items():
            if count:
                self.polls.labels(source=summary.source, outcome=outcome).inc(count)
        self.round_duration.labels(source=summary.source).observe(summary.duration_s)
        if summary.delivery_failures:
            self.delivery_failures.labels(source=summary.source).inc(summary.delivery_failures)
        if summary.outcomes["ok"] > 0:
            self.last_success.labels(source=summary.source).set(
                time.time() if finished_at is None else finished_at
            )

    def record_balances(self, known: Mapping[BalanceKey, KnownBalance]) -> None:
        """The state store's balances (StateStore.all_known()): accounts per source, and each balance
        when balances are exported. Series of balances no longer known are dropped."""
        per_source = collections.Counter(key.source for key in known)
        for source in self._sources | set(per_source):
            self.accounts_tracked.labels(source=source).set(per_source[source])
        if self.balance is None:
            return
        self.balance.clear()
        for key, state in known.items():
            self.balance.labels(
                source=key.source, account=key.account, currency=state.balance.currency,
                balance_type=key.balance_type or state.balance.balance_type or "",
            ).set(float(state.balance.signed_amount))  # a gauge is a float; exactness stays in the events

    def record_active_alerts(self, counts: Mapping[tuple[str, str | None, str], int]) -> None:
        """The alerts firing per (rule name, severity), from the store's counts of active states by (rule,
        severity, status) (StateStore.active_alert_counts; a rule without a severity warns); series absent
        from `counts` are dropped."""
        firing: collections.Counter[tuple[str, str]] = collections.Counter()
        for (rule, severity, status), count in counts.items():
            if status == "firing":
                firing[(rule, severity or "warning")] += count
        self.alerts_firing.clear()
        for (rule, severity), count in firing.items():
            self.alerts_firing.labels(rule=rule, severity=severity).set(count)

    def events_sent(self, topics: Iterable[str]) -> None:
        """Kafka acknowledged these events: one topic per event ("changes" or "alerts", as in the outbox)."""
        for topic, count in collections.Counter(topics).items():
            self.events_published.labels(topic=topic).inc(count)

    def events_not_sent(self, topics: Iterable[str]) -> None:
        """Kafka refused or did not acknowledge these events (they stay in the outbox and are sent again)."""
        for topic, count in collections.Counter(topics).items():
            self.events_failed.labels(topic=topic).inc(count)

    def watch_outbox_depth(self, depth: Callable[[], float]) -> None:
        """Read the outbox depth at every scrape (e.g. `lambda: store.outbox_depth`)."""
        self.outbox_depth.set_function(depth)

    def rules_reloaded(self, ok: bool) -> None:
        self.rules_reloads.labels(result="success" if ok else "failure").inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port", "[::1]:port" or ":port" (all interfaces); raise ValueError naming the problem."""
    text = listen.strip()
    bracketed = _IPV6_LISTEN.match(text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"listen {listen!r} is not host:port (write an IPv6 address as [::1]:9464)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"listen {listen!r}: the port must be a number from 1 to 65535")
    return host or "0.0.0.0", int(port_text)  # ":port" asks for every interface


def _always() -> bool:
    return True


class MetricsServer:
    """aiohttp server for /metrics (text format), /healthz and /readyz.

    /healthz answers 200 while the event loop turns and `alive()` holds (e.g. the watchdog gate sees
    progress); /readyz answers 200 once `ready()` holds (sources, store and producer are up), else 503.
    Port 0 binds a free port; `port` then tells which.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        ready: Callable[[], bool] = _always,
        alive: Callable[[], bool] = _always,
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._ready = ready
        self._alive = alive
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (after start), else the configured one."""
        if self._runner is not None and self._runner.addresses:
            return int(self._runner.addresses[0][1])
        return self._port

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken or not local."""
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/readyz", self._handle_readyz)
        # No access log: a scrape every 15 s would drown the journal.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        # On the loop, not in a thread: gauges read the daemon's state through callbacks.
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": TEXT_CONTENT_TYPE})

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        if self._alive():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="stalled\n")

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")
