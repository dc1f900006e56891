"""How fast the pure rules engine is: 100,000 accounts against 20 rules of every kind.

Run: .venv/bin/python bench/rules_engine.py [accounts]
A poll round observes every account once (`assess`) and reports every call (`assess_poll`); a tick
(`tick`) then moves every alert on by time. Three sources of Mastercard GBP accounts and one of myPOS
EUR "available" balances; amounts wander across the thresholds, so alerts fire and resolve; the
engine's own output state is fed back in, as the daemon does. The first round sees every account for
the first time; the figure that matters is a later round, with the per-key caches warm. As timeit
does, the garbage collector is off while timing: its pauses depend on the whole heap, not the engine.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rules.compiled import CompiledRules, compile_rules
from rules.engine import assess
from rules.model import Rule, RuleKind, Scope
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

ROUNDS = 3
START = datetime(2024, 1, 1, tzinfo=UTC)
ROUND_GAP = timedelta(minutes=1)


def _rule(name: str, kind: RuleKind, threshold: str, clear: str | None = None, **scope: str) -> Rule:
    return Rule(
        name=name,
        kind=kind,
        threshold=Decimal(threshold),
        scope=Scope(**scope),
        clear_above=Decimal(clear) if clear is not None and kind == "below" else None,
        clear_below=Decimal(clear) if clear is not None and kind == "above" else None,
    )


def make_rules() -> list[Rule]:
    """Twenty rules of every kind, as an operator might write them, scoped every way a rule can be."""
    minute = timedelta(minutes=1)
    rules = [
        _rule("gbp-low", "below", "5000.00", "5500.00", currency="GBP"),
        _rule("gbp-overfunded", "above", "19500.00", "19000.00", currency="GBP"),
        _rule("eur-low", "below", "50.00", "60.00", currency="EUR"),
        _rule("eur-available-low", "below", "20.00", source="mypos-*", balance_type="available"),
        _rule("eur-overfunded", "above", "190.00", currency="EUR"),
        Rule(
            "gbp-critical",
            "below",
            Decimal("1000.00"),
            clear_above=Decimal("1500.00"),
            scope=Scope(currency="GBP"),
            suppresses=("gbp-low",),
            repeat=60 * minute,
        ),
        Rule("overdrawn", "below", Decimal(0), for_duration=2 * minute),
        Rule("mc-in-debit", "state", state=IN_DEBIT, scope=Scope(source="mc-*"), keep_firing_for=5 * minute),
        Rule(
            "gbp-drop",
            "drop",
            window=timedelta(hours=1),
            min_drop=Decimal("2000.00"),
            min_drop_percent=Decimal(30),
            scope=Scope(source="mc-*", currency="GBP"),
        ),
        Rule("vip-movement", "change", min_change=Decimal("1000.00"), scope=Scope(account="acct-1??")),
        Rule("account-stale", "stale", after=15 * minute),
        Rule("source-down", "stale", after=5 * minute, per="source", suppresses=("account-stale",)),
    ]
    for i in range(8):
        # Per-account-group floors, as treasury adds them for particular partners.
        floor = str(2000 + 100 * i)
        rules.append(_rule(f"group-{i}-low", "below", floor, source="mc-*", account=f"acct-{i}?*"))
    return rules


def make_keys(count: int) -> list[tuple[BalanceKey, str]]:
    """Three Mastercard sources in GBP, and a quarter myPOS "available" EUR balances."""
    keys: list[tuple[BalanceKey, str]] = []
    for i in range(count):
        if i % 4 == 3:
            keys.append((BalanceKey("mypos-cards", f"5055{i:07d}", "available"), "EUR"))
        else:
            keys.append((BalanceKey(f"mc-{i % 3}", f"acct-{i}"), "GBP"))
    return keys


def make_rounds(keys: list[tuple[BalanceKey, str]], rng: random.Random) -> list[list[Observation]]:
    """Every account once per round; a fifth of them move between rounds, sometimes across a threshold."""
    cents = {
        key: rng.randrange(300_000, 2_000_000) if currency == "GBP" else rng.randrange(5_000, 20_000)
        for key, currency in keys
    }
    rounds: list[list[Observation]] = []
    for number in range(ROUNDS):
        at = START + number * ROUND_GAP
        observations = []
        for index, (key, currency) in enumerate(keys):
            if number and rng.random() < 0.2:
                step = rng.randrange(-400_000, 200_000) // (1 if currency == "GBP" else 100)
                cents[key] = max(-50_000, cents[key] + step)
            signed = Decimal(cents[key]).scaleb(-2)
            if key.balance_type == "":
                balance = Balance(abs(signed), currency, IN_DEBIT if signed < 0 else IN_CREDIT)
            else:
                balance = Balance(signed, currency, None, key.balance_type)
            observations.append(Observation(key, "bench", balance, at, f"c{number}-{index}"))
        rounds.append(observations)
    return rounds


class Store:
    """What the daemon's state store holds, in memory; each key's slot found before the clock starts,
    so that the figures are the engine's and not the cost of hashing keys into dicts."""

    def __init__(self) -> None:
        self.slots: dict[BalanceKey, tuple[list[KnownBalance | None], dict[str, AlertState]]] = {}
        self.freshness: dict[BalanceKey, Freshness] = {}
        self.transitions = 0
        self.changes = 0

    def alerts_of(self, key: BalanceKey) -> dict[str, AlertState]:
        slot = self.slots.get(key)
        return {} if slot is None else slot[1]

    def all_alerts(self) -> list[AlertState]:
        return [state for _, alerts in self.slots.values() for state in alerts.values()]


