"""`balance-watcher tail`: read the change and alert topics back and print each event readably."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer

from watcher.config import Settings
from watcher.publisher import kafka_client_options

# Colour by type, and alerts by severity: critical stands out from a warning.
_SEVERITY_COLOURS = {"critical": "\x1b[1;31m", "warning": "\x1b[33m", "info": "\x1b[34m"}
_COLOURS = {
    "balance.changed": "\x1b[36m",
    "balance.alert.firing": "\x1b[31m",
    "balance.alert.resolved": "\x1b[32m",
}
_RESET = "\x1b[0m"


def _money(balance: dict[str, Any] | None) -> str:
    if not balance:
        return "-"
    suffix = balance.get("state") or balance.get("type") or ""
    return f"{balance.get('amount')} {balance.get('currency')} {suffix}".strip()


def describe(headers: dict[str, str], body: dict[str, Any]) -> str:
    """One readable line for one event."""
    ce_type = headers.get("ce_type", "?")
    subject = headers.get("ce_subject", "?")
    when = headers.get("ce_time", "?")
    if ce_type == "balance.changed":
        detail = f"{_money(body.get('previous'))} -> {_money(body.get('balance'))}"
    else:
        rule = body.get("rule", {})
        detail = (
            f"{rule.get('severity', '?')} {rule.get('name', '?')}"
            f" ({rule.get('kind')} {rule.get('threshold')}) balance {_money(body.get('balance'))}"
        )
        if "firing_seconds" in body:
            detail += f" after {body['firing_seconds']:.0f}s"
    corr = headers.get("ce_correlationid", "")
    return f"{when} {ce_type:<24} {subject} {detail} [correlation-id {corr}]"


async def tail(
    settings: Settings,
    from_beginning: bool,
    out: TextIO = sys.stdout,
    as_json: bool = False,
    types: Sequence[str] = (),
    sources: Sequence[str] = (),
    accounts: Sequence[str] = (),
    stop: asyncio.Event | None = None,
) -> int:
    """Print events until stopped: `stop` set, or when none is given, SIGINT (Ctrl-C) or SIGTERM.

    The handlers are installed here, not left to asyncio.run: a process started with SIGINT ignored
    (a background job of a script, nohup) would otherwise never stop on it."""
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _print_until(stop, settings, from_beginning, out, as_json, types, sources, accounts)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _print_until(
    stop: asyncio.Event,
    settings: Settings,
    from_beginning: bool,
    out: TextIO,
    as_json: bool,
    types: Sequence[str],
    sources: Sequence[str],
    accounts: Sequence[str],
) -> int:
    """tail's loop: the consumer, and a line per event that passes the filters, until `stop` is set."""
    topics = [settings.kafka.changes_topic, settings.kafka.alerts_topic]
    consumer = AIOKafkaConsumer(
        *topics,
        **kafka_client_options(settings.kafka),
        group_id=None,  # no consumer group: tail never moves anybody's committed offsets
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        metadata_max_age_ms=2000,  # pick up the topics soon after the daemon creates them
    )
    await consumer.start()
    colour = out.isatty() and not as_json
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                    if types and headers.get("ce_type") not in types:
                        continue
                    source, _, account = (record.key or b"").decode("utf-8", "replace").partition(":")
                    if sources and source not in sources:
                        continue
                    if accounts and not any(fnmatch.fnmatchcase(account, a) for a in accounts):
                        continue
                    try:
                        body = json.loads(record.value or b"{}")
                    except ValueError:
                        body = {}
                    if as_json:
                        line = json.dumps(
                            {"topic": record.topic, "key": (record.key or b"").decode(), "headers": headers,
                             "data": body}
                        )
                    else:
                        line = describe(headers, body)
                        if colour:
                            ce_type = headers.get("ce_type", "")
                            severity = str(body.get("rule", {}).get("severity", ""))
                            tint = (_SEVERITY_COLOURS.get(severity) if ce_type.endswith("firing") else None)
                            line = (tint or _COLOURS.get(ce_type, "")) + line + _RESET
                    print(line, file=out, flush=True)
    finally:
        await consumer.stop()
    return 0
