"""The rule model and its loader: valid files, every error naming file, rule and key, and rule scoping."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from rules.loader import RULE_KEYS, RulesError, load_rule_files, parse_rules
from rules.model import Rule, RuleSet, Scope
from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey

ROOT = Path(__file__).resolve().parent.parent
MONEY_HINT = 'use a decimal string such as "5000.00"'
KINDS = "use one of 'below', 'above', 'drop', 'change', 'state', 'stale'"
VALID = """
[[rules]]
name = "gbp-low"
kind = "below"
threshold = "5000.00"
"""


def parse(text: str, origin: str = "rules.toml") -> tuple[Rule, ...]:
    return parse_rules(tomllib.loads(text), origin)


def parse_error(text: str) -> str:
    with pytest.raises(RulesError) as caught:
        parse(text)
    return str(caught.value)


def rule_toml(**values: str) -> str:
    """One [[rules]] table: name gbp-low, kind below, threshold "5000.00", then the given TOML values."""
    base = {"name": '"gbp-low"', "kind": '"below"', "threshold": '"5000.00"'}
    base.update(values)
    lines = [f"{key} = {value}" for key, value in base.items() if value != "<absent>"]
    return "[[rules]]\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- valid files --------------------------------------------------------------------------------------


def test_minimal_rule_has_documented_defaults() -> None:
    """A rule with only name, kind and threshold is a warning with no scope, clearing at its threshold."""
    (rule,) = parse(VALID)
    assert rule == Rule(name="gbp-low", kind="below", threshold=Decimal("5000.00"))
    assert rule.severity == "warning"
    assert rule.scope == Scope()
    assert rule.clear_threshold == Decimal("5000.00")
    assert rule.description is None
    assert rule.labels == ()


def test_every_key_is_read() -> None:
    """Each documented key lands in its field, money as exact Decimals and labels as sorted pairs."""
    text = """
