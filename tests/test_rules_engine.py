"""The pure engine: change detection, versions, alert firing and resolving, episodes, fingerprints."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import (
    AlertTransition,
    Assessment,
    BalanceChange,
    CompiledRule,
    CompiledRules,
    assess,
    compile_rules,
    fingerprint,
)
from rules.model import Rule, Scope
from rules.types import (
    IN_CREDIT,
    IN_DEBIT,
    WHOLE_SOURCE,
    AlertState,
    Balance,
    BalanceKey,
    KnownBalance,
    Observation,
    subject_key,
)

KEY = BalanceKey("mc-gbp", "non_card_token:sbx-ptnr_demo-0001")
MYPOS_KEY = BalanceKey("mypos-cards", "50553500971", "available")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)


def gbp(amount: str, state: str = IN_CREDIT) -> Balance:
    return Balance(Decimal(amount), "GBP", state)


def observe(
    balance: Balance, *, key: BalanceKey = KEY, at: datetime = T1, cid: str = "corr-2"
) -> Observation:
    return Observation(key, "mastercard-send", balance, at, cid, description="Main account")


def known_as(balance: Balance, version: int = 3) -> KnownBalance:
    return KnownBalance(balance, T0, "corr-1", version, "Main account")


def below(threshold: str, clear: str | None = None, name: str = "low", **scope: str) -> Rule:
    return Rule(
        name,
        "below",
        Decimal(threshold),
        scope=Scope(**scope),
        clear_above=None if clear is None else Decimal(clear),
    )


def above(threshold: str, clear: str | None = None, name: str = "high", **scope: str) -> Rule:
    return Rule(
        name,
        "above",
        Decimal(threshold),
        scope=Scope(**scope),
        clear_below=None if clear is None else Decimal(clear),
    )


def firing(rule: str, key: BalanceKey = KEY, episode: int = 1) -> AlertState:
    return AlertState(fingerprint(rule, key), rule, key, "firing", episode, T0)


def resolved(rule: str, key: BalanceKey = KEY, episode: int = 1) -> AlertState:
    return AlertState(fingerprint(rule, key), rule, key, "resolved", episode, T0 - timedelta(hours=1), T0)


def run(
    observation: Observation,
    rules: Sequence[Rule],
    alerts: Sequence[AlertState] = (),
    known: KnownBalance | None = None,
) -> Assessment:
    stored: Mapping[str, AlertState] = {state.fingerprint: state for state in alerts}
    return assess(observation, known, compile_rules(rules), stored)


# -- change detection and versions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "changed", "version"),
    [
        (None, gbp("1000"), True, 1),
        (gbp("1000"), gbp("1000"), False, 3),
        (gbp("1000"), gbp("1000.00"), False, 3),
        (gbp("1000.00"), gbp("1000"), False, 3),
        (gbp("1000.10"), gbp("1000.1000"), False, 3),
        (gbp("0", IN_CREDIT), gbp("0.00", IN_CREDIT), False, 3),
        (gbp("1000"), gbp("1000.01"), True, 4),
        (gbp("1000"), gbp("999.99"), True, 4),
        (gbp("1000"), Balance(Decimal("1000"), "EUR", IN_CREDIT), True, 4),
        (gbp("1000"), gbp("1000", IN_DEBIT), True, 4),
        (gbp("0", IN_CREDIT), gbp("0", IN_DEBIT), True, 4),
        (gbp("1000"), Balance(Decimal("1000"), "GBP", None), True, 4),
        (
            Balance(Decimal("120.26"), "EUR", None, "available"),
            Balance(Decimal("120.260"), "EUR", None, "available"),
            False,
            3,
        ),
        (
            Balance(Decimal("120.26"), "EUR", None, "available"),
            Balance(Decimal("120.27"), "EUR", None, "available"),
            True,
            4,
        ),
    ],
)
def test_change_detection(previous: Balance | None, current: Balance, changed: bool, version: int) -> None:
    """A change is a first sighting or a different amount, currency or state; the scale of an amount
    (1000 vs 1000.00) is not a change. The version goes up by one per change and not otherwise."""
    known = None if previous is None else known_as(previous, version=3)
    result = run(observe(current), [], known=known)
    assert (result.change is not None) is changed
    assert result.known.version == version
    if result.change is not None:
        assert result.change == BalanceChange(observe(current), known, version)


def test_first_sighting_stores_version_one() -> None:
    """The first observation of a key is a change with no previous balance, stored as version 1."""
    observation = observe(gbp("2500.00"))
    result = run(observation, [])
    assert result.key == KEY
    assert result.change == BalanceChange(observation, None, 1)
    assert result.known == KnownBalance(gbp("2500.00"), T1, "corr-2", 1, "Main account")


def test_change_stores_the_new_balance() -> None:
    """After a change the stored balance, time, correlation id and version are the observation's."""
    result = run(observe(gbp("900")), [], known=known_as(gbp("1000"), version=7))
    assert result.known == KnownBalance(gbp("900"), T1, "corr-2", 8, "Main account")
    assert result.change is not None
    assert result.change.previous == known_as(gbp("1000"), version=7)


