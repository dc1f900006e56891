"""`balance-watcher tail`: read the change and alert topics back and print each event readably."""

from __future__ import annotations

import fnmatch
import itertools
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from watcher.config import Settings
from watcher.publisher import kafka_client_options
from watcher.stop_signals import stop_on_signals

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
) -> int:
    """Print events until SIGINT (Ctrl-C) or SIGTERM."""
    topics = [settings.kafka.changes_topic, settings.kafka.alerts_topic]
    consumer = AIOKafkaConsumer(
        *topics,
        **kafka_client_options(settings.kafka),
        group_id=None,  # no consumer group: tail never moves anybody's committed offsets
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        metadata_max_age_ms=2000,  # pick up the topics soon after the daemon creates them
    )
    colour = out.isatty() and not as_json
    with stop_on_signals() as stop:
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500)
                for record in itertools.chain.from_iterable(batches.values()):
                    line = _line(record, as_json, colour, types, sources, accounts)
                    if line is not None:
                        print(line, file=out, flush=True)
        finally:
            await consumer.stop()
    return 0


def _line(
    record: ConsumerRecord[bytes, bytes],
    as_json: bool,
    colour: bool,
    types: Sequence[str],
    sources: Sequence[str],
    accounts: Sequence[str],
) -> str | None:
    """The line tail prints for one event; None when the filters leave it out."""
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
    if types and headers.get("ce_type") not in types:
        return None
    source, _, account = (record.key or b"").decode("utf-8", "replace").partition(":")
    if sources and source not in sources:
        return None
    if accounts and not any(fnmatch.fnmatchcase(account, a) for a in accounts):
        return None
    try:
        body = json.loads(record.value or b"{}")
    except ValueError:
        body = {}
    if as_json:
        return json.dumps(
            {"topic": record.topic, "key": (record.key or b"").decode(), "headers": headers, "data": body}
        )
    line = describe(headers, body)
    if colour:
        ce_type = headers.get("ce_type", "")
        severity = str(body.get("rule", {}).get("severity", ""))
        tint = _SEVERITY_COLOURS.get(severity) if ce_type.endswith("firing") else None
        line = (tint or _COLOURS.get(ce_type, "")) + line + _RESET
    return line
