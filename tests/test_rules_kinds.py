"""The rule kinds beyond thresholds (drop, change, state, stale) and the lifecycle keys: how they load,
how each error names the file, the rule and the key, and when each kind's condition holds."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from rules.compiled import compile_rules
from rules.conditions import Reading, judge_of, peak_since, remember
from rules.loader import RulesError, load_rule_files, parse_rules
from rules.model import Rule, Scope
from rules.schedule import DailyWindow
from rules.types import IN_CREDIT, IN_DEBIT, Balance

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
RULE = "rules.toml: rule 'r' (rules[0])"


def parse(text: str) -> tuple[Rule, ...]:
    return parse_rules(tomllib.loads(text), "rules.toml")


def error_of(text: str) -> str:
    with pytest.raises(RulesError) as caught:
        parse(text)
    return str(caught.value)


def table(kind: str, **values: str) -> str:
    """One [[rules]] table named r of that kind, with the given TOML values."""
    lines = ['name = "r"', f'kind = "{kind}"', *(f"{key} = {value}" for key, value in values.items())]
    return "[[rules]]\n" + "\n".join(lines) + "\n"


# -- loading every kind --------------------------------------------------------------------------------


def test_drop_rule_loads() -> None:
    """A drop rule takes an amount, a percentage (or both) and a window, exactly."""
    (rule,) = parse(table("drop", min_drop='"1000.00"', min_drop_percent='"30"', window='"1h"'))
    assert (rule.kind, rule.min_drop, rule.min_drop_percent) == ("drop", Decimal("1000.00"), Decimal(30))
    assert rule.window == timedelta(hours=1)
    assert rule.threshold is None


def test_change_state_and_stale_rules_load() -> None:
    """change takes min_change; state takes a Mastercard state; stale takes after and per."""
    text = (
        table("change", min_change='"250.00"')
        + table("state", state='"IN_DEBIT"').replace('"r"', '"s"')
        + table("stale", after='"15m"', per='"source"', source='"mc-*"').replace('"r"', '"t"')
    )
    change, state, stale = parse(text)
    assert change.min_change == Decimal("250.00")
    assert state.state == IN_DEBIT
    assert (stale.after, stale.per, stale.scope) == (timedelta(minutes=15), "source", Scope(source="mc-*"))


def test_lifecycle_keys_load() -> None:
    """for, keep_firing_for, repeat, suppresses, mute and annotations land in their fields."""
    text = table(
        "below",
        threshold='"1000"',
        **{
            "for": '"2m"',
            "keep_firing_for": '"10m"',
            "repeat": '"4h"',
            "suppresses": '["warn"]',
            "mute": '[{ days = ["mon"], from = "01:00", to = "02:30", timezone = "Europe/London" }]',
            "annotations": '{ summary = "{account} is at {amount} {currency}", runbook_url = "https://rb" }',
        },
    )
    (rule,) = parse(text)
    assert rule.for_duration == timedelta(minutes=2)
    assert rule.keep_firing_for == timedelta(minutes=10)
    assert rule.repeat == timedelta(hours=4)
    assert rule.suppresses == ("warn",)
    (window,) = rule.mute
    assert isinstance(window, DailyWindow)
    assert (window.days, window.start, window.end, window.timezone) == (
        frozenset({0}),
        60,
        150,
        "Europe/London",
    )
    assert rule.annotations == (
        ("runbook_url", "https://rb"),
        ("summary", "{account} is at {amount} {currency}"),
    )


def test_lifecycle_defaults() -> None:
    """Without lifecycle keys a rule fires at once, resolves at once, never repeats, is never muted."""
    (rule,) = parse(table("below", threshold='"1"'))
    assert (rule.for_duration, rule.keep_firing_for, rule.repeat) == (timedelta(0), timedelta(0), None)
    assert (rule.suppresses, rule.mute, rule.annotations, rule.per) == ((), (), (), "account")


# -- errors, each naming file, rule and key --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (table("drop", window='"1h"'), f"{RULE}: min_drop: missing; a drop rule needs min_drop"),
        (table("drop", min_drop='"5"'), f'{RULE}: window: missing; how far back to look, such as "1h"'),
        (table("drop", min_drop='"0"', window='"1h"'), f"{RULE}: min_drop: 0 must be greater than zero"),
        (
            table("drop", min_drop_percent='"130"', window='"1h"'),
            f"{RULE}: min_drop_percent: 130 must be above 0 and at most 100",
        ),
        (
            table("drop", min_drop_percent="30.5", window='"1h"'),
            f"{RULE}: min_drop_percent: 30.5 is a TOML float, which is not exact",
        ),
        (
            table("drop", min_drop='"5"', window='"1 hour"'),
            f"{RULE}: window: invalid duration '1 hour': use a number and a unit",
        ),
        (
            table("drop", min_drop='"5"', window='"1h"', threshold='"5"'),
            f"{RULE}: threshold: not for a 'drop' rule, which takes min_drop, min_drop_percent, window",
        ),
        (table("change"), f"{RULE}: min_change: missing; the smallest movement that counts"),
        (table("change", min_change='"-3"'), f"{RULE}: min_change: -3 must be greater than zero"),
        (table("state"), f"{RULE}: state: missing; use one of 'IN_CREDIT', 'IN_DEBIT'"),
        (table("state", state='"OVERDRAWN"'), f"{RULE}: state: unknown state 'OVERDRAWN': use one of"),
        (table("stale"), f'{RULE}: after: missing; how long without a successful poll, such as "15m"'),
        (table("stale", after='"0s"'), f"{RULE}: after: duration '0s' must be greater than zero"),
        (table("stale", after='"5m"', per='"bank"'), f"{RULE}: per: unknown value 'bank': use one of"),
        (
            table("stale", after='"5m"', currency='"GBP"'),
            f"{RULE}: currency: not for a 'stale' rule, which watches polls",
        ),
        (
            table("stale", after='"5m"', per='"source"', account='"x*"'),
            f"{RULE}: account: not for a stale rule per source",
        ),
        (
            table("below", threshold='"1"', min_change='"1"'),
            f"{RULE}: min_change: not for a 'below' rule, which takes threshold, clear_above",
        ),
        (table("below", threshold='"1"', **{"for": '"soon"'}), f"{RULE}: for: invalid duration 'soon'"),
        (table("below", threshold='"1"', repeat='"0s"'), f"{RULE}: repeat: duration '0s' must be greater"),
        (table("below", threshold='"1"', suppresses='"warn"'), f"{RULE}: suppresses: must be a list of rule"),
        (table("below", threshold='"1"', suppresses='["a b"]'), f"{RULE}: suppresses: 'a b' is not a valid"),
        (
            table("below", threshold='"1"', annotations='{ summary = "{amont} left" }'),
            f"{RULE}: annotations.summary: unknown placeholder {{amont}}; use one of rule, severity",
        ),
        (
            table("below", threshold='"1"', annotations='{ summary = "{amount:.2f}" }'),
            f"{RULE}: annotations.summary: placeholder {{amount}} takes no format",
        ),
        (
            table("below", threshold='"1"', annotations='{ summary = "{amount" }'),
            f"{RULE}: annotations.summary: '{{amount': ",
        ),
        (
            table("below", threshold='"1"', annotations="{ summary = 3 }"),
            f"{RULE}: annotations.summary: must be",
        ),
        (
            table("below", threshold='"1"', mute='[{ from = "25:00", to = "02:00" }]'),
            f"{RULE}: mute[0].from: '25:00' is not a time of day",
        ),
        (
            table("below", threshold='"1"', mute='[{ from = "01:00" }]'),
            f"{RULE}: mute[0].to: missing; a daily window needs from and to",
        ),
        (
            table("below", threshold='"1"', mute='[{ from = "01:00", to = "01:00" }]'),
            f"{RULE}: mute[0].to: equals from, an empty window",
        ),
        (
            table(
                "below", threshold='"1"', mute='[{ from = "01:00", to = "02:00", timezone = "Mars/Base" }]'
            ),
            f"{RULE}: mute[0].timezone: unknown time zone 'Mars/Base'",
        ),
        (
            table("below", threshold='"1"', mute='[{ days = ["funday"], from = "01:00", to = "02:00" }]'),
            f"{RULE}: mute[0].days: unknown day 'funday'",
        ),
        (
            table("below", threshold='"1"', mute='[{ cron = "61 * * * *" }]'),
            f"{RULE}: mute[0].cron: '61 * * * *': minute: '61' is not a value from 0 to 59",
        ),
        (
            table("below", threshold='"1"', mute='[{ cron = "* * *" }]'),
            f"{RULE}: mute[0].cron: '* * *' has 3 fields; a cron expression has five",
        ),
        (
            table("below", threshold='"1"', mute='[{ cron = "* * * * *", from = "01:00" }]'),
            f"{RULE}: mute[0].from: unknown key; a cron window takes cron and timezone",
        ),
        (table("below", threshold='"1"', mute='"nightly"'), f"{RULE}: mute: must be a list of tables"),
    ],
)
def test_errors_name_file_rule_and_key(text: str, expected: str) -> None:
    """Each problem of the new kinds and keys is one line starting with file, rule and key (and the
    part of the value at fault), saying what to write instead."""
    assert error_of(text).startswith(expected)


def test_suppressing_an_unknown_rule_is_an_error(tmp_path: Path) -> None:
    """`suppresses` must name rules that exist in one of the files; the message names file and rule."""
    path = tmp_path / "rules.toml"
    path.write_text(table("below", threshold='"1"', suppresses='["nope"]'))
    with pytest.raises(RulesError) as caught:
        load_rule_files([path])
    assert str(caught.value) == (f"{path}: rule 'r' (rules[0]): suppresses: no rule is named 'nope'")


def test_suppressing_across_files_is_allowed(tmp_path: Path) -> None:
    """A rule may suppress one defined in another rules file."""
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(table("below", threshold='"1"', suppresses='["warn"]'))
    second.write_text(table("below", threshold='"5"').replace('"r"', '"warn"'))
    assert [rule.name for rule in load_rule_files([first, second])] == ["r", "warn"]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ([("a", '["a"]')], "rule 'a' (rules[0]): suppresses: a rule cannot suppress itself"),
        (
            [("a", '["b"]'), ("b", '["a"]')],
            "rule 'a' (rules[0]): suppresses: a cycle (a -> b -> a): none of these would ever page",
        ),
    ],
)
def test_suppression_cycles_are_errors(tmp_path: Path, tables: list[tuple[str, str]], expected: str) -> None:
    """Alerts that suppress each other would all stay silent, so a cycle (or a self-reference) is refused."""
    path = tmp_path / "rules.toml"
    path.write_text(
        "".join(table("below", threshold='"1"', suppresses=s).replace('"r"', f'"{n}"') for n, s in tables)
    )
    with pytest.raises(RulesError) as caught:
        load_rule_files([path])
    assert str(caught.value) == f"{path}: {expected}"


def test_compile_rules_refuses_bad_suppressions_too() -> None:
    """Rules built in code get the same check when compiled."""
    with pytest.raises(ValueError, match="rule 'a': suppresses: no rule is named 'b'"):
        compile_rules([Rule("a", "below", Decimal(1), suppresses=("b",))])


def test_compile_rules_refuses_a_kind_without_its_parameters() -> None:
    """A rule built in code without its kind's parameters is refused when compiled, not when evaluated."""
    with pytest.raises(ValueError, match="needs a window"):
        compile_rules([Rule("a", "drop")])
    with pytest.raises(ValueError, match="needs a threshold"):
        compile_rules([Rule("b", "below")])


