"""Reading rules files: TOML `[[rules]]` tables in, validated `Rule`s out, or every problem at once.

The only I/O of the rules package. Each error is one line naming the file, the rule (by name, else
by index) and the key, so `balance-watcher check` can print them as they are.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rules.model import (
    CURRENCY_CODE,
    RULE_KINDS,
    RULE_NAME,
    SEVERITIES,
    Rule,
    RuleKind,
    RuleSet,
    Scope,
    Severity,
)

# The clear-point key of each kind: a `below` rule clears above its threshold, an `above` rule below.
_CLEAR_KEY: Mapping[RuleKind, str] = {"below": "clear_above", "above": "clear_below"}
_MONEY_HINT = 'use a decimal string such as "5000.00"'


class RulesError(ValueError):
    """A rules file a user can fix; one line per problem, each naming the file, the rule and the key."""


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _money(value: object) -> Decimal:
    # A TOML float is refused: 0.1 is not exactly 0.1, and money must be.
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a TOML float, which is not exact: {_MONEY_HINT}")
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid amount {value!r}: {_MONEY_HINT}")
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"invalid amount {value!r}: {_MONEY_HINT}") from None
    if not amount.is_finite():
        raise ValueError(f"invalid amount {value!r}: {_MONEY_HINT}")
    return amount


def _name(value: object) -> str:
    if not isinstance(value, str) or not RULE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: use letters, digits, '_', '.' and '-'")
    return value


def _kind(value: object) -> RuleKind:
    for kind in RULE_KINDS:
        if value == kind:
            return kind
    raise ValueError(f"unknown kind {value!r}: use one of {_choices(RULE_KINDS)}")


def _severity(value: object) -> Severity:
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise ValueError(f"unknown severity {value!r}: use one of {_choices(SEVERITIES)}")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    if not value:
        raise ValueError("must not be empty")
    return value


def _balance_type(value: object) -> str:
    # "" is a real balance type: Mastercard's, which has none.
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def _currency(value: object) -> str:
    if not isinstance(value, str) or not CURRENCY_CODE.fullmatch(value):
        raise ValueError(f'{value!r} is not an ISO 4217 code such as "GBP" (three capital letters)')
    return value


def _labels(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f'must be a table of strings such as {{ team = "treasury" }}, not {value!r}')
    for label, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"the value of {label!r} must be a string, not {text!r}")
    return tuple(sorted(value.items()))


_PARSERS: Mapping[str, Callable[[object], object]] = {
    "name": _name,
    "kind": _kind,
    "threshold": _money,
    "severity": _severity,
    "clear_above": _money,
    "clear_below": _money,
    "source": _text,
    "account": _text,
    "currency": _currency,
    "balance_type": _balance_type,
    "description": _text,
    "labels": _labels,
}
RULE_KEYS: tuple[str, ...] = tuple(_PARSERS)
_REQUIRED: Mapping[str, str] = {
    "name": "every rule needs a unique name",
    "kind": f"use one of {_choices(RULE_KINDS)}",
    "threshold": _MONEY_HINT,
}


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, RULE_KEYS, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; valid keys: {', '.join(RULE_KEYS)}"


def _rule_label(table: Mapping[str, Any], index: int) -> str:
    name = table.get("name")
    if isinstance(name, str) and RULE_NAME.fullmatch(name):
        return f"rule {name!r} (rules[{index}])"
    return f"rules[{index}]"


def _clear_side_errors(values: Mapping[str, Any]) -> list[str]:
    """A clear point must be the one key of its rule's kind, on the safe side of the threshold."""
    kind: RuleKind | None = values.get("kind")
    threshold: Decimal | None = values.get("threshold")
    if kind is None:
        return []
    errors: list[str] = []
    own_key = _CLEAR_KEY[kind]
    for key in ("clear_above", "clear_below"):
        clear: Decimal | None = values.get(key)
        if clear is None:
            continue
        if key != own_key:
            errors.append(f"{key}: not for a {kind!r} rule, which clears at {own_key}")
        elif threshold is not None and kind == "below" and clear < threshold:
            errors.append(f"{key}: {clear} is below the threshold {threshold}; it must be at or above it")
        elif threshold is not None and kind == "above" and clear > threshold:
            errors.append(f"{key}: {clear} is above the threshold {threshold}; it must be at or below it")
    return errors


