"""The sandbox application: both balance APIs and the control API on one aiohttp app, and running it.

    async with running_sandbox(SandboxSettings(certificate_path=dev.certificate_path)) as sandbox:
        sandbox.mastercard_base_url   # http://127.0.0.1:<free port>/send
        sandbox.base_url              # the myPOS base URL, and the control API's under /_sandbox/
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from watcher.sandbox import control, mastercard, mypos
from watcher.sandbox.faults import FaultBook
from watcher.sandbox.mypos_auth import TOKEN_PATH, MyposAuth
from watcher.sandbox.oauth_verify import OAuthVerifier
from watcher.sandbox.settings import SandboxSettings
from watcher.sandbox.state import SANDBOX_STATE, SandboxState, SeedPayloads
from watcher.sandbox.world import World

# A delayed answer must not hold a stop back for long.
_SHUTDOWN_TIMEOUT_SECONDS = 2.0


class SandboxError(ValueError):
    """The sandbox cannot start as configured; the message names the file at fault."""


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def load_certificate_key(path: Path) -> RSAPublicKey:
    """The RSA public key of a PEM certificate (blocking: once, at start-up)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SandboxError(f"certificate file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise SandboxError(f"certificate file {path} is not a PEM certificate") from None
    key = certificate.public_key()
    if not isinstance(key, RSAPublicKey):
        raise SandboxError(f"certificate file {path} holds a {type(key).__name__}, not an RSA key")
    return key


def build_sandbox_app(
    settings: SandboxSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], datetime] = utc_now,
) -> web.Application:
    """The sandbox app. `clock` (monotonic seconds) drives the ticks; `wall_clock` the OAuth time check
    and the balance timestamps. Raises SandboxError when the certificate is unusable."""
    seeds = SeedPayloads.load()
    state = SandboxState(
        settings=settings,
        world=World(
            seed=settings.random_seed,
            accounts_per_partner=settings.accounts_per_partner,
            mypos_accounts=settings.mypos_accounts,
            tick_seconds=settings.tick_seconds,
            clock=clock,
            wall_clock=wall_clock,
            mypos_seed_body=seeds.mypos_balances_json,
        ),
        faults=FaultBook(),
        verifier=OAuthVerifier(
            load_certificate_key(settings.certificate_path),
            consumer_keys=settings.consumer_keys,
            tolerance_seconds=settings.timestamp_tolerance_seconds,
            wall_clock=wall_clock,
        ),
        seeds=seeds,
        wall_clock=wall_clock,
        auth=MyposAuth(settings),
    )
    app = web.Application(middlewares=[mastercard.mastercard_middleware, control.control_errors])
    app[SANDBOX_STATE] = state
    app.router.add_get(mastercard.SINGLE_PATH, mastercard.account_balance)
    app.router.add_get(mastercard.LISTING_PATH, mastercard.account_balances)
    app.router.add_get(mypos.BALANCES_PATH, mypos.card_account_balances)
    app.router.add_post(TOKEN_PATH, mypos.token_endpoint)
    control.add_control_routes(app)
    return app


@dataclass(frozen=True, slots=True)
class RunningSandbox:
    """A sandbox listening on `port`; `state` gives tests direct access to its world and faults."""

    base_url: str
    port: int
    state: SandboxState

    @property
    def mastercard_base_url(self) -> str:
        """The Mastercard source's base_url: requests go to {this}/v1/partners/..."""
        return f"{self.base_url}/send"

    @property
    def world(self) -> World:
        """The simulated accounts: set balances, freeze, advance."""
        return self.state.world

    @property
    def faults(self) -> FaultBook:
        """The injected faults: add, clear."""
        return self.state.faults

    @property
    def auth(self) -> MyposAuth:
        """The myPOS access tokens and consents: expire, revoke, give."""
        return self.state.auth

    @property
    def token_url(self) -> str:
        """The myPOS OAuth2 token endpoint (refresh_token grant)."""
        return f"{self.base_url}{TOKEN_PATH}"


@asynccontextmanager
async def running_sandbox(
    settings: SandboxSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], datetime] = utc_now,
) -> AsyncIterator[RunningSandbox]:
    """Serve the sandbox while the block runs; port 0 picks a free port (see `.port`)."""
    app = build_sandbox_app(settings, clock=clock, wall_clock=wall_clock)
    # handler_cancellation: a client that gives up on a delayed answer ends its handler.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        shown_host = f"[{host}]" if ":" in host else host
        yield RunningSandbox(f"http://{shown_host}:{bound_port}", bound_port, app[SANDBOX_STATE])
    finally:
        await runner.cleanup()


async def serve_sandbox(
    settings: SandboxSettings,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    on_started: Callable[[RunningSandbox], None] | None = None,
) -> None:
    """Serve until `stop` is set (the CLI sets it on SIGTERM/SIGINT). `on_started` sees the bound port.

    Raises SandboxError for an unusable certificate and OSError when the port cannot be bound.
    """
    async with running_sandbox(settings, host=host, port=port) as sandbox:
        if on_started is not None:
            on_started(sandbox)
        await stop.wait()