def test_unchanged_keeps_the_known_balance_as_it_is() -> None:
    """Unchanged, the KnownBalance to store is the given one, untouched: the balance as last published
    (so `previous` of the next change is exactly it), first seen at its own time."""
    known = known_as(gbp("1000"), version=5)
    result = run(observe(gbp("1000.00")), [], known=known)
    assert result.change is None
    assert result.known is known


def test_renamed_account_updates_the_description_only() -> None:
    """Same money under a new account description: no change event, same version, the new name kept."""
    known = known_as(gbp("1000"), version=5)
    observation = Observation(KEY, "mastercard-send", gbp("1000"), T1, "c", description="Payouts")
    result = run(observation, [], known=known)
    assert result.change is None
    assert result.known == KnownBalance(gbp("1000"), T0, "corr-1", 5, "Payouts")


def test_description_falls_back_to_the_known_one() -> None:
    """An observation without a description keeps the one already known for the key."""
    observation = Observation(KEY, "mastercard-send", gbp("1"), T1, "c")
    assert run(observation, [], known=known_as(gbp("1"))).known.description == "Main account"
    assert run(observation, [], known=None).known.description is None


# -- firing and resolving ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "was_firing", "balance", "expected"),
    [
        # below, not firing: fires strictly under the threshold
        (below("5000"), False, gbp("4999.99"), "firing"),
        (below("5000"), False, gbp("5000"), None),
        (below("5000"), False, gbp("5000.00"), None),
        (below("5000"), False, gbp("5000.01"), None),
        (below("5000"), False, gbp("20000"), None),
        (below("5000"), False, gbp("0"), "firing"),
        # signed: IN_DEBIT is negative, however large the magnitude
        (below("5000"), False, gbp("6000", IN_DEBIT), "firing"),
        (below("0"), False, gbp("0.01", IN_DEBIT), "firing"),
        (below("0"), False, gbp("0", IN_DEBIT), None),
        (below("0"), False, gbp("0", IN_CREDIT), None),
        (below("-1000"), False, gbp("1000.01", IN_DEBIT), "firing"),
        (below("-1000"), False, gbp("1000", IN_DEBIT), None),
        (below("-1000"), False, gbp("999.99", IN_DEBIT), None),
        # below, firing, no hysteresis: resolves at the threshold
        (below("5000"), True, gbp("4999.99"), None),
        (below("5000"), True, gbp("5000"), "resolved"),
        (below("5000"), True, gbp("5000.00"), "resolved"),
        (below("5000"), True, gbp("9000"), "resolved"),
        (below("5000"), True, gbp("9000", IN_DEBIT), None),
        # below, firing, hysteresis band [5000, 5500): holds
        (below("5000", "5500"), True, gbp("5000"), None),
        (below("5000", "5500"), True, gbp("5250"), None),
        (below("5000", "5500"), True, gbp("5499.99"), None),
        (below("5000", "5500"), True, gbp("5500"), "resolved"),
        (below("5000", "5500"), True, gbp("5500.00"), "resolved"),
        (below("5000", "5500"), True, gbp("8000"), "resolved"),
        # below, not firing, inside the band: nothing to do either way
        (below("5000", "5500"), False, gbp("5250"), None),
        (below("5000", "5500"), False, gbp("4999"), "firing"),
        # above, not firing: fires strictly over the threshold
        (above("100"), False, gbp("100.01"), "firing"),
        (above("100"), False, gbp("100"), None),
        (above("100"), False, gbp("99"), None),
        (above("100"), False, gbp("500", IN_DEBIT), None),
        (above("-50"), False, gbp("49.99", IN_DEBIT), "firing"),
        (above("-50"), False, gbp("50", IN_DEBIT), None),
        # above, firing, no hysteresis: resolves at the threshold
        (above("100"), True, gbp("100.01"), None),
        (above("100"), True, gbp("100"), "resolved"),
        (above("100"), True, gbp("100", IN_DEBIT), "resolved"),
        # above, firing, hysteresis band (80, 100]: holds
        (above("100", "80"), True, gbp("100"), None),
        (above("100", "80"), True, gbp("90"), None),
        (above("100", "80"), True, gbp("80.01"), None),
        (above("100", "80"), True, gbp("80"), "resolved"),
        (above("100", "80"), True, gbp("5", IN_DEBIT), "resolved"),
        (above("100", "80"), False, gbp("90"), None),
    ],
)
def test_fire_and_resolve(rule: Rule, was_firing: bool, balance: Balance, expected: str | None) -> None:
    """Below fires under its threshold and resolves at its clear point; above the mirror image; signed
    amounts; a firing alert holds anywhere between threshold and clear point."""
    alerts = [firing(rule.name)] if was_firing else []
    result = run(observe(balance), [rule], alerts)
    assert [t.status for t in result.transitions] == ([] if expected is None else [expected])
    assert result.alerts == tuple(t.state for t in result.transitions)