[[rules]]
name = "eur.card_low-1"
kind = "below"
threshold = "100.50"
clear_above = "120.25"
severity = "critical"
source = "mypos-*"
account = "505535*"
currency = "EUR"
balance_type = "available"
description = "Top up the card account."
labels = { team = "cards", escalation = "on-call" }
"""
    (rule,) = parse(text)
    assert rule == Rule(
        name="eur.card_low-1",
        kind="below",
        threshold=Decimal("100.50"),
        severity="critical",
        scope=Scope(source="mypos-*", account="505535*", currency="EUR", balance_type="available"),
        clear_above=Decimal("120.25"),
        description="Top up the card account.",
        labels=(("escalation", "on-call"), ("team", "cards")),
    )
    assert rule.clear_threshold == Decimal("120.25")
    # Every key of a `below` rule but the lifecycle ones, which tests/test_rules_kinds.py reads.
    written = {line.split(" = ")[0] for line in text.strip().splitlines()[1:]}
    lifecycle = {"for", "keep_firing_for", "repeat", "suppresses", "mute", "annotations"}
    other_kinds = {
        "clear_below",
        "min_drop",
        "min_drop_percent",
        "window",
        "min_change",
        "state",
        "after",
        "per",
    }
    assert set(RULE_KEYS) - lifecycle - other_kinds == written


@pytest.mark.parametrize(
    ("toml_value", "expected"),
    [
        ('"5000.00"', Decimal("5000.00")),
        ('"5000"', Decimal("5000")),
        ("5000", Decimal("5000")),
        ('" 42.10 "', Decimal("42.10")),
        ('"-1500.75"', Decimal("-1500.75")),
        ("-3", Decimal("-3")),
        ('"0"', Decimal("0")),
        ('"0.000001"', Decimal("0.000001")),
        ('"123456789012345678901234567890.12"', Decimal("123456789012345678901234567890.12")),
    ],
)
def test_thresholds_are_exact(toml_value: str, expected: Decimal) -> None:
    """Decimal strings and integers are read exactly, keeping the scale the user wrote."""
    (rule,) = parse(rule_toml(threshold=toml_value))
    assert rule.threshold == expected
    assert str(rule.threshold) == str(expected)


def test_above_rule_with_clear_below() -> None:
    """An `above` rule takes clear_below, at or under its threshold, as its clear point."""
    (rule,) = parse(rule_toml(kind='"above"', threshold='"200"', clear_below='"150.00"'))
    assert rule.kind == "above"
    assert rule.clear_below == Decimal("150.00")
    assert rule.clear_threshold == Decimal("150.00")


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [("below", "clear_above", '"5000.00"'), ("above", "clear_below", '"5000.00"')],
)
def test_clear_point_may_equal_threshold(kind: str, key: str, value: str) -> None:
    """A clear point equal to the threshold is allowed: it is the same as no hysteresis."""
    (rule,) = parse(rule_toml(kind=f'"{kind}"', **{key: value}))
    assert rule.clear_threshold == rule.threshold


def test_empty_balance_type_is_mastercards() -> None:
    """balance_type = "" is valid: it scopes a rule to providers with one balance per account."""
    (rule,) = parse(rule_toml(balance_type='""'))
    assert rule.scope.balance_type == ""


def test_empty_rules_array_is_allowed() -> None:
    """`rules = []` is a file with no rules, not an error (a placeholder file can be deployed)."""
    assert parse("rules = []\n") == ()


def test_rules_keep_file_order() -> None:
    """Rules come back in the order they are written."""
    text = rule_toml(name='"b"') + rule_toml(name='"a"') + rule_toml(name='"c"')
    assert [r.name for r in parse(text)] == ["b", "a", "c"]


def test_several_files_merge_in_order_with_origins(tmp_path: Path) -> None:
    """load_rule_files joins files in the given order and records which file each rule came from."""
    first = write(tmp_path, "a.toml", rule_toml(name='"one"') + rule_toml(name='"two"'))
    second = write(tmp_path, "b.toml", rule_toml(name='"three"'))
    ruleset = load_rule_files([first, second])
    assert [r.name for r in ruleset] == ["one", "two", "three"]
    assert ruleset.origins == (str(first), str(first), str(second))
    assert ruleset.origin_of("three") == str(second)
    assert ruleset.origin_of("missing") is None
    assert ruleset.get("two") == ruleset.rules[1]
    assert ruleset.get("missing") is None
    assert len(ruleset) == 3


def test_no_files_is_an_empty_ruleset() -> None:
    """With no rules files configured there are no rules, and no error."""
    assert load_rule_files([]) == RuleSet()


def test_ruleset_needs_one_origin_per_rule() -> None:
    """A RuleSet cannot be built with rules and origins out of step."""
    with pytest.raises(ValueError, match="one origin per rule"):
        RuleSet(rules=(Rule("a", "below", Decimal(1)),), origins=())


def test_example_rules_file_is_valid() -> None:
    """The rules file the demo ships with loads, and covers every kind and every scope key."""
    ruleset = load_rule_files([ROOT / "rules.example.toml"])
    names = {rule.name for rule in ruleset}
    assert {"gbp-prefund-low", "gbp-prefund-critical"} <= names
    by_name = {rule.name: rule for rule in ruleset}
    assert by_name["gbp-prefund-low"].threshold == Decimal("5000.00")
    assert by_name["gbp-prefund-low"].severity == "warning"
    assert by_name["gbp-prefund-critical"].threshold == Decimal("1000.00")
    assert by_name["gbp-prefund-critical"].severity == "critical"
    assert {rule.kind for rule in ruleset} == {"below", "above", "drop", "change", "state", "stale"}
    assert any(rule.scope.currency == "EUR" for rule in ruleset)
    assert any(rule.scope.account is not None for rule in ruleset)
    assert any(rule.scope.balance_type is not None for rule in ruleset)
    assert all(rule.scope.source is not None for rule in ruleset if rule.watches_balances)


# -- errors in one rule ----------------------------------------------------------------------------------

RULE = "rules.toml: rule 'gbp-low' (rules[0])"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"threshold": '"abc"'}, f"{RULE}: threshold: invalid amount 'abc': {MONEY_HINT}"),
        ({"threshold": '""'}, f"{RULE}: threshold: invalid amount '': {MONEY_HINT}"),
        ({"threshold": '"5,000.00"'}, f"{RULE}: threshold: invalid amount '5,000.00': {MONEY_HINT}"),
        ({"threshold": '"NaN"'}, f"{RULE}: threshold: invalid amount 'NaN': {MONEY_HINT}"),
        ({"threshold": '"Infinity"'}, f"{RULE}: threshold: invalid amount 'Infinity': {MONEY_HINT}"),
        ({"threshold": "true"}, f"{RULE}: threshold: invalid amount True: {MONEY_HINT}"),
        ({"threshold": "[1]"}, f"{RULE}: threshold: invalid amount [1]: {MONEY_HINT}"),
        (
            {"threshold": "5000.0"},
            f"{RULE}: threshold: 5000.0 is a TOML float, which is not exact: {MONEY_HINT}",
        ),
        (
            {"threshold": "0.1"},
            f"{RULE}: threshold: 0.1 is a TOML float, which is not exact: {MONEY_HINT}",
        ),
        ({"threshold": "<absent>"}, f"{RULE}: threshold: missing; {MONEY_HINT}"),
        ({"kind": "<absent>"}, f"{RULE}: kind: missing; {KINDS}"),
        ({"kind": '"under"'}, f"{RULE}: kind: unknown kind 'under': {KINDS}"),
        ({"kind": '"Below"'}, f"{RULE}: kind: unknown kind 'Below': {KINDS}"),
        ({"kind": "1"}, f"{RULE}: kind: unknown kind 1: {KINDS}"),
        (
            {"severity": '"high"'},
            f"{RULE}: severity: unknown severity 'high': use one of 'info', 'warning', 'critical'",
        ),
        (
            {"severity": '"Critical"'},
            f"{RULE}: severity: unknown severity 'Critical': use one of 'info', 'warning', 'critical'",
        ),
        ({"thresold": '"1"'}, f"{RULE}: thresold: unknown key; did you mean 'threshold'?"),
        ({"curency": '"GBP"'}, f"{RULE}: curency: unknown key; did you mean 'currency'?"),
        ({"colour": '"red"'}, f"{RULE}: colour: unknown key; valid keys: {', '.join(RULE_KEYS)}"),
        (
            {"clear_above": '"4999.99"'},
            f"{RULE}: clear_above: 4999.99 is below the threshold 5000.00; it must be at or above it",
        ),
        (
            {"clear_below": '"6000"'},
            f"{RULE}: clear_below: not for a 'below' rule, which clears at clear_above",
        ),
        (
            {"kind": '"above"', "clear_below": '"5000.01"'},
            f"{RULE}: clear_below: 5000.01 is above the threshold 5000.00; it must be at or below it",
        ),
        (
            {"kind": '"above"', "clear_above": '"4000"'},
            f"{RULE}: clear_above: not for a 'above' rule, which clears at clear_below",
        ),
        (
            {"clear_above": "5500.5"},
            f"{RULE}: clear_above: 5500.5 is a TOML float, which is not exact: {MONEY_HINT}",
        ),
        ({"clear_above": '"x"'}, f"{RULE}: clear_above: invalid amount 'x': {MONEY_HINT}"),
        (
            {"currency": '"gbp"'},
            f"{RULE}: currency: 'gbp' is not an ISO 4217 code such as \"GBP\" (three capital letters)",
        ),
        (
            {"currency": '"POUND"'},
            f"{RULE}: currency: 'POUND' is not an ISO 4217 code such as \"GBP\" (three capital letters)",
        ),
        ({"source": '""'}, f"{RULE}: source: must not be empty"),
        ({"source": "7"}, f"{RULE}: source: must be a string, not 7"),
        ({"account": "[1, 2]"}, f"{RULE}: account: must be a string, not [1, 2]"),
        ({"balance_type": "false"}, f"{RULE}: balance_type: must be a string, not False"),
        ({"description": "3"}, f"{RULE}: description: must be a string, not 3"),
        (
            {"labels": '"treasury"'},
            f"{RULE}: labels: must be a table of strings such as {{ team = \"treasury\" }}, not 'treasury'",
        ),
        ({"labels": "{ team = 1 }"}, f"{RULE}: labels: the value of 'team' must be a string, not 1"),
    ],
)
def test_rule_error_names_file_rule_and_key(values: dict[str, str], expected: str) -> None:
    """Every bad value is one line: the file, the rule by name and index, the key, and what to do."""
    assert parse_error(rule_toml(**values)) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"name": "<absent>"}, "rules.toml: rules[0]: name: missing; every rule needs a unique name"),
        (
            {"name": '"gbp low"'},
            "rules.toml: rules[0]: name: 'gbp low' is not a valid name: "
            "use letters, digits, '_', '.' and '-'",
        ),
        (
            {"name": '""'},
            "rules.toml: rules[0]: name: '' is not a valid name: use letters, digits, '_', '.' and '-'",
        ),
        (
            {"name": "12"},
            "rules.toml: rules[0]: name: 12 is not a valid name: use letters, digits, '_', '.' and '-'",
        ),
    ],
)
def test_rule_without_valid_name_is_named_by_index(values: dict[str, str], expected: str) -> None:
    """A rule with no usable name is named by its index, rules[N]."""
    assert parse_error(rule_toml(**values)) == expected


def test_index_counts_from_the_top_of_the_file() -> None:
    """The index in a message is the rule's position among all [[rules]] of its file."""
    text = rule_toml(name='"a"') + rule_toml(name='"b"') + rule_toml(name="<absent>", kind='"sideways"')
    assert parse_error(text).splitlines() == [
        f"rules.toml: rules[2]: kind: unknown kind 'sideways': {KINDS}",
        "rules.toml: rules[2]: name: missing; every rule needs a unique name",
    ]