def timed_section() -> float:
    """Collect now and switch the collector off until `end_section`; the start time."""
    gc.collect()
    gc.disable()
    return time.perf_counter()


def end_section(began: float) -> float:
    elapsed = time.perf_counter() - began
    gc.enable()
    return elapsed


def run_round(observations: list[Observation], rules: CompiledRules, store: Store) -> float:
    """Assess every observation, storing what each assessment says to store; time it."""
    work = [(o, store.slots.setdefault(o.key, ([None], {}))) for o in observations]
    began = timed_section()
    for observation, (known, alerts) in work:
        result = assess(observation, known[0], rules, alerts)
        known[0] = result.known
        if result.change is not None:
            store.changes += 1
        if result.alerts:
            store.transitions += len(result.transitions)
            for alert in result.alerts:
                alerts[alert.fingerprint] = alert
    return end_section(began)


def run_polls(observations: list[Observation], rules: CompiledRules, store: Store) -> float:
    """Report one successful call per account, as a round of single-account calls does; time it."""
    outcomes = [PollOutcome(o.key.source, o.observed_at, (o.key.account,), True) for o in observations]
    began = timed_section()
    for outcome in outcomes:
        result = assess_poll(outcome, rules, store.freshness.get, store.alerts_of)
        for record in result.freshness:
            store.freshness[record.subject] = record
    return end_section(began)


def run_tick(now: datetime, rules: CompiledRules, store: Store) -> float:
    """One tick over every stored alert state and freshness record; time it."""
    alerts, freshness = store.all_alerts(), list(store.freshness.values())
    began = timed_section()
    update = tick(now, rules, alerts, freshness)
    elapsed = end_section(began)
    store.transitions += len(update.transitions)
    for state in update.alerts:
        store.slots.setdefault(state.key, ([None], {}))[1][state.fingerprint] = state
    return elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rules = compile_rules(make_rules())
    rounds = make_rounds(make_keys(count), random.Random(7))
    store = Store()
    assess_times: list[float] = []
    poll_times: list[float] = []
    tick_times: list[float] = []
    for number, observations in enumerate(rounds):
        assess_times.append(run_round(observations, rules, store))
        poll_times.append(run_polls(observations, rules, store))
        tick_times.append(run_tick(START + number * ROUND_GAP + ROUND_GAP / 2, rules, store))
    steady = min(assess_times[1:])
    print(
        f"{count:,} accounts against {len(rules)} rules: assess {steady:.3f}s per round "
        f"({count / steady:,.0f}/s; first sight {assess_times[0]:.3f}s), "
        f"assess_poll {min(poll_times[1:]):.3f}s, tick {min(tick_times[1:]):.3f}s "
        f"({store.changes:,} changes, {store.transitions:,} alert transitions over {ROUNDS} rounds)"
    )


if __name__ == "__main__":
    main()
