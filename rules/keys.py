"""The keys of a `[[rules]]` table: how each value is read, and which keys each kind takes.

Each reader raises ValueError with a message saying what is wrong and what to write instead; the
loader prefixes it with the file, the rule and the key. A message starting with "[" or "." names a
part inside the value (e.g. "[0].from: ..." for a mute window).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from rules.annotations import check_template
from rules.durations import parse_duration
from rules.model import (
    BALANCE_STATES,
    CURRENCY_CODE,
    RULE_KINDS,
    RULE_NAME,
    SEVERITIES,
    STALE_PER,
    RuleKind,
    Severity,
    StalePer,
)
from rules.schedule import parse_mute

MONEY_HINT = 'use a decimal string such as "5000.00"'


def choices(values: Sequence[str]) -> str:
    """'a', 'b', 'c'"""
    return ", ".join(repr(v) for v in values)


def money(value: object) -> Decimal:
    """An exact amount from a decimal string or an integer; a TOML float is refused, as not exact."""
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a TOML float, which is not exact: {MONEY_HINT}")
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid amount {value!r}: {MONEY_HINT}")
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"invalid amount {value!r}: {MONEY_HINT}") from None
    if not amount.is_finite():
        raise ValueError(f"invalid amount {value!r}: {MONEY_HINT}")
    return amount


def positive_money(value: object) -> Decimal:
    """An amount greater than zero."""
    amount = money(value)
    if amount <= 0:
        raise ValueError(f"{amount} must be greater than zero")
    return amount


def percent(value: object) -> Decimal:
    """A percentage above 0 and at most 100, as a decimal string or an integer ("30", "12.5")."""
    if isinstance(value, float):
        raise ValueError(f'{value!r} is a TOML float, which is not exact: use a string such as "12.5"')
    try:
        amount = money(value)
    except ValueError:
        raise ValueError(f'invalid percentage {value!r}: use a number such as "30" or "12.5"') from None
    if not 0 < amount <= 100:
        raise ValueError(f"{amount} must be above 0 and at most 100")
    return amount


def name(value: object) -> str:
    """A rule name: letters, digits, '_', '.' and '-'."""
    if not isinstance(value, str) or not RULE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: use letters, digits, '_', '.' and '-'")
    return value


def kind(value: object) -> RuleKind:
    """One of the rule kinds."""
    for known in RULE_KINDS:
        if value == known:
            return known
    raise ValueError(f"unknown kind {value!r}: use one of {choices(RULE_KINDS)}")


def severity(value: object) -> Severity:
    """info, warning or critical."""
    for known in SEVERITIES:
        if value == known:
            return known
    raise ValueError(f"unknown severity {value!r}: use one of {choices(SEVERITIES)}")


def text(value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    if not value:
        raise ValueError("must not be empty")
    return value


def balance_type(value: object) -> str:
    """A balance type; "" is a real one: Mastercard's, which has none."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def currency(value: object) -> str:
    """An ISO 4217 code."""
    if not isinstance(value, str) or not CURRENCY_CODE.fullmatch(value):
        raise ValueError(f'{value!r} is not an ISO 4217 code such as "GBP" (three capital letters)')
    return value


def labels(value: object) -> tuple[tuple[str, str], ...]:
    """A table of strings, as sorted pairs."""
    if not isinstance(value, Mapping):
        raise ValueError(f'must be a table of strings such as {{ team = "treasury" }}, not {value!r}')
    for label, content in value.items():
        if not isinstance(content, str):
            raise ValueError(f"the value of {label!r} must be a string, not {content!r}")
    return tuple(sorted(value.items()))


def annotation_texts(value: object) -> tuple[tuple[str, str], ...]:
    """A table of strings whose placeholders are all known, as sorted pairs."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f'must be a table of strings such as {{ summary = "{{account}} is low" }}, not {value!r}'
        )
    for label, content in value.items():
        if not isinstance(content, str):
            raise ValueError(f".{label}: must be a string, not {content!r}")
        try:
            check_template(content)
        except ValueError as exc:
            raise ValueError(f".{label}: {exc}") from None
    return tuple(sorted(value.items()))


def duration(value: object) -> timedelta:
    """A duration greater than zero."""
    return parse_duration(value)


def duration_or_zero(value: object) -> timedelta:
    """A duration, zero allowed ("0s": the default)."""
    return parse_duration(value, allow_zero=True)


def balance_state(value: object) -> str:
    """A Mastercard balance state."""
    for known in BALANCE_STATES:
        if value == known:
            return known
    raise ValueError(f"unknown state {value!r}: use one of {choices(BALANCE_STATES)}")


def per(value: object) -> StalePer:
    """What a stale rule watches: each account, or the whole source."""
    for known in STALE_PER:
        if value == known:
            return known
    raise ValueError(f"unknown value {value!r}: use one of {choices(STALE_PER)}")


def rule_names(value: object) -> tuple[str, ...]:
    """A list of rule names."""
    if not isinstance(value, list):
        raise ValueError(f'must be a list of rule names such as ["gbp-prefund-low"], not {value!r}')
    return tuple(name(item) for item in value)


READERS: Mapping[str, Callable[[object], object]] = {
    "name": name,
    "kind": kind,
    "threshold": money,
    "severity": severity,
    "clear_above": money,
    "clear_below": money,
    "source": text,
    "account": text,
    "currency": currency,
    "balance_type": balance_type,
    "description": text,
    "labels": labels,
    "annotations": annotation_texts,
    "min_drop": positive_money,
    "min_drop_percent": percent,
    "window": duration,
    "min_change": positive_money,
    "state": balance_state,
    "after": duration,
    "per": per,
    "for": duration_or_zero,
    "keep_firing_for": duration_or_zero,
    "repeat": duration,
    "suppresses": rule_names,
    "mute": parse_mute,
}
RULE_KEYS: tuple[str, ...] = tuple(READERS)

# The keys only some kinds take; every other key is common to all kinds.
KIND_KEYS: Mapping[RuleKind, tuple[str, ...]] = {
    "below": ("threshold", "clear_above"),
    "above": ("threshold", "clear_below"),
    "drop": ("min_drop", "min_drop_percent", "window"),
    "change": ("min_change",),
    "state": ("state",),
    "stale": ("after", "per"),
}
SPECIFIC_KEYS = frozenset(key for keys in KIND_KEYS.values() for key in keys)
# What each kind needs, with a hint; `drop` needs min_drop or min_drop_percent besides (see the loader).
REQUIRED_BY_KIND: Mapping[RuleKind, Mapping[str, str]] = {
    "below": {"threshold": MONEY_HINT},
    "above": {"threshold": MONEY_HINT},
    "drop": {"window": 'how far back to look, such as "1h"'},
    "change": {"min_change": 'the smallest movement that counts, such as "1000.00"'},
    "state": {"state": f"use one of {choices(BALANCE_STATES)}"},
    "stale": {"after": 'how long without a successful poll, such as "15m"'},
}