def test_firing_transition_carries_new_state() -> None:
    """A first firing is episode 1, started at the observation's time, with the rule and observation."""
    rule = below("5000")
    observation = observe(gbp("10"))
    (transition,) = run(observation, [rule]).transitions
    expected_state = AlertState(
        fingerprint("low", KEY),
        "low",
        KEY,
        "firing",
        1,
        T1,
        pending_since=T1,
        last_sent_at=T1,
        kind="below",
        severity="warning",
    )
    assert transition == AlertTransition("firing", rule, expected_state, observation, T1, observation.balance)
    assert transition.observation is observation


def test_resolved_transition_keeps_episode_and_start() -> None:
    """A resolve keeps the firing episode and its start, and adds resolved_at = the observation's time."""
    rule = below("5000")
    observation = observe(gbp("6000"))
    (transition,) = run(observation, [rule], [firing("low", episode=4)]).transitions
    expected_state = AlertState(
        fingerprint("low", KEY), "low", KEY, "resolved", 4, T0, T1, kind="below", severity="warning"
    )
    assert transition == AlertTransition(
        "resolved", rule, expected_state, observation, T1, observation.balance
    )
    assert transition.firing_for == T1 - T0


@pytest.mark.parametrize(("previous_episode", "new_episode"), [(None, 1), (1, 2), (2, 3), (41, 42)])
def test_episodes_count_firings(previous_episode: int | None, new_episode: int) -> None:
    """Each new firing of an alert is the next episode after the last resolved one."""
    alerts = [] if previous_episode is None else [resolved("low", episode=previous_episode)]
    (transition,) = run(observe(gbp("10")), [below("5000")], alerts).transitions
    assert transition.state.episode == new_episode
    assert transition.state.started_at == T1
    assert transition.state.resolved_at is None


