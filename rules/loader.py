"""Reading rules files: TOML `[[rules]]` tables in, validated `Rule`s out, or every problem at once.

The only I/O of the rules package. Each error is one line naming the file, the rule (by name, else
by index) and the key, so `balance-watcher check` can print them as they are.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rules.compiled import check_suppressions
from rules.keys import KIND_KEYS, READERS, REQUIRED_BY_KIND, RULE_KEYS, SPECIFIC_KEYS, choices
from rules.model import RULE_KINDS, RULE_NAME, Rule, RuleKind, RuleSet, Scope

__all__ = ["RULE_KEYS", "RulesError", "load_rule_files", "parse_rules"]

# The clear-point key of each kind: a `below` rule clears above its threshold, an `above` rule below.
_CLEAR_KEY: Mapping[str, str] = {"below": "clear_above", "above": "clear_below"}
_REQUIRED: Mapping[str, str] = {
    "name": "every rule needs a unique name",
    "kind": f"use one of {choices(RULE_KINDS)}",
}


class RulesError(ValueError):
    """A rules file a user can fix; one line per problem, each naming the file, the rule and the key."""


def _keyed(key: str, exc: ValueError) -> str:
    message = str(exc)
    # A reader that names a part of the value ("[0].from: ...") is joined to the key without a space.
    return f"{key}{message}" if message[:1] in "[." else f"{key}: {message}"


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


def _clear_side_errors(kind: RuleKind, values: Mapping[str, Any]) -> list[str]:
    """A clear point must be on the safe side of the threshold."""
    threshold: Decimal | None = values.get("threshold")
    clear: Decimal | None = values.get(_CLEAR_KEY.get(kind, ""))
    if threshold is None or clear is None:
        return []
    key = _CLEAR_KEY[kind]
    if kind == "below" and clear < threshold:
        return [f"{key}: {clear} is below the threshold {threshold}; it must be at or above it"]
    if kind == "above" and clear > threshold:
        return [f"{key}: {clear} is above the threshold {threshold}; it must be at or below it"]
    return []


def _kind_errors(kind: RuleKind, table: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """The keys a kind needs and the keys it does not take."""
    errors: list[str] = []
    own = KIND_KEYS[kind]
    for key in table:
        if key not in SPECIFIC_KEYS or key in own:
            continue
        if kind in _CLEAR_KEY and key in _CLEAR_KEY.values():
            errors.append(f"{key}: not for a {kind!r} rule, which clears at {_CLEAR_KEY[kind]}")
        else:
            errors.append(f"{key}: not for a {kind!r} rule, which takes {', '.join(own)}")
    errors.extend(
        f"{key}: missing; {hint}" for key, hint in REQUIRED_BY_KIND[kind].items() if key not in table
    )
    if kind == "drop" and "min_drop" not in table and "min_drop_percent" not in table:
        errors.append(
            'min_drop: missing; a drop rule needs min_drop (an amount such as "1000.00"), '
            'min_drop_percent (such as "30") or both'
        )
    if kind == "stale":
        errors.extend(
            f"{key}: not for a 'stale' rule, which watches polls: scope it by source and account"
            for key in ("currency", "balance_type")
            if key in table
        )
        if values.get("per") == "source" and "account" in table:
            errors.append("account: not for a stale rule per source, which watches the whole source")
    errors.extend(_clear_side_errors(kind, values))
    return errors


def _parse_rule(table: Mapping[str, Any]) -> tuple[Rule | None, list[str]]:
    """Validate one [[rules]] table; return the rule, or None and every problem as "key: message"."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, raw in table.items():
        reader = READERS.get(key)
        if reader is None:
            errors.append(f"{key}: {_unknown_key(key)}")
            continue
        try:
            values[key] = reader(raw)
        except ValueError as exc:
            errors.append(_keyed(key, exc))
    errors.extend(f"{key}: missing; {hint}" for key, hint in _REQUIRED.items() if key not in table)
    kind: RuleKind | None = values.get("kind")
    if kind is not None:
        errors.extend(_kind_errors(kind, table, values))
    if errors or kind is None:
        return None, errors
    scope = Scope(
        source=values.get("source"),
        account=values.get("account"),
        currency=values.get("currency"),
        balance_type=values.get("balance_type"),
    )
    rule = Rule(
        name=values["name"],
        kind=kind,
        threshold=values.get("threshold"),
        severity=values.get("severity", "warning"),
        scope=scope,
        clear_above=values.get("clear_above"),
        clear_below=values.get("clear_below"),
        description=values.get("description"),
        labels=values.get("labels", ()),
        min_drop=values.get("min_drop"),
        min_drop_percent=values.get("min_drop_percent"),
        window=values.get("window"),
        min_change=values.get("min_change"),
        state=values.get("state"),
        after=values.get("after"),
        per=values.get("per", "account"),
        for_duration=values.get("for", timedelta(0)),
        keep_firing_for=values.get("keep_firing_for", timedelta(0)),
        repeat=values.get("repeat"),
        suppresses=values.get("suppresses", ()),
        mute=values.get("mute", ()),
        annotations=values.get("annotations", ()),
    )
    return rule, []


def _reference_errors(rules: Sequence[Rule], labels: Mapping[str, str]) -> list[str]:
    """`suppresses` problems across a whole rule set, each as "{label}: suppresses: message"."""
    errors: list[str] = []
    for rule_name, message in check_suppressions(rules):
        errors.append(f"{labels[rule_name]}: suppresses: {message}")
    return errors


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

    Rule names must be unique across all the files, since alerts are identified by them; the names
    in `suppresses` must exist (in any of the files) and must not form a cycle.
    """
    errors: list[str] = []
    rules: list[Rule] = []
    origins: list[str] = []
    labels: dict[str, str] = {}
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
            labels[rule.name] = f"{origin}: rule {rule.name!r} (rules[{index}])"
            rules.append(rule)
            origins.append(origin)
    if not errors:
        # Only now that every file is read: a rule may suppress one defined in another file.
        errors = _reference_errors(rules, labels)
    if errors:
        raise RulesError("\n".join(errors))
    return RuleSet(rules=tuple(rules), origins=tuple(origins))