# -- conditions ----------------------------------------------------------------------------------------


def gbp(amount: str) -> Balance:
    signed = Decimal(amount)
    return Balance(abs(signed), "GBP", IN_DEBIT if signed < 0 else IN_CREDIT)


def reading(
    amount: str, previous: str | None = None, history: tuple[tuple[datetime, Decimal], ...] = ()
) -> Reading:
    balance = gbp(amount)
    return Reading(balance, balance.signed_amount, None if previous is None else gbp(previous), history, T0)


@pytest.mark.parametrize(
    ("state", "amount", "breached"),
    [
        (IN_DEBIT, "-0.01", True),
        (IN_DEBIT, "-5000", True),
        (IN_DEBIT, "0", False),
        (IN_DEBIT, "10", False),
        (IN_CREDIT, "10", True),
        (IN_CREDIT, "-10", False),
    ],
)
def test_state_condition(state: str, amount: str, breached: bool) -> None:
    """A state rule holds exactly while the balance is in that Mastercard state; it clears otherwise."""
    judge = judge_of(Rule("s", "state", state=state))
    assert judge.breached(reading(amount)) is breached
    assert judge.cleared(reading(amount)) is not breached


def test_state_condition_ignores_balances_without_a_state() -> None:
    """myPOS balances have no state: a state rule never holds on them, whatever the sign."""
    judge = judge_of(Rule("s", "state", state=IN_DEBIT))
    balance = Balance(Decimal("-5"), "EUR", None, "available")
    assert not judge.breached(Reading(balance, balance.signed_amount, None, (), T0))