def test_resolved_alert_stays_quiet_while_healthy() -> None:
    """A resolved alert with a healthy balance produces nothing and writes nothing."""
    result = run(observe(gbp("9000")), [below("5000")], [resolved("low", episode=3)])
    assert result.transitions == ()
    assert result.alerts == ()


# -- scope ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "key", "balance", "fires"),
    [
        (below("5000", currency="GBP"), KEY, gbp("10"), True),
        (below("5000", currency="EUR"), KEY, gbp("10"), False),
        (below("5000", source="mc-*"), KEY, gbp("10"), True),
        (below("5000", source="mypos-*"), KEY, gbp("10"), False),
        (below("5000", source="mc-gbp"), KEY, gbp("10"), True),
        (below("5000", source="mc-gb"), KEY, gbp("10"), False),
        (below("5000", account="*-0001"), KEY, gbp("10"), True),
        (below("5000", account="*-0002"), KEY, gbp("10"), False),
        (below("5000", account="NON_CARD_TOKEN:*"), KEY, gbp("10"), False),
        (below("5000", balance_type=""), KEY, gbp("10"), True),
        (below("5000", balance_type="available"), KEY, gbp("10"), False),
        (below("500", balance_type="available"), MYPOS_KEY, Balance(Decimal("120.26"), "EUR"), True),
        (below("500", balance_type="booked"), MYPOS_KEY, Balance(Decimal("120.26"), "EUR"), False),
        (
            below("500", source="mypos-*", account="505535*", currency="EUR", balance_type="available"),
            MYPOS_KEY,
            Balance(Decimal("120.26"), "EUR"),
            True,
        ),
        (
            below("500", source="mypos-*", account="505535*", currency="GBP", balance_type="available"),
            MYPOS_KEY,
            Balance(Decimal("120.26"), "EUR"),
            False,
        ),
    ],
)
def test_rules_fire_only_in_scope(rule: Rule, key: BalanceKey, balance: Balance, fires: bool) -> None:
    """A breaching balance fires only the rules whose source, account, currency and balance type match."""
    result = run(observe(balance, key=key), [rule])
    assert [t.status for t in result.transitions] == (["firing"] if fires else [])


def test_firing_alert_resolves_when_its_rule_no_longer_matches() -> None:
    """A firing GBP alert resolves when the account's currency changes to one the rule does not watch."""
    rule = below("5000", currency="GBP")
    eur = Balance(Decimal("10"), "EUR", IN_CREDIT)
    result = run(observe(eur), [rule], [firing("low", episode=2)], known=known_as(gbp("10")))
    assert result.change is not None
    (transition,) = result.transitions
    assert transition.status == "resolved"
    assert transition.rule == rule
    assert transition.state == AlertState(
        fingerprint("low", KEY), "low", KEY, "resolved", 2, T0, T1, kind="below", severity="warning"
    )


def test_firing_alert_resolves_when_the_rule_scope_moved_away() -> None:
    """After a reload narrows a rule's scope away from a key, its firing alert there resolves."""
    narrowed = below("5000", source="mypos-*")
    (transition,) = run(observe(gbp("10")), [narrowed], [firing("low")]).transitions
    assert transition.status == "resolved"


def test_alerts_of_unknown_rules_are_left_alone() -> None:
    """A firing alert whose rule is not among the rules given is neither resolved nor rewritten."""
    result = run(observe(gbp("10")), [below("5000", name="other")], [firing("removed")])
    assert [(t.status, t.rule.name) for t in result.transitions] == [("firing", "other")]
    assert [state.rule for state in result.alerts] == ["other"]


def test_out_of_scope_resolved_alert_is_left_alone() -> None:
    """A resolved alert of a rule that no longer watches the key produces nothing."""
    result = run(observe(gbp("10")), [below("5000", currency="EUR")], [resolved("low")])
    assert result.transitions == ()