def test_all_errors_of_a_file_are_reported() -> None:
    """Every problem of every rule is listed, one per line, in file order; not just the first."""
    text = (
        rule_toml(name='"a"', threshold="1.5", severity='"loud"')
        + rule_toml(name='"b"')
        + rule_toml(name='"c"', kind='"above"', clear_below='"9000"', extra='"x"')
    )
    assert parse_error(text).splitlines() == [
        f"rules.toml: rule 'a' (rules[0]): threshold: 1.5 is a TOML float, which is not exact: {MONEY_HINT}",
        "rules.toml: rule 'a' (rules[0]): severity: unknown severity 'loud': use one of 'info', 'warning', "
        "'critical'",
        f"rules.toml: rule 'c' (rules[2]): extra: unknown key; valid keys: {', '.join(RULE_KEYS)}",
        "rules.toml: rule 'c' (rules[2]): clear_below: 9000 is above the threshold 5000.00; "
        "it must be at or below it",
    ]


def test_duplicate_name_within_a_file() -> None:
    """Two rules of one name in one file: the second is reported, pointing at the first."""
    text = rule_toml(name='"dup"') + rule_toml(name='"other"') + rule_toml(name='"dup"')
    assert parse_error(text) == "rules.toml: rule 'dup' (rules[2]): name: 'dup' is already used by rules[0]"