def _parse_rule(table: Mapping[str, Any]) -> tuple[Rule | None, list[str]]:
    """Validate one [[rules]] table; return the rule, or None and every problem as "key: message"."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, raw in table.items():
        parser = _PARSERS.get(key)
        if parser is None:
            errors.append(f"{key}: {_unknown_key(key)}")
            continue
        try:
            values[key] = parser(raw)
        except ValueError as exc:
            errors.append(f"{key}: {exc}")
    errors.extend(f"{key}: missing; {hint}" for key, hint in _REQUIRED.items() if key not in table)
    errors.extend(_clear_side_errors(values))
    if errors:
        return None, errors
    scope = Scope(
        source=values.get("source"),
        account=values.get("account"),
        currency=values.get("currency"),
        balance_type=values.get("balance_type"),
    )
    rule = Rule(
        name=values["name"],
        kind=values["kind"],
        threshold=values["threshold"],
        severity=values.get("severity", "warning"),
        scope=scope,
        clear_above=values.get("clear_above"),
        clear_below=values.get("clear_below"),
        description=values.get("description"),
        labels=values.get("labels", ()),
    )
    return rule, []


def parse_rules(data: Mapping[str, Any], origin: str) -> tuple[Rule, ...]:
    """Validate a parsed rules document; raise RulesError listing every problem, one per line.

    `origin` names the document in messages (the file path). Rule names must be unique within it.
    """
    errors: list[str] = []
    for key in data:
        if key != "rules":
            errors.append(f"{origin}: {key}: unknown key; a rules file holds only [[rules]] tables")
    tables = data.get("rules")
    if tables is None:
        errors.append(f"{origin}: rules: missing; add [[rules]] tables")
        raise RulesError("\n".join(errors))
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        errors.append(f"{origin}: rules: must be an array of tables, written [[rules]]")
        raise RulesError("\n".join(errors))

    result: list[Rule] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(tables):
        label = _rule_label(table, index)
        rule, problems = _parse_rule(table)
        errors.extend(f"{origin}: {label}: {problem}" for problem in problems)
        name = table.get("name")
        if isinstance(name, str) and RULE_NAME.fullmatch(name):
            if name in first_index:
                first = first_index[name]
                errors.append(f"{origin}: {label}: name: {name!r} is already used by rules[{first}]")
            else:
                first_index[name] = index
        if rule is not None:
            result.append(rule)
    if errors:
        raise RulesError("\n".join(errors))
    return tuple(result)


def _read(path: Path) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise RulesError(f"{path}: not valid TOML: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML: {exc}") from None


def load_rule_files(paths: Sequence[Path]) -> RuleSet:
    """Read, validate and merge rules files in order; raise RulesError with every problem of every file.

    Rule names must be unique across all the files, since alerts are identified by them.
    """
    errors: list[str] = []
    rules: list[Rule] = []
    origins: list[str] = []
    defined_in: dict[str, str] = {}
    for path in paths:
        origin = str(path)
        try:
            parsed = parse_rules(_read(path), origin)
        except RulesError as exc:
            errors.append(str(exc))
            continue
        for index, rule in enumerate(parsed):
            if rule.name in defined_in:
                errors.append(
                    f"{origin}: rule {rule.name!r} (rules[{index}]): name: "
                    f"{rule.name!r} is already defined in {defined_in[rule.name]}"
                )
                continue
            defined_in[rule.name] = origin
            rules.append(rule)
            origins.append(origin)
    if errors:
        raise RulesError("\n".join(errors))
    return RuleSet(rules=tuple(rules), origins=tuple(origins))