def test_several_rules_fire_together_in_rule_order() -> None:
    """A balance under both a warning and a critical threshold fires both, in rule order."""
    rules = [below("5000", name="warn"), below("1000", name="crit"), above("100000", name="rich")]
    result = run(observe(gbp("900")), rules)
    assert [(t.status, t.rule.name) for t in result.transitions] == [("firing", "warn"), ("firing", "crit")]
    assert {s.fingerprint for s in result.alerts} == {fingerprint("warn", KEY), fingerprint("crit", KEY)}


def test_one_resolves_while_another_keeps_firing() -> None:
    """Recovering above the critical line resolves the critical alert and leaves the warning firing."""
    rules = [below("5000", name="warn"), below("1000", "1500", name="crit")]
    result = run(observe(gbp("1600")), rules, [firing("warn"), firing("crit")])
    assert [(t.status, t.rule.name) for t in result.transitions] == [("resolved", "crit")]


def test_mixed_firing_and_new_breach() -> None:
    """With one alert firing, another rule newly breached fires and the firing one is not repeated."""
    rules = [below("5000", name="warn"), below("1000", name="crit")]
    result = run(observe(gbp("500")), rules, [firing("warn")])
    assert [(t.status, t.rule.name) for t in result.transitions] == [("firing", "crit")]


def test_alert_states_are_per_key() -> None:
    """The same rule on two keys has two fingerprints and fires on each independently."""
    rule = below("5000")
    other = BalanceKey("mc-gbp", "non_card_token:sbx-ptnr_demo-0002")
    first = run(observe(gbp("10")), [rule])
    second = run(observe(gbp("10"), key=other), [rule])
    assert first.transitions[0].state.fingerprint != second.transitions[0].state.fingerprint
    assert second.transitions[0].state.key == other


def test_plain_rule_list_is_accepted() -> None:
    """assess takes any sequence of rules; a CompiledRules only makes it faster."""
    rules = [below("5000"), above("100", name="x")]
    plain = assess(observe(gbp("10")), None, rules, {})
    compiled = assess(observe(gbp("10")), None, compile_rules(rules), {})
    assert plain == compiled


def test_no_rules_no_alerts() -> None:
    """Without rules nothing fires; the change is still reported."""
    result = run(observe(gbp("10")), [])
    assert result.transitions == ()
    assert result.change is not None


# -- compiled rules -----------------------------------------------------------------------------------


def test_compiled_rules_is_a_sequence_of_the_rules() -> None:
    """CompiledRules behaves as the tuple of rules it was built from, in order."""
    rules = [below("5000", name="a"), above("100", name="b")]
    compiled = compile_rules(rules)
    assert isinstance(compiled, CompiledRules)
    assert list(compiled) == rules
    assert len(compiled) == 2
    assert compiled[1] == rules[1]
    assert list(compiled[:1]) == rules[:1]
    assert compile_rules(compiled) is compiled
    found = compiled.get("b")
    assert found is not None
    assert found.rule == rules[1]
    assert compiled.get("zzz") is None


def test_the_same_tuple_is_compiled_once() -> None:
    """Passing one tuple of rules again and again reuses its compiled form (and its per-key cache);
    a new tuple, even an equal one, is compiled afresh."""
    rules = (below("5000", name="a"), above("100", name="b"))
    compiled = compile_rules(rules)
    assert compile_rules(rules) is compiled
    assert compile_rules(tuple(list(rules))) is not compiled
    assert list(compile_rules(list(rules))) == list(rules)


def test_duplicate_rule_names_are_refused() -> None:
    """Two rules with one name would share fingerprints, so compiling them is an error."""
    with pytest.raises(ValueError, match="unique"):
        compile_rules([below("1", name="same"), above("2", name="same")])