# -- errors of a whole document or file ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "rules.toml: rules: missing; add [[rules]] tables"),
        (
            "title = 'x'\n",
            "rules.toml: title: unknown key; a rules file holds only [[rules]] tables\n"
            "rules.toml: rules: missing; add [[rules]] tables",
        ),
        ("rules = 5\n", "rules.toml: rules: must be an array of tables, written [[rules]]"),
        ("rules = ['a']\n", "rules.toml: rules: must be an array of tables, written [[rules]]"),
        ("[rules]\nname = 'a'\n", "rules.toml: rules: must be an array of tables, written [[rules]]"),
        (
            VALID + "[[rule]]\nname = 'b'\n",
            "rules.toml: rule: unknown key; a rules file holds only [[rules]] tables",
        ),
    ],
)
def test_document_shape_errors(text: str, expected: str) -> None:
    """A file without a [[rules]] array, or with other top-level keys, says so."""
    assert parse_error(text) == expected


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file is reported with its path and the system's reason."""
    path = tmp_path / "nope.toml"
    with pytest.raises(RulesError) as caught:
        load_rule_files([path])
    assert str(caught.value) == f"{path}: cannot read the rules file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as a rules file is an unreadable file, not a crash."""
    with pytest.raises(RulesError) as caught:
        load_rule_files([tmp_path])
    assert str(caught.value) == f"{tmp_path}: cannot read the rules file: Is a directory"


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    """Broken TOML is reported with the file and the line of the problem."""
    path = write(tmp_path, "rules.toml", '[[rules]]\nname = "a"\nkind = below\n')
    with pytest.raises(RulesError) as caught:
        load_rule_files([path])
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 3" in message
    assert "\n" not in message


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are a TOML error naming the file, not a UnicodeDecodeError."""
    path = tmp_path / "rules.toml"
    path.write_bytes(b'[[rules]]\nname = "\xff"\n')
    with pytest.raises(RulesError, match=r"not valid TOML: not UTF-8 text") as caught:
        load_rule_files([path])
    assert str(caught.value).startswith(f"{path}: ")


def test_file_errors_carry_the_file_path(tmp_path: Path) -> None:
    """Through load_rule_files, a rule's message starts with the path of its file."""
    path = write(tmp_path, "treasury.toml", rule_toml(threshold='"abc"'))
    with pytest.raises(RulesError) as caught:
        load_rule_files([path])
    assert str(caught.value) == (
        f"{path}: rule 'gbp-low' (rules[0]): threshold: invalid amount 'abc': {MONEY_HINT}"
    )


