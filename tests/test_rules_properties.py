"""Properties of the engine over any balance history, with its own output state fed back in as the
daemon does: alerts alternate, changes and versions follow the balance, hysteresis holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatchcase

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import Assessment, CompiledRule, assess, compile_rules
from rules.loader import parse_rules
from rules.model import Rule, Scope
from rules.types import IN_CREDIT, IN_DEBIT, AlertState, Balance, BalanceKey, KnownBalance, Observation

KEY = BalanceKey("mc-gbp", "non_card_token:sbx-ptnr_demo-0001")
T0 = datetime(2024, 5, 1, tzinfo=UTC)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

# Small amounts around zero, so that thresholds, bands and IN_DEBIT are all crossed often.
signed_amounts = st.decimals(min_value=-60, max_value=60, places=1)


@st.composite
def balances(draw: st.DrawFn, currencies: tuple[str, ...] = ("GBP",)) -> Balance:
    """A balance as a provider sends it: a magnitude, IN_DEBIT when negative, at some scale (1 or 1.000)."""
    signed = draw(signed_amounts)
    extra_places = draw(st.sampled_from([0, 0, 2]))
    magnitude = abs(signed).quantize(Decimal(1).scaleb(-(1 + extra_places)))
    state = IN_DEBIT if signed < 0 else IN_CREDIT
    return Balance(magnitude, draw(st.sampled_from(currencies)), state)


@st.composite
def rules(draw: st.DrawFn, name: str = "rule", currency: str | None = None) -> Rule:
    """A below or above rule with a threshold in the balances' range and, maybe, a hysteresis band."""
    kind = draw(st.sampled_from(["below", "above"]))
    threshold = draw(signed_amounts)
    band = draw(st.none() | st.decimals(min_value=0, max_value=30, places=1))
    clear = None if band is None else (threshold + band if kind == "below" else threshold - band)
    return Rule(
        name,
        "below" if kind == "below" else "above",
        threshold,
        scope=Scope(currency=currency),
        clear_above=clear if kind == "below" else None,
        clear_below=clear if kind == "above" else None,
    )


@dataclass(frozen=True)
class Step:
    observation: Observation
    known_before: KnownBalance | None
    alerts_before: dict[str, AlertState]
    result: Assessment


def simulate(rule_list: list[Rule], history: list[Balance]) -> list[Step]:
    """Feed the balances through `assess` one by one, storing what it says to store, as the daemon does."""
    compiled = compile_rules(rule_list)
    known: KnownBalance | None = None
    alerts: dict[str, AlertState] = {}
    steps = []
    for index, balance in enumerate(history):
        observation = Observation(KEY, "mastercard-send", balance, T0 + timedelta(minutes=index), f"c{index}")
        result = assess(observation, known, compiled, alerts)
        steps.append(Step(observation, known, dict(alerts), result))
        known = result.known
        for state in result.alerts:
            alerts[state.fingerprint] = state
    return steps