@pytest.mark.parametrize(
    ("scope", "key", "expected"),
    [
        (Scope(), KEY, True),
        (Scope(source="*"), KEY, True),
        (Scope(source="mc-gbp"), KEY, True),
        (Scope(source="mc-gbpx"), KEY, False),
        (Scope(source="mc-*"), KEY, True),
        (Scope(source="m?-gbp"), KEY, True),
        (Scope(source="[a-m]c-gbp"), KEY, True),
        (Scope(source="[!a-m]c-gbp"), KEY, False),
        (Scope(source="mc-[gG]bp"), KEY, True),
        (Scope(source="MC-GBP"), KEY, False),
        (Scope(account="*0001"), KEY, True),
        (Scope(account="*0001\n"), KEY, False),
        (Scope(account="non_card_token:sbx-ptnr_demo-000?"), KEY, True),
        (Scope(account="non_card_token:sbx-ptnr_demo-00?"), KEY, False),
        (Scope(account="x[*"), BalanceKey("s", "x[abc"), True),  # an unclosed [ is a literal
        (Scope(account="x[[]*"), BalanceKey("s", "x[abc"), True),
        (Scope(balance_type=""), KEY, True),
        (Scope(balance_type="available"), MYPOS_KEY, True),
        (Scope(balance_type="booked"), MYPOS_KEY, False),
    ],
)
def test_compiled_key_matching_agrees_with_the_model(scope: Scope, key: BalanceKey, expected: bool) -> None:
    """The compiled fast paths (exact, "*", regex) decide exactly as fnmatchcase does in the model."""
    rule = Rule("r", "below", Decimal(1), scope=scope)
    assert scope.matches_key(key) is expected
    assert CompiledRule.of(rule).matches_key(key) is expected


def test_compiled_rules_follow_a_currency_change_of_one_key() -> None:
    """The per-key cache is also per currency: the same key in another currency sees other rules."""
    rules = compile_rules(
        [below("5000", name="gbp", currency="GBP"), below("5000", name="eur", currency="EUR")]
    )
    gbp_result = assess(observe(gbp("10")), None, rules, {})
    eur_result = assess(observe(Balance(Decimal("10"), "EUR", IN_CREDIT)), None, rules, {})
    assert [t.rule.name for t in gbp_result.transitions] == ["gbp"]
    assert [t.rule.name for t in eur_result.transitions] == ["eur"]


# -- fingerprints ---------------------------------------------------------------------------------------


def test_fingerprint_is_the_documented_hash() -> None:
    """The fingerprint is the first 32 hex chars of SHA-256 over name, source, account and balance type
    joined by NUL; it is stored and published, so these values must never change."""
    assert fingerprint("gbp-prefund-low", BalanceKey("mc-gbp", "non_card_token:abc")) == (
        "b35f120456cd404c7c5c30a9a187078c"
    )
    assert fingerprint("mypos-low", BalanceKey("mypos-cards", "50553500971", "available")) == (
        "6ce65c51de395f83d6a131fe6fa9e0fb"
    )
    text = "low\0mc-gbp\0non_card_token:sbx-ptnr_demo-0001\0"
    assert fingerprint("low", KEY) == hashlib.sha256(text.encode()).hexdigest()[:32]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("low", KEY), ("high", KEY)),
        (("low", KEY), ("low", BalanceKey("mc-eur", KEY.account))),
        (("low", KEY), ("low", BalanceKey(KEY.source, KEY.account + "x"))),
        (("low", MYPOS_KEY), ("low", BalanceKey(MYPOS_KEY.source, MYPOS_KEY.account, "booked"))),
        (("low", MYPOS_KEY), ("low", BalanceKey(MYPOS_KEY.source, MYPOS_KEY.account))),
        # No ambiguity where one field ends and the next begins.
        (("ab", BalanceKey("c", "d")), ("a", BalanceKey("bc", "d"))),
        (("a", BalanceKey("b", "cd")), ("a", BalanceKey("bc", "d"))),
        (("a", BalanceKey("b", "c", "d")), ("a", BalanceKey("b", "cd"))),
    ],
)
def test_fingerprints_are_distinct(first: tuple[str, BalanceKey], second: tuple[str, BalanceKey]) -> None:
    """Different rule names, sources, accounts or balance types give different fingerprints."""
    assert fingerprint(*first) != fingerprint(*second)


