"""The command line: a thin layer that validates input at the edge and calls the real work.

Exit codes: 0 clean stop, 78 (EX_CONFIG) bad configuration or rules, 1 any other fatal error.
Errors a user can cause are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from rules.loader import RulesError, load_rule_files
from rules.model import Rule
from watcher import __version__
from watcher.config import ConfigError, MastercardSendConfig, MyposPsd2Config, Settings, load_settings
from watcher.logs import configure_logging

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78


class CliError(Exception):
    """A fatal error with an exit code and a one-sentence message."""

    def __init__(self, message: str, code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _secrets(settings: Settings) -> list[str]:
    """Every configured secret value, so the logger can mask them wherever they appear."""
    values: list[str] = []
    for source in settings.sources:
        if isinstance(source, MastercardSendConfig):
            values += [source.consumer_key.get_secret_value(), source.signing_key_password.get_secret_value()]
        elif isinstance(source, MyposPsd2Config):
            values += [
                source.api_key.get_secret_value(),
                source.access_token.get_secret_value(),
                source.consent_id.get_secret_value(),
            ]
    for secret in (settings.kafka.sasl_plain_password, settings.kafka.ssl_password):
        if secret is not None:
            values.append(secret.get_secret_value())
    return values


def load_all(config: Path) -> tuple[Settings, tuple[Rule, ...]]:
    """The settings and every rule, or CliError(EX_CONFIG) naming the file and the key at fault."""
    try:
        settings = load_settings(config)
        rules = load_rule_files(settings.rules.files).rules
    except (ConfigError, RulesError) as exc:
        raise CliError(str(exc), EX_CONFIG) from None
    return settings, tuple(rules)


def _setup_logging(settings: Settings, args: argparse.Namespace) -> None:
    level = "debug" if getattr(args, "verbose", False) else settings.logging.level
    configure_logging(level, settings.logging.format, _secrets(settings))


def cmd_check(args: argparse.Namespace) -> int:
    settings, rules = load_all(args.config)
    from watcher.app import StartupError, load_signing_keys

    try:
        asyncio.run(load_signing_keys(settings))
    except StartupError as exc:
        raise CliError(f"{args.config}: {exc}", EX_CONFIG) from None
    for source in settings.sources:
        budget = getattr(source, "daily_access_budget", 0)
        if budget and source.interval.total_seconds() * budget < 86400:
            print(
                f"{args.config}: warning: sources ({source.name}): interval {source.interval} polls more"
                f" often than daily_access_budget = {budget} allows; calls beyond it are deferred",
                file=sys.stderr,
            )
    print(
        f"{args.config}: OK: {len(settings.sources)} source(s), {len(rules)} rule(s) "
        f"from {len(settings.rules.files)} file(s)"
    )
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    settings, rules = load_all(args.config)
    _setup_logging(settings, args)
    from watcher.app import StartupError, open_components
    from watcher.daemon import run_daemon

    async def main() -> int:
        async with open_components(settings, rules) as components:
            return await run_daemon(components, settings.rules.files, args.config)

    try:
        return asyncio.run(main())
    except StartupError as exc:
        raise CliError(str(exc)) from None


def cmd_once(args: argparse.Namespace) -> int:
    settings, rules = load_all(args.config)
    _setup_logging(settings, args)
    from watcher.app import StartupError, open_components
    from watcher.events import Event

    def emit(event: Event) -> None:
        print(event.as_json_line(), flush=True)

    async def main() -> int:
        async with open_components(settings, rules, publish=not args.no_publish, on_event=emit) as components:
            summaries = await asyncio.gather(*(p.poll_round() for p in components.pollers))
            drained = True
            if components.relay is not None:
                drained = await components.relay.drain(settings.kafka.request_timeout.total_seconds())
        if not drained:
            raise CliError("Kafka did not acknowledge every event; they stay in the outbox for the next run")
        return EX_OK if all(s.ok for s in summaries) else EX_FAILURE

    try:
        return asyncio.run(main())
    except StartupError as exc:
        raise CliError(str(exc)) from None


def cmd_tail(args: argparse.Namespace) -> int:
    settings, _ = load_all(args.config)
    from watcher.tail import tail

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            tail(settings, args.from_beginning, as_json=args.json, types=args.type or (),
                 sources=args.source or (), accounts=args.account or ())
        )
    return EX_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings, _ = load_all(args.config)
    from watcher.status import print_status

    if not Path(settings.state.path).exists():
        raise CliError(f"no state store at {settings.state.path}: the daemon has not run yet")
    return asyncio.run(print_status(settings, as_json=args.json))


def cmd_sandbox(args: argparse.Namespace) -> int:
    from watcher.sandbox.cli import run_sandbox

    return run_sandbox(args)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from watcher.rulestest import main_rules_test

    return main_rules_test(args.files, sys.stdout)


def cmd_devkey(args: argparse.Namespace) -> int:
    from watcher.devkeys import generate_dev_key

    key = generate_dev_key(args.dir, args.password)
    print(f"signing key: {key.p12_path}\ncertificate: {key.certificate_path}")
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balance-watcher", description="Watches account balances and publishes events to Kafka."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", type=Path, required=True, help="the TOML configuration file")
        return p

    p = with_config("run", "the daemon: poll, compare, evaluate rules, publish, until SIGTERM/SIGINT")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)
    p = with_config("check", "validate the config and every rules file, without network")
    p.set_defaults(func=cmd_check)
    p = with_config("once", "one poll of every source; print every event as one JSON object per line")
    p.add_argument("--no-publish", action="store_true", help="print only: publish nothing, change no state")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_once)
    p = with_config("tail", "print the events of the change and alert topics readably")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest event kept")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--type", action="append", help="only events of this ce_type (repeatable)")
    p.add_argument("--source", action="append", help="only events of this source (repeatable)")
    p.add_argument("--account", action="append", help="only accounts matching this glob (repeatable)")
    p.set_defaults(func=cmd_tail)
    p = with_config("status", "every account in the state store: balance, last poll, alert state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("sandbox", help="a local emulator of both balance APIs")
    from watcher.sandbox.cli import add_sandbox_arguments

    add_sandbox_arguments(p)
    p.set_defaults(func=cmd_sandbox)
    p = sub.add_parser("rules", help="work with rules files")
    rules_sub = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    t = rules_sub.add_parser(
        "test", help="run rules tests: observed balances over time in, expected alert events out",
        description="Run each TOML rules test file through the real engine; print a diff on failure.",
    )
    t.add_argument("files", type=Path, nargs="+", help="rules test files (TOML)")
    t.set_defaults(func=cmd_rules_test)
    p = sub.add_parser("devkey", help="generate a development signing key and certificate for the sandbox")
    p.add_argument("--dir", type=Path, default=Path(".devkeys"), help="where to write them")
    p.add_argument("--password", default="devpassword", help="the PKCS#12 password")
    p.set_defaults(func=cmd_devkey)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"balance-watcher {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EX_OK
    return code
