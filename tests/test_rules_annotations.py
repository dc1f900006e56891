"""Annotations: placeholders checked at load, rendered per alert with the values of each kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from rules.annotations import PLACEHOLDERS, check_template, render_annotations, threshold_text
from rules.compiled import compile_rules
from rules.engine import assess
from rules.model import Rule
from rules.types import IN_CREDIT, IN_DEBIT, Balance, BalanceKey, KnownBalance, Observation

KEY = BalanceKey("mc-gbp", "acct-1")
T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
EVERYTHING = " ".join(f"{name}={{{name}}}" for name in PLACEHOLDERS)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (Rule("r", "below", Decimal("5000.00")), "5000.00"),
        (Rule("r", "drop", window=timedelta(hours=1), min_drop=Decimal("1000.00")), "1000.00"),
        (Rule("r", "drop", window=timedelta(hours=1), min_drop_percent=Decimal(30)), "30%"),
        (
            Rule("r", "drop", window=timedelta(hours=1), min_drop=Decimal(5), min_drop_percent=Decimal(30)),
            "5 and 30%",
        ),
        (Rule("r", "change", min_change=Decimal("250")), "250"),
        (Rule("r", "state", state=IN_DEBIT), "IN_DEBIT"),
        (Rule("r", "stale", after=timedelta(minutes=90)), "1h30m"),
    ],
)
def test_threshold_text_per_kind(rule: Rule, expected: str) -> None:
    """{threshold} (and the event's threshold) is what each kind compares with, as one short text."""
    assert threshold_text(rule) == expected


def test_every_placeholder_renders_for_a_balance_alert() -> None:
    """Every placeholder is filled in; the ones a kind does not have say n/a."""
    rule = Rule("low", "below", Decimal(5000), clear_above=Decimal(5500), annotations=(("all", EVERYTHING),))
    ((_, text),) = render_annotations(
        rule,
        KEY,
        balance=Balance(Decimal(40), "GBP", IN_DEBIT),
        previous=Balance(Decimal(60), "GBP", IN_CREDIT),
        started_at=T0,
    )
    assert text == (
        "rule=low severity=warning kind=below source=mc-gbp account=acct-1 balance_type= amount=-40 "
        "currency=GBP state=IN_DEBIT threshold=5000 clear=5500 previous=60 change=-100 peak=n/a drop=n/a "
        "window=n/a after=n/a last_success=n/a reason=n/a started_at=2024-05-06T09:00:00Z"
    )


def test_drop_alert_renders_peak_drop_and_window() -> None:
    """A drop alert's summary says from how high the balance fell, by how much, within which window."""
    summary = "{account} fell {drop} {currency} from {peak} within {window} (now {amount})"
    rule = Rule(
        "fall",
        "drop",
        window=timedelta(hours=1),
        min_drop_percent=Decimal(30),
        annotations=(("summary", summary),),
    )
    known = KnownBalance(Balance(Decimal(10000), "GBP", IN_CREDIT), T0, "c1", 1)
    observation = Observation(
        KEY, "mastercard-send", Balance(Decimal(6000), "GBP", IN_CREDIT), T0 + timedelta(minutes=10), "c2"
    )
    (transition,) = assess(observation, known, compile_rules([rule]), {}).transitions
    assert transition.annotations == (("summary", "acct-1 fell 4000 GBP from 10000 within 1h (now 6000)"),)


def test_literal_braces_and_no_annotations() -> None:
    """{{ and }} write braces; a rule without annotations renders none."""
    rule = Rule("r", "below", Decimal(1), annotations=(("summary", "{{literal}} {rule}"),))
    assert render_annotations(rule, KEY) == (("summary", "{literal} r"),)
    assert render_annotations(Rule("r", "below", Decimal(1)), KEY) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope}", "unknown placeholder {nope}"),
        ("{amount!r}", "placeholder {amount} takes no format"),
        ("{amount:>10}", "placeholder {amount} takes no format"),
        ("{amount", "write {{ and }} for literal braces"),
        ("amount}", "write {{ and }} for literal braces"),
    ],
)
def test_bad_templates(text: str, message: str) -> None:
    """Unknown placeholders, formats and stray braces are refused with what to write instead."""
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_template(text)
