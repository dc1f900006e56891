"""`stale` rules and poll outcomes: freshness per account and per source, staleness by time, at once on
revoked access with the provider's reason, resolved only by a successful poll."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rules.compiled import compile_rules, fingerprint
from rules.engine import assess
from rules.lifecycle import AlertTransition
from rules.model import Rule, Scope
from rules.staleness import assess_poll, is_stale, stale_reason
from rules.timeline import tick
from rules.types import (
    IN_CREDIT,
    AlertState,
    Balance,
    BalanceKey,
    Freshness,
    Observation,
    PollOutcome,
    subject_key,
)

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
ACCOUNT = subject_key("mc-gbp", "acct-1")
SOURCE = subject_key("mc-gbp")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def stale(name: str = "stale", after: float = 15, **values: object) -> Rule:
    return Rule(name, "stale", after=timedelta(minutes=after), **values)  # type: ignore[arg-type]


class Polls:
    """The daemon's part, in memory: poll outcomes and ticks through the engine, stored as it says."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = compile_rules(rules)
        self.freshness: dict[BalanceKey, Freshness] = {}
        self.alerts: dict[BalanceKey, dict[str, AlertState]] = {}
        self.published: list[AlertTransition] = []

    def poll(
        self,
        minutes: float,
        ok: bool = True,
        reason: str | None = None,
        revoked: bool = False,
        accounts: tuple[str, ...] = ("acct-1",),
        source: str = "mc-gbp",
    ) -> list[tuple[str, str, str]]:
        outcome = PollOutcome(source, at(minutes), accounts, ok, reason, revoked)
        result = assess_poll(outcome, self.rules, self.freshness.get, self.alerts.get)
        self.freshness.update({record.subject: record for record in result.freshness})
        return self._keep(result.transitions, result.alerts)

    def tick(self, minutes: float) -> list[tuple[str, str, str]]:
        every = [state for by_fp in self.alerts.values() for state in by_fp.values()]
        update = tick(at(minutes), self.rules, every, list(self.freshness.values()))
        return self._keep(update.transitions, update.alerts)

    def _keep(
        self, transitions: tuple[AlertTransition, ...], alerts: tuple[AlertState, ...]
    ) -> list[tuple[str, str, str]]:
        self.published += transitions
        for state in alerts:
            self.alerts.setdefault(state.key, {})[state.fingerprint] = state
        return [(t.status, t.rule.name, t.state.key.account) for t in transitions]

    def state(self, name: str, key: BalanceKey = ACCOUNT) -> AlertState:
        return self.alerts[key][fingerprint(name, key)]


def test_success_and_failure_keep_freshness_per_account_and_source() -> None:
    """Every poll updates the freshness of its source and of each account it covered; a failure keeps
    the last success and records the reason."""
    polls = Polls([])
    polls.poll(0)
    assert polls.freshness[ACCOUNT] == Freshness(ACCOUNT, at(0), at(0))
    assert polls.freshness[SOURCE] == Freshness(SOURCE, at(0), at(0))
    polls.poll(5, ok=False, reason="HTTP 503")
    assert polls.freshness[ACCOUNT] == Freshness(ACCOUNT, at(0), at(0), "HTTP 503")
    polls.poll(6, ok=False, reason="timeout", accounts=("acct-2",))
    assert polls.freshness[subject_key("mc-gbp", "acct-2")] == Freshness(
        subject_key("mc-gbp", "acct-2"), at(6), None, "timeout"
    )


def test_time_without_success_makes_an_account_stale() -> None:
    """No successful poll for `after`: the tick fires the stale alert, with a reason naming the last
    success and the last error; no balance, no observation."""
    polls = Polls([stale()])
    polls.poll(0)
    polls.poll(5, ok=False, reason="HTTP 503")
    assert polls.tick(14) == []
    assert polls.tick(15) == [("firing", "stale", "acct-1")]
    (transition,) = polls.published
    assert transition.trigger is None
    assert transition.balance is None
    assert transition.state.reason == (
        "no successful poll since 2024-05-06T09:00:00Z (over 15m); last error: HTTP 503"
    )


def test_a_failing_poll_past_after_fires_too() -> None:
    """A failure reported after `after` has passed fires at once, without waiting for the tick."""
    polls = Polls([stale()])
    polls.poll(0)
    assert polls.poll(10, ok=False, reason="HTTP 503") == []
    assert polls.poll(16, ok=False, reason="HTTP 503") == [("firing", "stale", "acct-1")]


def test_revoked_access_fires_at_once_with_the_providers_reason() -> None:
    """An answer that access is no longer possible fires the stale alert at once, `after` and `for`
    notwithstanding, with the provider's reason."""
    polls = Polls([stale(after=60, for_duration=timedelta(minutes=30))])
    polls.poll(0)
    assert polls.poll(1, ok=False, reason="consent expired (CONSENT_EXPIRED)", revoked=True) == [
        ("firing", "stale", "acct-1")
    ]
    assert polls.state("stale").reason == "access revoked: consent expired (CONSENT_EXPIRED)"


