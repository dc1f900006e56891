"""Annotations: per-rule texts for whoever receives the alert (a summary, a runbook URL), with
placeholders the engine fills in for each alert, e.g. "{account} is at {amount} {currency}".

Placeholders are checked when the rules load; `{{` and `}}` write literal braces. A value the alert
does not have (the amount of a source that never answered) renders as "n/a".
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from rules.durations import format_duration
from rules.model import Rule
from rules.types import Balance, BalanceKey

PLACEHOLDERS: Mapping[str, str] = {
    "rule": "the rule's name",
    "severity": "info, warning or critical",
    "kind": "the rule's kind",
    "source": "the configured source name",
    "account": "the account id (non_card_token or accountNumber; * for a whole source)",
    "balance_type": "myPOS balance type, empty for Mastercard",
    "amount": "the signed amount (IN_DEBIT is negative)",
    "currency": "the ISO currency code",
    "state": "Mastercard IN_CREDIT / IN_DEBIT",
    "threshold": "what the rule compares with: its threshold, min_drop, min_change, state or after",
    "clear": "the amount at which a below/above alert resolves",
    "previous": "the amount before the latest change",
    "change": "the latest movement, signed",
    "peak": "drop rules: the highest amount within the window",
    "drop": "drop rules: how far the amount fell from the peak",
    "window": "drop rules: the window",
    "after": "stale rules: how long without a successful poll",
    "last_success": "stale rules: the last successful poll (UTC), or never",
    "reason": "stale rules: why (the provider's reason when access was revoked)",
    "started_at": "when the alert started firing (UTC)",
}
MISSING = "n/a"
_FORMATTER = string.Formatter()


def check_template(text: str) -> None:
    """Raise ValueError naming the first unknown or malformed placeholder."""
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}; write {{{{ and }}}} for literal braces") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}}; use one of {', '.join(PLACEHOLDERS)}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format; write it as {{{name}}}")


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return MISSING


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def threshold_text(rule: Rule) -> str | None:
    """What the rule compares with, as one short text (the event's threshold; the {threshold} value)."""
    if rule.kind in ("below", "above"):
        return None if rule.threshold is None else str(rule.threshold)
    if rule.kind == "drop":
        parts = [str(rule.min_drop)] if rule.min_drop is not None else []
        if rule.min_drop_percent is not None:
            parts.append(f"{rule.min_drop_percent}%")
        return " and ".join(parts) or None
    if rule.kind == "change":
        return None if rule.min_change is None else str(rule.min_change)
    if rule.kind == "state":
        return rule.state
    return None if rule.after is None else format_duration(rule.after)


def render_annotations(
    rule: Rule,
    key: BalanceKey,
    *,
    balance: Balance | None = None,
    previous: Balance | None = None,
    peak: Decimal | None = None,
    last_success: datetime | None = None,
    reason: str | None = None,
    started_at: datetime | None = None,
) -> tuple[tuple[str, str], ...]:
    """The rule's annotations with every placeholder filled in for one alert of that key."""
    if not rule.annotations:
        return ()
    values = _Values(
        rule=rule.name,
        severity=rule.severity,
        kind=rule.kind,
        source=key.source,
        account=key.account,
        balance_type=key.balance_type,
    )
    threshold = threshold_text(rule)
    if threshold is not None:
        values["threshold"] = threshold
    if rule.kind in ("below", "above") and rule.threshold is not None:
        values["clear"] = str(rule.clear_threshold)
    if rule.window is not None:
        values["window"] = format_duration(rule.window)
    if rule.after is not None:
        values["after"] = format_duration(rule.after)
    if balance is not None:
        values["amount"] = str(balance.signed_amount)
        values["currency"] = balance.currency
        if balance.state is not None:
            values["state"] = balance.state
    if previous is not None:
        values["previous"] = str(previous.signed_amount)
        if balance is not None and previous.currency == balance.currency:
            values["change"] = str(balance.signed_amount - previous.signed_amount)
    if peak is not None:
        values["peak"] = str(peak)
        if balance is not None:
            values["drop"] = str(peak - balance.signed_amount)
    if rule.kind == "stale":
        values["last_success"] = _utc(last_success) if last_success is not None else "never"
    if reason is not None:
        values["reason"] = reason
    if started_at is not None:
        values["started_at"] = _utc(started_at)
    return tuple((name, text.format_map(values)) for name, text in rule.annotations)