@PROPERTY_SETTINGS
@given(rule=rules(), history=st.lists(balances(), min_size=1, max_size=40))
def test_firing_and_resolved_alternate_starting_with_firing(rule: Rule, history: list[Balance]) -> None:
    """Per fingerprint, transitions go firing, resolved, firing, ...; never two of a kind in a row."""
    statuses = [t.status for step in simulate([rule], history) for t in step.result.transitions]
    assert statuses == ["firing", "resolved"] * (len(statuses) // 2) + ["firing"] * (len(statuses) % 2)


@PROPERTY_SETTINGS
@given(rule=rules(), history=st.lists(balances(), min_size=1, max_size=40))
def test_transitions_follow_the_conditions(rule: Rule, history: list[Balance]) -> None:
    """An alert fires exactly when the rule is breached and it was not firing; a firing alert resolves
    exactly when the clear point is reached, so nothing resolves inside the hysteresis band."""
    for step in simulate([rule], history):
        balance = step.observation.balance
        was_firing = any(state.status == "firing" for state in step.alerts_before.values())
        statuses = [t.status for t in step.result.transitions]
        if was_firing:
            assert statuses == (["resolved"] if rule.cleared(balance) else [])
        else:
            assert statuses == (["firing"] if rule.breached(balance) else [])


@PROPERTY_SETTINGS
@given(rule=rules(), history=st.lists(balances(), min_size=1, max_size=40))
def test_nothing_resolves_inside_the_band(rule: Rule, history: list[Balance]) -> None:
    """Until the signed amount reaches the clear point nothing resolves: not under the threshold, and
    not in the hysteresis band between the threshold and the clear point."""
    clear = rule.clear_threshold
    for step in simulate([rule], history):
        amount = step.observation.balance.signed_amount
        inside_band = amount < clear if rule.kind == "below" else amount > clear
        if inside_band:
            assert all(t.status != "resolved" for t in step.result.transitions)


@PROPERTY_SETTINGS
@given(rule=rules(), history=st.lists(balances(), min_size=1, max_size=40))
def test_episodes_count_up_and_resolves_keep_them(rule: Rule, history: list[Balance]) -> None:
    """The n-th firing is episode n, started at its observation; its resolve keeps episode and start."""
    transitions = [t for step in simulate([rule], history) for t in step.result.transitions]
    for index, transition in enumerate(transitions):
        episode = index // 2 + 1
        assert transition.state.episode == episode
        if transition.status == "firing":
            assert transition.state.started_at == transition.observation.observed_at
            assert transition.state.resolved_at is None
        else:
            assert transition.state.started_at == transitions[index - 1].state.started_at
            assert transition.state.resolved_at == transition.observation.observed_at


@PROPERTY_SETTINGS
@given(history=st.lists(balances(currencies=("GBP", "EUR")), min_size=1, max_size=40))
def test_change_exactly_when_the_balance_differs(history: list[Balance]) -> None:
    """A change event comes on the first observation and exactly when amount, currency or state differ
    from the previous observation; 1000 and 1000.00 are the same."""
    for index, step in enumerate(simulate([], history)):
        differs = index == 0 or not history[index - 1].same_as(history[index])
        assert (step.result.change is not None) is differs
        if step.result.change is not None:
            assert step.result.change.previous == step.known_before


@PROPERTY_SETTINGS
@given(history=st.lists(balances(currencies=("GBP", "EUR")), min_size=1, max_size=40))
def test_versions_increase_by_one_per_change(history: list[Balance]) -> None:
    """The stored version is the number of changes so far, and each change event carries it."""
    changes = 0
    for step in simulate([], history):
        if step.result.change is not None:
            changes += 1
            assert step.result.change.version == changes
        assert step.result.known.version == changes
        if step.result.change is not None:
            assert step.result.known.observed_at == step.observation.observed_at
            assert step.result.known.balance == step.observation.balance
        else:
            assert step.result.known is step.known_before


@PROPERTY_SETTINGS
@given(
    rule_list=st.tuples(rules("a", currency="GBP"), rules("b"), rules("c", currency="EUR")).map(list),
    history=st.lists(balances(currencies=("GBP", "EUR")), min_size=1, max_size=40),
)
def test_alternation_holds_per_fingerprint_with_scopes(rule_list: list[Rule], history: list[Balance]) -> None:
    """With several rules and currencies moving in and out of scope, every fingerprint still alternates
    firing/resolved from firing, and no alert is left firing on a balance its rule does not watch."""
    by_fingerprint: dict[str, list[str]] = {}
    steps = simulate(rule_list, history)
    for step in steps:
        for transition in step.result.transitions:
            by_fingerprint.setdefault(transition.state.fingerprint, []).append(transition.status)
    for statuses in by_fingerprint.values():
        assert statuses == ["firing", "resolved"] * (len(statuses) // 2) + ["firing"] * (len(statuses) % 2)
    final: dict[str, AlertState] = dict(steps[-1].alerts_before)
    final.update({state.fingerprint: state for state in steps[-1].result.alerts})
    last = steps[-1].observation
    for state in final.values():
        rule = next(r for r in rule_list if r.name == state.rule)
        if state.status == "firing":
            assert rule.matches(last.key, last.balance)


# -- matching and loading -------------------------------------------------------------------------------

glob_text = st.text(alphabet="ab-*?[]!", max_size=6)
plain_text = st.text(alphabet="ab-[]!", max_size=6)


@PROPERTY_SETTINGS
@given(source=glob_text, account=glob_text, key_source=plain_text, key_account=plain_text)
def test_compiled_globs_agree_with_fnmatchcase(
    source: str, account: str, key_source: str, key_account: str
) -> None:
    """Whatever the glob, the engine's compiled matching decides as fnmatch.fnmatchcase does."""
    rule = Rule("r", "below", Decimal(0), scope=Scope(source=source or None, account=account or None))
    key = BalanceKey(key_source, key_account)
    expected = (not source or fnmatchcase(key_source, source)) and (
        not account or fnmatchcase(key_account, account)
    )
    assert CompiledRule.of(rule).matches_key(key) is expected
    assert rule.scope.matches_key(key) is expected


@PROPERTY_SETTINGS
@given(threshold=st.decimals(allow_nan=False, allow_infinity=False))
def test_any_decimal_string_threshold_loads_exactly(threshold: Decimal) -> None:
    """A threshold written as a decimal string comes back as exactly that Decimal, scale included."""
    (rule,) = parse_rules({"rules": [{"name": "r", "kind": "below", "threshold": str(threshold)}]}, "p")
    assert rule.threshold == threshold
    assert str(rule.threshold) == str(threshold)