@pytest.mark.parametrize(
    ("previous", "amount", "breached"),
    [
        (None, "100", False),  # first sight: nothing to compare with
        ("1000", "1000", False),
        ("1000", "1099.99", False),
        ("1000", "1100", True),  # at least min_change, up
        ("1000", "900", True),  # or down
        ("1000", "-50", True),  # into debit
        ("50", "-50", True),
        ("-50", "49.99", False),
    ],
)
def test_change_condition(previous: str | None, amount: str, breached: bool) -> None:
    """A change rule holds when the signed amount moved by at least min_change since the previous
    observation, either way; an unchanged balance clears it."""
    judge = judge_of(Rule("c", "change", min_change=Decimal(100)))
    assert judge.breached(reading(amount, previous)) is breached
    assert judge.cleared(reading(amount, previous)) is not breached


def test_change_condition_ignores_a_currency_change() -> None:
    """Amounts in two currencies cannot be compared: a currency switch is not a movement."""
    judge = judge_of(Rule("c", "change", min_change=Decimal(1)))
    eur = Balance(Decimal(5), "EUR", IN_CREDIT)
    assert not judge.breached(Reading(eur, eur.signed_amount, gbp("5000"), (), T0))


def at(minutes: int) -> datetime:
    return T0 - timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("rule_values", "history", "amount", "breached"),
    [
        # 10000 was the balance until 30 minutes ago: in the 1h window.
        ({"min_drop": "3000"}, ((at(30), "10000"),), "7000", True),
        ({"min_drop": "3000"}, ((at(30), "10000"),), "7000.01", False),
        ({"min_drop_percent": "30"}, ((at(30), "10000"),), "7000", True),
        ({"min_drop_percent": "30"}, ((at(30), "10000"),), "7000.01", False),
        # It stopped being the balance 61 minutes ago: out of the window.
        ({"min_drop": "3000"}, ((at(61), "10000"),), "5000", False),
        # Exactly at the edge of the window: out (the window is the last hour, the edge excluded).
        ({"min_drop": "3000"}, ((at(60), "10000"),), "5000", False),
        # Both given: both must hold.
        ({"min_drop": "3000", "min_drop_percent": "50"}, ((at(1), "10000"),), "6000", False),
        ({"min_drop": "3000", "min_drop_percent": "50"}, ((at(1), "10000"),), "5000", True),
        # A peak at or under zero: the percentage cannot hold.
        ({"min_drop_percent": "10"}, ((at(1), "0"),), "-100", False),
        ({"min_drop": "50"}, ((at(1), "0"),), "-100", True),
        # A rise is no drop.
        ({"min_drop": "1"}, ((at(1), "100"),), "200", False),
        # No history: the current amount is its own peak.
        ({"min_drop": "1"}, (), "5", False),
    ],
)
def test_drop_condition(
    rule_values: dict[str, str], history: tuple[tuple[datetime, str], ...], amount: str, breached: bool
) -> None:
    """A drop rule holds when the amount is at least min_drop and/or min_drop_percent under the highest
    amount in force at any moment of the window; it clears when that is no longer so."""
    values = {key: Decimal(value) for key, value in rule_values.items()}
    judge = judge_of(Rule("d", "drop", window=timedelta(hours=1), **values))  # type: ignore[arg-type]
    entries = tuple((until, Decimal(value)) for until, value in history)
    assert judge.breached(reading(amount, None, entries)) is breached
    assert judge.cleared(reading(amount, None, entries)) is not breached