def test_failures_never_resolve_and_a_revocation_is_not_undone_by_a_timeout() -> None:
    """After a revocation, later failures of any kind keep the alert firing; only a success resolves."""
    polls = Polls([stale()])
    polls.poll(0, ok=False, reason="token expired", revoked=True)
    for minute in range(1, 30):
        assert polls.poll(minute, ok=False, reason="timeout") == []
        assert polls.tick(minute) == []
    assert polls.freshness[ACCOUNT].access_revoked
    assert polls.poll(30) == [("resolved", "stale", "acct-1")]
    assert polls.published[-1].firing_for == timedelta(minutes=30)
    assert not polls.freshness[ACCOUNT].access_revoked


def test_a_subject_that_never_answered_goes_stale_from_its_first_attempt() -> None:
    """Without any success, staleness counts from the first poll attempt."""
    polls = Polls([stale()])
    polls.poll(0, ok=False, reason="connection refused")
    assert polls.tick(14) == []
    assert polls.tick(15) == [("firing", "stale", "acct-1")]
    assert "watching began at 2024-05-06T09:00:00Z" in (polls.state("stale").reason or "")


def test_source_wide_staleness_and_its_suppression_of_accounts() -> None:
    """A stale rule `per = "source"` watches the whole source (any successful call keeps it fresh);
    when it suppresses the per-account rule, an outage pages once, not once per account."""
    rules = [stale("account-stale"), stale("source-down", per="source", suppresses=("account-stale",))]
    polls = Polls(rules)
    polls.poll(0, accounts=("acct-1", "acct-2"))
    assert polls.tick(15) == [("firing", "source-down", "*")]
    assert polls.state("account-stale").suppressed_by == "source-down"
    assert polls.state("account-stale", subject_key("mc-gbp", "acct-2")).status == "firing"
    assert polls.poll(16, accounts=("acct-1",)) == [("resolved", "source-down", "*")]
    # acct-2 is still stale and, no longer suppressed, pages at the next tick.
    assert polls.tick(16) == [("firing", "account-stale", "acct-2")]


def test_scope_of_stale_rules() -> None:
    """A stale rule watches only the sources and accounts its globs match."""
    polls = Polls([stale(scope=Scope(source="mypos-*")), stale("mc", scope=Scope(account="acct-1"))])
    polls.poll(0, accounts=("acct-1", "acct-2"))
    polls.poll(0, source="mypos-cards", accounts=("505",))
    assert sorted(polls.tick(15)) == [("firing", "mc", "acct-1"), ("firing", "stale", "505")]


def test_a_success_stops_a_pending_stale_alert() -> None:
    """With `for`, a stale subject is pending first; a success before `for` ends it quietly."""
    polls = Polls([stale(for_duration=timedelta(minutes=10))])
    polls.poll(0)
    assert polls.tick(15) == []
    assert polls.state("stale").status == "pending"
    assert polls.poll(20) == []
    assert polls.state("stale").status == "inactive"


def test_observations_do_not_touch_stale_alerts() -> None:
    """A Mastercard balance key is also its account's poll subject: `assess` leaves the stale alert on
    it alone (only a poll outcome resolves it)."""
    rules = compile_rules([stale()])
    firing = AlertState(fingerprint("stale", ACCOUNT), "stale", ACCOUNT, "firing", 1, T0, kind="stale")
    observation = Observation(ACCOUNT, "mastercard-send", Balance(Decimal(1), "GBP", IN_CREDIT), at(1), "c")
    assert assess(observation, None, rules, {firing.fingerprint: firing}).transitions == ()


def test_annotations_of_stale_alerts() -> None:
    """Stale alerts render {reason}, {last_success} and {after}; balance placeholders are n/a."""
    summary = "{source}/{account} silent for {after}: {reason} (last success {last_success}, {amount})"
    polls = Polls([stale(annotations=(("summary", summary),))])
    polls.poll(0, ok=False, reason="bad key", revoked=True)
    assert dict(polls.published[0].annotations)["summary"] == (
        "mc-gbp/acct-1 silent for 15m: access revoked: bad key (last success never, n/a)"
    )


def test_staleness_helpers() -> None:
    """is_stale holds at exactly `after`, or when revoked; stale_reason says which."""
    rule = stale()
    fresh = Freshness(ACCOUNT, T0, T0)
    assert not is_stale(rule, fresh, at(14.9))
    assert is_stale(rule, fresh, at(15))
    revoked = Freshness(ACCOUNT, T0, T0, None, True)
    assert is_stale(rule, revoked, T0)
    assert stale_reason(rule, revoked) == "access revoked"
