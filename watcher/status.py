"""`balance-watcher status`: every account from the state store, as a table or as JSON."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from watcher.config import Settings
from watcher.events import rfc3339
from watcher.store import StateStore


def _when(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


async def collect_status(store: StateStore) -> list[dict[str, Any]]:
    """One row per tracked balance, with the latest call that covered it and its alert states."""
    polls = {(r.source, r.target): r for r in await store.poll_records()}
    rows: list[dict[str, Any]] = []
    for key, known in sorted(store.all_known().items(), key=lambda kv: (kv[0].source, kv[0].account)):
        # A partner-wide listing is recorded under the target "*".
        poll = polls.get((key.source, key.account)) or polls.get((key.source, "*"))
        alerts = store.alerts(key)
        rows.append(
            {
                "source": key.source,
                "account": key.account,
                "balance_type": key.balance_type or None,
                "amount": str(known.balance.amount),
                "currency": known.balance.currency,
                "state": known.balance.state,
                "changed_at": _when(known.observed_at),
                "last_poll_at": _when(poll.polled_at) if poll else None,
                "last_outcome": poll.outcome if poll else None,
                "last_success_at": _when(poll.last_success_at) if poll else None,
                "alerts_firing": sorted(a.rule for a in alerts.values() if a.status == "firing"),
                "alerts_pending": sorted(a.rule for a in alerts.values() if a.status == "pending"),
                "alerts_withheld": sorted(
                    a.rule for a in alerts.values() if a.status == "firing" and (a.muted or a.suppressed_by)
                ),
            }
        )
    return rows


async def print_status(settings: Settings, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    store = StateStore(settings.state.path)
    await store.open()
    try:
        rows = await collect_status(store)
    finally:
        await store.close()
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    table = Table(title=f"balance-watcher: {len(rows)} balance(s) in {settings.state.path}")
    for header in ("source", "account", "type", "balance", "last poll", "outcome", "alerts"):
        table.add_column(header, justify="right" if header == "balance" else "left")
    for r in rows:
        alerts = [f"[red]{name}[/red]" for name in r["alerts_firing"]]
        alerts += [f"[yellow]{name} (pending)[/yellow]" for name in r["alerts_pending"]]
        outcome = r["last_outcome"] or "-"
        table.add_row(
            escape(r["source"]),
            escape(r["account"]),  # provider ids are data, never markup
            r["balance_type"] or "",
            f"{r['amount']} {r['currency']} {r['state'] or ''}".strip(),
            r["last_poll_at"] or "never",
            outcome if outcome == "ok" else f"[red]{outcome}[/red]",
            ", ".join(alerts) or "-",
        )
    Console(file=out, width=200 if not out.isatty() else None).print(table)
    return 0