def test_history_keeps_only_possible_peaks_within_the_window() -> None:
    """The history drops amounts lower than a later one (never a better peak) and those older than the
    largest window, so it stays short whatever the number of changes."""
    history: tuple[tuple[datetime, Decimal], ...] = ()
    keep = timedelta(hours=1)
    for minute, amount in [(0, "100"), (10, "300"), (20, "200"), (30, "250"), (40, "50")]:
        history = remember(history, Decimal(amount), T0 + timedelta(minutes=minute), keep)
    assert history == (
        (T0 + timedelta(minutes=10), Decimal(300)),
        (T0 + timedelta(minutes=30), Decimal(250)),
        (T0 + timedelta(minutes=40), Decimal(50)),
    )
    later = remember(history, Decimal(10), T0 + timedelta(minutes=75), keep)
    assert later == (
        (T0 + timedelta(minutes=30), Decimal(250)),
        (T0 + timedelta(minutes=40), Decimal(50)),
        (T0 + timedelta(minutes=75), Decimal(10)),
    )
    assert remember(history, Decimal(1), T0, None) == ()


def test_peak_is_the_amount_in_force_at_the_start_of_the_window() -> None:
    """An old peak that was replaced by a lower amount before the window began does not count; the
    lower amount that was still in force when the window began does."""
    history = ((T0 - timedelta(hours=2), Decimal(300)), (T0 - timedelta(minutes=30), Decimal(100)))
    assert peak_since(history, T0 - timedelta(hours=1), Decimal(20)) == Decimal(100)
    assert peak_since(history, T0 - timedelta(hours=3), Decimal(20)) == Decimal(300)
    assert peak_since(history, T0, Decimal(20)) == Decimal(20)
    assert peak_since((), T0, Decimal(-5)) == Decimal(-5)