def test_fingerprint_is_stable_and_hex() -> None:
    """The same rule and key always give the same 32 lowercase hex characters."""
    value = fingerprint("low", KEY)
    assert value == fingerprint("low", BalanceKey(KEY.source, KEY.account))
    assert len(value) == 32
    assert set(value) <= set("0123456789abcdef")


SCOPES = [{}, {"source": "mc-*"}, {"source": "mypos-*"}, {"account": "*-0001"}, {"balance_type": "available"},
          {"currency": "EUR"}, {"source": "mc-*", "account": "*1"}]
WATCHED_KEYS = [BalanceKey(source, account, balance_type) for source in ("mc-gbp", "mypos-eu")
                for account in ("A-0001", "A-0002", "B-0001") for balance_type in ("", "available")]


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(range(len(SCOPES))), min_size=1, max_size=5),
    st.lists(st.tuples(st.sampled_from(WATCHED_KEYS), st.sampled_from(["GBP", "EUR"])), max_size=30),
)
def test_the_rules_watching_a_key_are_those_in_its_scope_whoever_asked_before(
    scopes: list[int], asked: list[tuple[BalanceKey, str]]
) -> None:
    """One set of compiled rules answers for every key and currency in turn (its cache is by key, or by
    source and balance type when no rule's scope names accounts): each answer is the rules whose scope
    takes in that key and currency, as a set of rules compiled afresh for that question alone says."""
    rules = [below("5000", name=f"r{n}", **SCOPES[index]) for n, index in enumerate(scopes)]
    shared = compile_rules(rules)
    for key, currency in asked:
        expected = {
            rule.name for rule in rules
            if (rule.scope.source is None or fnmatch.fnmatchcase(key.source, rule.scope.source))
            and (rule.scope.account is None or fnmatch.fnmatchcase(key.account, rule.scope.account))
            and rule.scope.currency in (None, currency)
            and rule.scope.balance_type in (None, key.balance_type)
        }
        assert shared.watching(key, currency).names == expected
        assert compile_rules(rules).watching(key, currency).names == expected


STALE_SCOPES = [{}, {"source": "mc-*"}, {"source": "mypos-*"}, {"account": "*-0001"},
                {"source": "mc-*", "account": "*1"}, {"source": "mypos-*", "account": "B-*"}]
STALE_SUBJECTS = [subject_key(source, account) for source in ("mc-gbp", "mypos-eu")
                  for account in ("A-0001", "A-0002", "B-0001", WHOLE_SOURCE)]


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.sampled_from(range(len(STALE_SCOPES))), st.sampled_from(["account", "source"])),
             min_size=1, max_size=5),
    st.lists(st.sampled_from(STALE_SUBJECTS), max_size=30),
)
def test_the_stale_rules_watching_a_subject_are_those_in_its_scope_whoever_asked_before(
    scopes: list[tuple[int, str]], asked: list[BalanceKey]
) -> None:
    """One set of compiled rules answers for every poll subject in turn (its cache is by subject, or by
    source and whole-source-or-not when no stale rule that may take in the source names accounts): each
    answer is the stale rules of the subject's kind (per account or per source) whose scope takes it in,
    in rule order, as rules compiled afresh for that question alone say."""
    rules = [
        Rule(f"s{n}", "stale", after=timedelta(minutes=15), per=per,  # type: ignore[arg-type]
             scope=Scope(**STALE_SCOPES[index]))
        for n, (index, per) in enumerate(scopes)
    ]
    shared = compile_rules(rules)
    for subject in asked:
        whole_source = subject.account == WHOLE_SOURCE
        expected = [
            rule.name for rule in rules
            if (rule.per == "source") == whole_source
            and (rule.scope.source is None or fnmatch.fnmatchcase(subject.source, rule.scope.source))
            and (rule.scope.account is None or fnmatch.fnmatchcase(subject.account, rule.scope.account))
        ]
        assert [rule.name for rule in shared.stale_watching(subject)] == expected
        assert [rule.name for rule in compile_rules(rules).stale_watching(subject)] == expected
