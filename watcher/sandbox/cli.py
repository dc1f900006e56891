"""`balance-watcher sandbox`: its options, and running it until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from watcher.devkeys import DEFAULT_PASSWORD, generate_dev_key
from watcher.sandbox.app import RunningSandbox, SandboxError, serve_sandbox
from watcher.sandbox.settings import (
    SAMPLE_MYPOS_ACCESS_TOKEN,
    SAMPLE_MYPOS_API_KEY,
    SAMPLE_MYPOS_CONSENT_ID,
    SandboxSettings,
)

DEFAULT_DEVKEY_DIR = Path(".devkeys")


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox command's options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any)")
    parser.add_argument(
        "--certificate",
        type=Path,
        help="PEM certificate that verifies Mastercard signatures "
        "(default: the development key in --devkey-dir, generated if missing)",
    )
    parser.add_argument(
        "--devkey-dir", type=Path, default=DEFAULT_DEVKEY_DIR, help="where the development key lives"
    )
    parser.add_argument(
        "--consumer-key",
        action="append",
        default=[],
        help="an accepted Mastercard consumer key (repeatable; default: any, the signature is still checked)",
    )
    parser.add_argument(
        "--tick", type=float, default=2.0, help="seconds between balance moves (default 2; 0: static)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the simulated world")
    parser.add_argument("--accounts", type=int, default=5, help="accounts per Mastercard partner (default 5)")
    parser.add_argument("--mypos-api-key", default=SAMPLE_MYPOS_API_KEY, help="accepted myPOS API-Key")
    parser.add_argument("--mypos-token", default=SAMPLE_MYPOS_ACCESS_TOKEN, help="accepted Bearer token")
    parser.add_argument("--mypos-consent-id", default=SAMPLE_MYPOS_CONSENT_ID, help="accepted Consent-ID")


def run_sandbox(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code. Raises the CLI's CliError for user errors."""
    from watcher.cli import EX_CONFIG, EX_OK, CliError

    certificate: Path | None = args.certificate
    p12_hint = ""
    if certificate is None:
        dev_key = generate_dev_key(args.devkey_dir)
        certificate = dev_key.certificate_path
        p12_hint = f"{dev_key.p12_path} (password {DEFAULT_PASSWORD!r})"
    try:
        settings = SandboxSettings(
            certificate_path=certificate,
            consumer_keys=frozenset(args.consumer_key),
            mypos_api_key=args.mypos_api_key,
            mypos_access_token=args.mypos_token,
            mypos_consent_id=args.mypos_consent_id,
            tick_seconds=args.tick,
            random_seed=args.seed,
            accounts_per_partner=args.accounts,
        )
    except ValueError as exc:
        raise CliError(str(exc), EX_CONFIG) from None

    def announce(sandbox: RunningSandbox) -> None:
        lines = [
            f"sandbox listening on {sandbox.base_url}",
            f"  Mastercard base_url: {sandbox.mastercard_base_url}  (partner SEED answers the API samples)",
            f"  myPOS base_url:      {sandbox.base_url}",
            f"  control API:         {sandbox.base_url}/_sandbox/  (see watcher.sandbox.control)",
        ]
        if p12_hint:
            lines.append(f"  sign with:           {p12_hint}")
        print("\n".join(lines), flush=True)

    try:
        asyncio.run(_serve_until_signalled(settings, args.host, args.port, announce))
    except SandboxError as exc:
        raise CliError(str(exc), EX_CONFIG) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("sandbox stopped", file=sys.stderr)
    return EX_OK


async def _serve_until_signalled(
    settings: SandboxSettings, host: str, port: int, announce: Callable[[RunningSandbox], None]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve_sandbox(settings, host, port, stop, on_started=announce)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
