"""The composition root: builds the HTTP session, the state store, the producer, the sources and the
pollers once, hands them down as constructor arguments, and closes them in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from rules.model import Rule
from watcher.config import MastercardSendConfig, Settings, SourceConfig
from watcher.events import Event, now_utc
from watcher.metrics import Metrics
from watcher.poller import EventDelivery, OutboxDelivery, Poller, PrintOnlyDelivery, RulesHolder
from watcher.publisher import KafkaPublisher, build_producer
from watcher.relay import OutboxRelay
from watcher.sign_process import SigningError, SigningProcesses
from watcher.signers import OffLoopSigner, ThreadSigner
from watcher.signing import SigningKeyError, load_signing_key
from watcher.sources import build_source
from watcher.sources.base import BalanceSource
from watcher.store import StateStore


class StartupError(Exception):
    """The daemon cannot start; the message is one sentence for the operator."""


@dataclass
class Components:
    """Everything a running daemon (or one `once` round) works with."""

    settings: Settings
    store: StateStore
    session: aiohttp.ClientSession
    relay: OutboxRelay | None
    rules: RulesHolder
    pollers: list[Poller]
    metrics: Metrics
    delivery: EventDelivery
    # Evaluation and its commit are one step, whether a poll or the daemon's tick does it.
    lock: asyncio.Lock
    # Builds a source like the ones above (same session, same ledger): for a config reload.
    make_source: Callable[[SourceConfig, RSAPrivateKey | None], BalanceSource]
    # What signs Mastercard requests off the event loop; None: on the loop (`[signing]`, both 0).
    signer: OffLoopSigner | None = None


async def load_signing_keys(
    settings: Settings, sources: Sequence[SourceConfig] | None = None
) -> dict[str, RSAPrivateKey]:
    """Load every Mastercard signing key once, off the event loop (it is blocking file I/O)."""
    keys: dict[str, RSAPrivateKey] = {}
    for source in settings.sources if sources is None else sources:
        if isinstance(source, MastercardSendConfig):
            try:
                keys[source.name] = await asyncio.to_thread(
                    load_signing_key, source.signing_key_path, source.signing_key_password.get_secret_value()
                )
            except SigningKeyError as exc:
                raise StartupError(f"source {source.name!r}: {exc}") from None
    return keys


@asynccontextmanager
async def open_components(
    settings: Settings,
    rules: Sequence[Rule],
    *,
    publish: bool = True,
    on_event: Callable[[Event], None] | None = None,
    clock: Callable[[], datetime] = now_utc,
) -> AsyncIterator[Components]:
    """Build every component; on exit, close them in reverse order.

    publish=False (`once --no-publish`): no producer, no state is written, events go to on_event only.
    """
    keys = await load_signing_keys(settings)
    async with AsyncExitStack() as stack:
        store = StateStore(
            Path(settings.state.path),
            outbox_limit=settings.outbox.max_events,
            hot_keys=settings.state.hot_keys,
        )
        try:
            await store.open()
        except Exception as exc:
            raise StartupError(f"cannot open the state store {settings.state.path}: {exc}") from None
        stack.push_async_callback(store.close)

        # OAuth1 RSA signing, off the event loop. Threads start on first use; processes now, so that one
        # that cannot start stops the daemon's start. Both are closed after the session (no request is
        # signed any more then): queued signatures are cancelled, or answered by a closing process; the
        # ones being computed (a millisecond each) are waited for.
        signer: OffLoopSigner | None = None
        if settings.signing.threads > 0:
            sign_pool = ThreadPoolExecutor(settings.signing.threads, thread_name_prefix="oauth1-sign")
            stack.callback(sign_pool.shutdown, wait=True, cancel_futures=True)
            signer = ThreadSigner(sign_pool)
        elif settings.signing.processes > 0:
            processes = SigningProcesses(settings.signing.processes)
            stack.push_async_callback(processes.close)
            try:
                await processes.start()
            except SigningError as exc:
                raise StartupError(str(exc)) from None
            signer = processes

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            raise_for_status=False,
        )
        stack.push_async_callback(session.close)

        relay: OutboxRelay | None = None
        delivery: EventDelivery
        if publish:
            producer = build_producer(settings.kafka)
            try:
                await producer.start()
            except Exception as exc:
                await producer.stop()
                raise StartupError(
                    f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}"
                ) from None
            stack.push_async_callback(producer.stop)
            relay = OutboxRelay(
                store,
                KafkaPublisher(producer, settings.kafka),
                batch_size=settings.outbox.batch_size,
                patience_s=settings.kafka.request_timeout.total_seconds(),
            )
            delivery = OutboxDelivery(store, relay.wake, on_event)
        elif on_event is not None:
            delivery = PrintOnlyDelivery(on_event)
        else:
            raise ValueError("with publish=False, on_event must say where the events go")

        holder = RulesHolder(rules)
        lock = asyncio.Lock()

        # A large listing body is spooled next to the state database: a folder on disk that the daemon
        # may write (the unit's StateDirectory), unlike /tmp, which may be memory (tmpfs).
        spool_dir = Path(settings.state.path).parent

        def make_source(cfg: SourceConfig, key: RSAPrivateKey | None) -> BalanceSource:
            # The store is the PSD2 access ledger: the daily budget survives restarts and reloads.
            return build_source(cfg, session, key, ledger=store, signer=signer, spool_dir=spool_dir)

        pollers = [
            Poller(make_source(cfg, keys.get(cfg.name)), store, delivery, holder, clock, lock)
            for cfg in settings.sources
        ]
        metrics = Metrics()
        metrics.declare_sources(cfg.name for cfg in settings.sources)
        metrics.watch_outbox_depth(lambda: store.outbox_depth)
        if relay is not None:
            relay.metrics = metrics
        for poller in pollers:
            poller.metrics = metrics
        yield Components(
            settings, store, session, relay, holder, pollers, metrics, delivery, lock, make_source, signer
        )