def test_duplicate_name_across_files(tmp_path: Path) -> None:
    """A name used in two files is reported against the later file, naming the earlier one."""
    first = write(tmp_path, "a.toml", rule_toml(name='"shared"'))
    second = write(tmp_path, "b.toml", rule_toml(name='"own"') + rule_toml(name='"shared"'))
    with pytest.raises(RulesError) as caught:
        load_rule_files([first, second])
    assert str(caught.value) == (
        f"{second}: rule 'shared' (rules[1]): name: 'shared' is already defined in {first}"
    )


def test_errors_of_every_file_are_reported(tmp_path: Path) -> None:
    """One bad file does not hide the problems of the next."""
    first = write(tmp_path, "a.toml", rule_toml(kind='"flat"'))
    missing = tmp_path / "missing.toml"
    third = write(tmp_path, "c.toml", rule_toml(severity='"meh"'))
    with pytest.raises(RulesError) as caught:
        load_rule_files([first, missing, third])
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(first), str(missing), str(third)]


def test_rules_error_is_a_value_error() -> None:
    """RulesError is a ValueError, so callers validating input can catch either."""
    assert issubclass(RulesError, ValueError)


# -- scope ------------------------------------------------------------------------------------------------

MC = BalanceKey("mc-gbp", "non_card_token:sbx-ptnr_demo-0001")
MC_BAL = Balance(Decimal("4000"), "GBP", IN_CREDIT)
MYPOS = BalanceKey("mypos-cards", "50553500971", "available")
MYPOS_BAL = Balance(Decimal("120.260"), "EUR", None, "available")
MYPOS_BOOKED = BalanceKey("mypos-cards", "50553500971", "booked")


@pytest.mark.parametrize(
    ("scope", "key", "balance", "expected"),
    [
        (Scope(), MC, MC_BAL, True),
        (Scope(), MYPOS, MYPOS_BAL, True),
        # source: a case-sensitive glob
        (Scope(source="mc-gbp"), MC, MC_BAL, True),
        (Scope(source="mc-*"), MC, MC_BAL, True),
        (Scope(source="mc-*"), MYPOS, MYPOS_BAL, False),
        (Scope(source="mc-gb"), MC, MC_BAL, False),
        (Scope(source="mc-gbp-2"), MC, MC_BAL, False),
        (Scope(source="MC-*"), MC, MC_BAL, False),
        (Scope(source="*"), MYPOS, MYPOS_BAL, True),
        (Scope(source="mc-???"), MC, MC_BAL, True),
        (Scope(source="mc-??"), MC, MC_BAL, False),
        (Scope(source="[lm][a-c]-*"), MC, MC_BAL, True),
        (Scope(source="[!m]*"), MC, MC_BAL, False),
        # account: a case-sensitive glob on the whole id
        (Scope(account="non_card_token:sbx-*"), MC, MC_BAL, True),
        (Scope(account="*-0001"), MC, MC_BAL, True),
        (Scope(account="*-0002"), MC, MC_BAL, False),
        (Scope(account="NON_CARD_TOKEN:*"), MC, MC_BAL, False),
        (Scope(account="non_card_token"), MC, MC_BAL, False),
        (Scope(account="505535*"), MYPOS, MYPOS_BAL, True),
        (Scope(account="5055350097?"), MYPOS, MYPOS_BAL, True),
        (Scope(account="505535009?"), MYPOS, MYPOS_BAL, False),
        (Scope(account="50553500971"), MYPOS, MYPOS_BAL, True),
        # currency: exact
        (Scope(currency="GBP"), MC, MC_BAL, True),
        (Scope(currency="EUR"), MC, MC_BAL, False),
        (Scope(currency="EUR"), MYPOS, MYPOS_BAL, True),
        # balance_type: exact, on the key; "" is Mastercard's
        (Scope(balance_type="available"), MYPOS, MYPOS_BAL, True),
        (Scope(balance_type="available"), MYPOS_BOOKED, MYPOS_BAL, False),
        (Scope(balance_type="booked"), MYPOS_BOOKED, MYPOS_BAL, True),
        (Scope(balance_type="available"), MC, MC_BAL, False),
        (Scope(balance_type=""), MC, MC_BAL, True),
        (Scope(balance_type=""), MYPOS, MYPOS_BAL, False),
        # together: every given field must match
        (Scope(source="mc-*", currency="GBP"), MC, MC_BAL, True),
        (Scope(source="mc-*", currency="EUR"), MC, MC_BAL, False),
        (Scope(source="mypos-*", currency="EUR", balance_type="available"), MYPOS, MYPOS_BAL, True),
        (Scope(source="mypos-*", currency="EUR", balance_type="booked"), MYPOS, MYPOS_BAL, False),
        (Scope(source="mypos-*", account="505535*", currency="GBP"), MYPOS, MYPOS_BAL, False),
        (Scope(source="mc-*", account="*0001", currency="GBP", balance_type=""), MC, MC_BAL, True),
    ],
)
def test_scope(scope: Scope, key: BalanceKey, balance: Balance, expected: bool) -> None:
    """A rule watches a balance when every scope field it sets matches; unset fields match anything."""
    rule = Rule("r", "below", Decimal("5000"), scope=scope)
    assert rule.matches(key, balance) is expected


