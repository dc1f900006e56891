"""`balance-watcher sandbox`: its options, and running it until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from watcher.devkeys import DEFAULT_PASSWORD, generate_dev_key
from watcher.sandbox.app import RunningSandbox, SandboxError, serve_sandbox
from watcher.sandbox.control import add_fault_from_json
from watcher.sandbox.faults import FaultBook
from watcher.sandbox.settings import (
    SAMPLE_MYPOS_ACCESS_TOKEN,
    SAMPLE_MYPOS_API_KEY,
    SAMPLE_MYPOS_CONSENT_ID,
    SANDBOX_MYPOS_CLIENT_ID,
    SANDBOX_MYPOS_CLIENT_SECRET,
    SANDBOX_MYPOS_REFRESH_TOKEN,
    SandboxSettings,
)
from watcher.stop_signals import stop_on_signals

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
    parser.add_argument(
        "--mypos-refresh-token", default=SANDBOX_MYPOS_REFRESH_TOKEN, help="accepted refresh token"
    )
    parser.add_argument("--mypos-client-id", default=SANDBOX_MYPOS_CLIENT_ID, help="OAuth2 client id")
    parser.add_argument(
        "--mypos-client-secret", default=SANDBOX_MYPOS_CLIENT_SECRET, help="OAuth2 client secret (\"\": none)"
    )
    parser.add_argument(
        "--faults",
        type=Path,
        help="a JSON file: a list of faults to inject from the start, each as POSTed to /_sandbox/faults",
    )


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
            mypos_refresh_token=args.mypos_refresh_token,
            mypos_client_id=args.mypos_client_id,
            mypos_client_secret=args.mypos_client_secret or None,
            tick_seconds=args.tick,
            random_seed=args.seed,
            accounts_per_partner=args.accounts,
        )
    except ValueError as exc:
        raise CliError(str(exc), EX_CONFIG) from None
    scenario = load_fault_file(args.faults) if args.faults is not None else []

    def announce(sandbox: RunningSandbox) -> None:
        for entry in scenario:
            add_fault_from_json(sandbox.faults, entry)
        lines = [
            f"sandbox listening on {sandbox.base_url}",
            f"  Mastercard base_url: {sandbox.mastercard_base_url}  (partner SEED answers the API samples)",
            f"  myPOS base_url:      {sandbox.base_url}",
            f"  myPOS token_url:     {sandbox.token_url}  (refresh_token grant)",
            f"  control API:         {sandbox.base_url}/_sandbox/  (see watcher.sandbox.control)",
        ]
        if p12_hint:
            lines.append(f"  sign with:           {p12_hint}")
        if scenario:
            lines.append(f"  faults:              {len(scenario)} from {args.faults}")
        print("\n".join(lines), flush=True)

    try:
        asyncio.run(_serve_until_signalled(settings, args.host, args.port, announce))
    except SandboxError as exc:
        raise CliError(str(exc), EX_CONFIG) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("sandbox stopped", file=sys.stderr)
    return EX_OK


def load_fault_file(path: Path) -> list[dict[str, Any]]:
    """The faults of a scenario file, each checked; raises the CLI's CliError naming the file and entry."""
    from watcher.cli import EX_CONFIG, CliError

    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise CliError(f"{path}: cannot read the faults file: {exc.strerror or exc}", EX_CONFIG) from None
    except ValueError as exc:
        raise CliError(f"{path}: not valid JSON: {exc}", EX_CONFIG) from None
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise CliError(f"{path}: expected a JSON list of fault objects", EX_CONFIG)
    scratch = FaultBook()
    for index, entry in enumerate(data):
        try:
            add_fault_from_json(scratch, entry)
        except ValueError as exc:
            raise CliError(f"{path}: fault [{index}]: {exc}", EX_CONFIG) from None
    return data


async def _serve_until_signalled(
    settings: SandboxSettings, host: str, port: int, announce: Callable[[RunningSandbox], None]
) -> None:
    with stop_on_signals() as stop:
        await serve_sandbox(settings, host, port, stop, on_started=announce)
