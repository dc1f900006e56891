"""Properties of the whole lifecycle over any history of observations, failed polls and ticks, with
`for`, `keep_firing_for`, `repeat`, suppression and every balance kind: what on-call receives per
fingerprint always makes sense, and missing data never resolves anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.compiled import CompiledRules, compile_rules
from rules.engine import assess
from rules.lifecycle import AlertTransition
from rules.model import Rule
from rules.staleness import assess_poll
from rules.timeline import tick
from rules.types import (
    IN_CREDIT,
    IN_DEBIT,
    AlertState,
    Balance,
    BalanceKey,
    Freshness,
    KnownBalance,
    Observation,
    PollOutcome,
)

KEY = BalanceKey("mc-gbp", "acct-1")
T0 = datetime(2024, 5, 6, tzinfo=UTC)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)
amounts = st.decimals(min_value=-60, max_value=60, places=0)
minutes = st.sampled_from([timedelta(0), timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30)])


@st.composite
def lifecycles(draw: st.DrawFn) -> dict[str, object]:
    return {
        "for_duration": draw(minutes),
        "keep_firing_for": draw(minutes),
        "repeat": draw(st.none() | st.sampled_from([timedelta(minutes=10), timedelta(hours=1)])),
    }


@st.composite
def balance_rules(draw: st.DrawFn, name: str) -> Rule:
    """A rule of any balance kind, with any lifecycle."""
    kind = draw(st.sampled_from(["below", "above", "drop", "change", "state"]))
    life = draw(lifecycles())
    if kind in ("below", "above"):
        threshold = draw(amounts)
        band = draw(st.decimals(min_value=0, max_value=20, places=0))
        clear = threshold + band if kind == "below" else threshold - band
        return Rule(
            name,
            kind,
            threshold,
            clear_above=clear if kind == "below" else None,  # type: ignore[arg-type]
            clear_below=clear if kind == "above" else None,
            **life,
        )  # type: ignore[arg-type]
    if kind == "drop":
        return Rule(
            name,
            "drop",
            window=draw(st.sampled_from([timedelta(minutes=15), timedelta(hours=2)])),
            min_drop=Decimal(draw(st.integers(1, 40))),
            **life,
        )  # type: ignore[arg-type]
    if kind == "change":
        return Rule(name, "change", min_change=Decimal(draw(st.integers(1, 40))), **life)  # type: ignore[arg-type]
    return Rule(name, "state", state=IN_DEBIT, **life)  # type: ignore[arg-type]


# One step of history: an observed amount, a failed poll, a revoked one, or only time passing.
steps = st.tuples(
    st.sampled_from(
        [timedelta(seconds=30), timedelta(minutes=1), timedelta(minutes=7), timedelta(minutes=45)]
    ),
    st.one_of(amounts, st.sampled_from(["fail", "revoked", "tick"])),
)


@dataclass
class Run:
    """Every transition published, with what caused it."""

    transitions: list[tuple[str, AlertTransition]]

    def by_fingerprint(self) -> dict[str, list[AlertTransition]]:
        found: dict[str, list[AlertTransition]] = {}
        for _, transition in self.transitions:
            found.setdefault(transition.state.fingerprint, []).append(transition)
        return found


def simulate(rules: CompiledRules, history: list[tuple[timedelta, Decimal | str]]) -> Run:
    """Feed the history through the engine as the daemon does: observations to `assess` (and their
    poll to `assess_poll`), failures to `assess_poll`, and a tick after every step."""
    known: KnownBalance | None = None
    alerts: dict[str, AlertState] = {}
    freshness: dict[BalanceKey, Freshness] = {}
    run = Run([])
    now = T0

    def keep(cause: str, transitions: tuple[AlertTransition, ...], states: tuple[AlertState, ...]) -> None:
        run.transitions.extend((cause, t) for t in transitions)
        alerts.update({s.fingerprint: s for s in states})

    for index, (gap, event) in enumerate(history):
        now += gap
        if isinstance(event, Decimal):
            balance = Balance(abs(event), "GBP", IN_DEBIT if event < 0 else IN_CREDIT)
            result = assess(
                Observation(KEY, "mastercard-send", balance, now, f"c{index}"), known, rules, alerts
            )
            known = result.known
            keep("observation", result.transitions, result.alerts)
            outcome = PollOutcome(KEY.source, now, (KEY.account,), True)
        elif event == "tick":
            outcome = None
        else:
            outcome = PollOutcome(KEY.source, now, (KEY.account,), False, "HTTP 503", event == "revoked")
        if outcome is not None:
            polled = assess_poll(outcome, rules, freshness.get, lambda key: alerts)
            freshness.update({f.subject: f for f in polled.freshness})
            keep("poll-ok" if outcome.ok else "poll-failed", polled.transitions, polled.alerts)
        update = tick(now, rules, list(alerts.values()), list(freshness.values()))
        keep("tick", update.transitions, update.alerts)
    return run


def well_formed(transitions: list[AlertTransition]) -> bool:
    """firing (repeat)* resolved, firing (repeat)* resolved, ...: reminders only while firing."""
    firing = False
    for transition in transitions:
        if transition.status == "firing":
            if firing:
                return False
            firing = True
        elif not firing:
            return False
        elif transition.status == "resolved":
            firing = False
    return True


@PROPERTY_SETTINGS
@given(
    rule_list=st.tuples(balance_rules("a"), balance_rules("b")).map(list),
    history=st.lists(steps, min_size=1, max_size=40),
    stale_after=st.sampled_from([timedelta(minutes=5), timedelta(hours=1)]),
)
def test_published_transitions_alternate_per_fingerprint(
    rule_list: list[Rule], history: list[tuple[timedelta, Decimal | str]], stale_after: timedelta
) -> None:
    """Whatever the rules and the history (observations, failures, revocations, ticks), each alert's
    published transitions go firing, reminders, resolved, firing, ...: never two firings or two
    resolves in a row, never a reminder or a resolve of an alert that is not firing."""
    rules = compile_rules([*rule_list, Rule("stale", "stale", after=stale_after)])
    for transitions in simulate(rules, history).by_fingerprint().values():
        assert well_formed(transitions)


@PROPERTY_SETTINGS
@given(
    rule_list=st.tuples(balance_rules("a"), balance_rules("b")).map(list),
    history=st.lists(steps, min_size=1, max_size=40),
)
def test_missing_data_never_resolves(
    rule_list: list[Rule], history: list[tuple[timedelta, Decimal | str]]
) -> None:
    """A balance alert resolves only on an observation: never on a failed poll, a revocation, or a tick."""
    rules = compile_rules([*rule_list, Rule("stale", "stale", after=timedelta(minutes=5))])
    for cause, transition in simulate(rules, history).transitions:
        if transition.status == "resolved":
            expected = "poll-ok" if transition.rule.kind == "stale" else "observation"
            assert cause == expected
            assert transition.rule.kind == "stale" or transition.trigger is not None


@PROPERTY_SETTINGS
@given(rule=balance_rules("a"), history=st.lists(steps, min_size=1, max_size=40))
def test_nothing_resolves_inside_the_band(rule: Rule, history: list[tuple[timedelta, Decimal | str]]) -> None:
    """A below/above alert resolves only on an observation at or past its clear point: never inside
    the hysteresis band, whatever `for`, `keep_firing_for` and the failures in between."""
    for _, transition in simulate(compile_rules([rule]), history).transitions:
        if transition.status == "resolved" and rule.kind in ("below", "above"):
            assert rule.cleared(transition.observation.balance)


@PROPERTY_SETTINGS
@given(rule=balance_rules("a"), history=st.lists(steps, min_size=1, max_size=40))
def test_firings_are_published_after_for(rule: Rule, history: list[tuple[timedelta, Decimal | str]]) -> None:
    """A firing is published no earlier than `for` after its condition began, and only once: its
    episode counts up by one per firing."""
    firings = [t for _, t in simulate(compile_rules([rule]), history).transitions if t.status == "firing"]
    for index, transition in enumerate(firings):
        assert transition.state.episode == index + 1
        assert transition.state.pending_since is not None
        assert transition.at - transition.state.pending_since >= rule.for_duration


@PROPERTY_SETTINGS
@given(
    warn=balance_rules("warn"),
    threshold=amounts,
    history=st.lists(steps, min_size=1, max_size=40),
)
def test_suppressed_alert_is_not_published_while_its_suppressor_fires(
    warn: Rule, threshold: Decimal, history: list[tuple[timedelta, Decimal | str]]
) -> None:
    """While the suppressing alert fires, the suppressed one publishes no firing and no reminder."""
    crit = Rule("crit", "below", threshold, suppresses=("warn",))
    crit_firing = False
    for _, transition in simulate(compile_rules([warn, crit]), history).transitions:
        if transition.rule.name == "crit":
            crit_firing = transition.status != "resolved"
        elif crit_firing:
            assert transition.status == "resolved"