@pytest.mark.parametrize(
    ("kind", "threshold", "clear", "amount", "state", "breached", "cleared"),
    [
        ("below", "5000", None, "4999.99", IN_CREDIT, True, False),
        ("below", "5000", None, "5000.00", IN_CREDIT, False, True),
        ("below", "5000", "5500", "5200", IN_CREDIT, False, False),
        ("below", "5000", "5500", "5500", IN_CREDIT, False, True),
        ("below", "0", None, "0.01", IN_DEBIT, True, False),
        ("below", "0", None, "0", IN_DEBIT, False, True),
        ("below", "100", None, "200", IN_DEBIT, True, False),
        ("above", "100", None, "100.01", IN_CREDIT, True, False),
        ("above", "100", None, "100", IN_CREDIT, False, True),
        ("above", "100", "80", "90", IN_CREDIT, False, False),
        ("above", "100", "80", "500", IN_DEBIT, False, True),
    ],
)
def test_rule_conditions_use_the_signed_amount(
    kind: str, threshold: str, clear: str | None, amount: str, state: str, breached: bool, cleared: bool
) -> None:
    """`breached` and `cleared` compare the signed amount (IN_DEBIT negative) with the threshold and
    the clear point."""
    clear_value = None if clear is None else Decimal(clear)
    rule = Rule(
        "r",
        "below" if kind == "below" else "above",
        Decimal(threshold),
        clear_above=clear_value if kind == "below" else None,
        clear_below=clear_value if kind == "above" else None,
    )
    balance = Balance(Decimal(amount), "GBP", state)
    assert rule.breached(balance) is breached
    assert rule.cleared(balance) is cleared


def test_balance_keys_hash_and_compare_by_their_three_fields() -> None:
    """Keys with the same source, account and balance type are equal and hash alike whatever their
    identity, any field apart makes them different, and a key never equals a plain tuple of its fields
    (from either side); its repr shows the three fields only."""
    key = BalanceKey("mc", "non_card_token:a", "")
    same = BalanceKey("mc", "non_card_" + "token:a")
    assert key is not same
    assert key == same
    assert hash(key) == hash(same)
    assert {key: 1}[same] == 1
    for other in (BalanceKey("mc2", "non_card_token:a"), BalanceKey("mc", "non_card_token:b"),
                  BalanceKey("mc", "non_card_token:a", "available")):
        assert key != other
    plain = ("mc", "non_card_token:a", "")
    assert key != plain
    assert plain != key
    assert not key == plain  # noqa: SIM201
    assert not plain == key  # noqa: SIM201
    assert key._replace(account="x") == BalanceKey("mc", "x")
    assert hash(key._replace(account="x")) == hash(BalanceKey("mc", "x"))
    assert repr(key) == "BalanceKey(source='mc', account='non_card_token:a', balance_type='')"
