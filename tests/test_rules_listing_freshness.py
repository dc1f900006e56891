"""A partner-wide listing's freshness is one fact: the source's `last_listing_at`. Accounts that answered
in it are `listed` and cost nothing to store; an account that drops out, fails or is answered otherwise
gets its own record. Staleness, reasons and resolves are exactly what per-account records would give."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.compiled import compile_rules
from rules.lifecycle import AlertTransition
from rules.model import Rule
from rules.staleness import assess_poll, resolving
from rules.timeline import tick
from rules.types import AlertState, BalanceKey, Freshness, PollOutcome, subject_key

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
SOURCE = "mc-list"
AFTER = timedelta(minutes=15)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def key(account: str) -> BalanceKey:
    return subject_key(SOURCE, account)


class Listings:
    """The daemon's part, in memory, as the poller and the store do it: listing outcomes with the listed
    index and the active alerts, ticks over every record."""

    def __init__(self, rules: list[Rule], *, as_listing: bool = True) -> None:
        self.rules = compile_rules(rules)
        self.as_listing = as_listing
        self.freshness: dict[BalanceKey, Freshness] = {}
        self.alerts: dict[BalanceKey, dict[str, AlertState]] = {}
        self.published: list[AlertTransition] = []
        self.written: list[Freshness] = []

    def listed_of(self, source: str) -> Collection[str]:
        return {s.account for s, f in self.freshness.items() if f.listed and s.source == source}

    def active(self) -> list[AlertState]:
        return [a for by_fp in self.alerts.values() for a in by_fp.values() if a.active]

    def active_keys(self) -> list[BalanceKey]:
        return [key for key, by_fp in self.alerts.items() if any(a.active for a in by_fp.values())]

    def listing(
        self, minutes: float, accounts: tuple[str, ...], ok: bool = True, reason: str | None = None,
        revoked: bool = False,
    ) -> list[tuple[str, str]]:
        outcome = PollOutcome(SOURCE, at(minutes), accounts, ok, reason, revoked, listing=self.as_listing)
        result = assess_poll(
            outcome, self.rules, self.freshness.get, self.alerts.get,
            listed_of=self.listed_of, active_keys=self.active_keys,
        )
        # The poller hands a listing's accounts over as its dict's keys, not copied into a tuple: the same.
        as_keys = replace(outcome, accounts=dict.fromkeys(accounts).keys())
        assert assess_poll(
            as_keys, self.rules, self.freshness.get, self.alerts.get,
            listed_of=self.listed_of, active_keys=self.active_keys,
        ) == result
        self.written = list(result.freshness)
        self.freshness.update({record.subject: record for record in result.freshness})
        return self._keep(result.transitions, result.alerts)

    def tick(self, minutes: float) -> list[tuple[str, str]]:
        """Both ways the alert clock may be called must agree: every record given, or (as the daemon
        does) only the unlisted ones with the listed index and the look-ups."""
        every = [state for by_fp in self.alerts.values() for state in by_fp.values()]
        update = tick(at(minutes), self.rules, every, list(self.freshness.values()))
        indexed = tick(
            at(minutes), self.rules, self.active(), [f for f in self.freshness.values() if not f.listed],
            stored=lambda k: self.alerts.get(k, {}), freshness_of=self.freshness.get,
            listed_of=self.listed_of,
        )
        assert sorted(indexed.alerts, key=repr) == sorted(update.alerts, key=repr)
        assert sorted(indexed.transitions, key=repr) == sorted(update.transitions, key=repr)
        return self._keep(update.transitions, update.alerts)

    def _keep(
        self, transitions: tuple[AlertTransition, ...], alerts: tuple[AlertState, ...]
    ) -> list[tuple[str, str]]:
        self.published += transitions
        for state in alerts:
            self.alerts.setdefault(state.key, {})[state.fingerprint] = state
        return [(t.status, t.state.key.account) for t in transitions]

    def effective(self, account: str) -> Freshness | None:
        return resolving(self.freshness.get)(key(account))


def stale() -> Rule:
    return Rule("stale", "stale", after=AFTER)


def test_a_listing_is_stored_as_one_fact_after_first_sight() -> None:
    """First sight writes the source and every account (listed); the next listing writes only the
    source's record, and each account's last success is that listing's time."""
    polls = Listings([stale()])
    polls.listing(0, ("a", "b", "c"))
    assert {r.subject.account for r in polls.written} == {"*", "a", "b", "c"}
    assert all(r.listed for r in polls.written if r.subject.account != "*")
    assert polls.freshness[key("*")].last_listing_at == at(0)
    polls.listing(1, ("a", "b", "c"))
    assert [r.subject.account for r in polls.written] == ["*"]
    assert polls.effective("b") == Freshness(key("b"), at(0), at(1), listed=True)


def test_an_account_that_drops_out_keeps_the_time_of_the_last_listing_it_was_in() -> None:
    """Missing from a listing: its own record, unlisted, with the previous listing's time; it goes stale
    `after` that, while the others stay fresh."""
    polls = Listings([stale()])
    polls.listing(0, ("a", "b"))
    polls.listing(4, ("a", "b"))
    polls.listing(8, ("a",))
    assert polls.freshness[key("b")] == Freshness(key("b"), at(0), at(4))
    polls.listing(12, ("a",))
    assert polls.tick(18) == []
    assert polls.tick(19) == [("firing", "b")]
    assert polls.published[-1].state.reason == "no successful poll since 2024-05-06T09:04:00Z (over 15m)"
    assert polls.listing(20, ("a", "b")) == [("resolved", "b")]
    assert polls.freshness[key("b")].listed


def test_listed_accounts_go_stale_with_their_source_and_resolve_with_the_next_listing() -> None:
    """No listing for `after`: every listed account fires (reason naming the last listing); the next
    listing resolves them all, though it writes no account record."""
    polls = Listings([stale()])
    polls.listing(0, ("a", "b"))
    polls.listing(5, ("a", "b"))
    assert polls.tick(19) == []
    fired = polls.tick(20)
    assert sorted(fired) == [("firing", "a"), ("firing", "b")]
    assert {t.state.reason for t in polls.published} == {
        "no successful poll since 2024-05-06T09:05:00Z (over 15m)"
    }
    resolved = polls.listing(21, ("a", "b"))
    assert sorted(resolved) == [("resolved", "a"), ("resolved", "b")]
    assert [r.subject.account for r in polls.written] == ["*"]
    assert polls.effective("a") == Freshness(key("a"), at(0), at(21), listed=True)


def test_a_failed_listing_gives_each_account_its_record_and_the_next_success_lists_them_again() -> None:
    """A failure records its reason on every account (unlisted, with the last listing's time); the next
    success lists them again and clears the error."""
    polls = Listings([stale()])
    polls.listing(0, ("a", "b"))
    polls.listing(3, ("a", "b"))
    polls.listing(6, ("a", "b"), ok=False, reason="HTTP 503")
    assert polls.freshness[key("a")] == Freshness(key("a"), at(0), at(3), "HTTP 503")
    assert polls.freshness[key("*")].last_listing_at == at(3)
    assert sorted(polls.listing(19, ("a", "b"), ok=False, reason="HTTP 503")) == [
        ("firing", "a"), ("firing", "b")
    ]
    polls.listing(20, ("a", "b"))
    assert polls.freshness[key("a")] == Freshness(key("a"), at(0), at(20), listed=True)
    assert sorted((t.status, t.state.key.account) for t in polls.published[2:]) == [
        ("resolved", "a"), ("resolved", "b")
    ]


def test_single_account_calls_of_a_listed_account_unlist_it() -> None:
    """A success that is not a listing gives the account its own record again (a source whose mode
    changed); later listings do not stand in for it."""
    polls = Listings([stale()])
    polls.listing(0, ("a",))
    outcome = PollOutcome(SOURCE, at(2), ("a",), True)
    result = assess_poll(outcome, polls.rules, polls.freshness.get, polls.alerts.get)
    assert result.freshness[1] == Freshness(key("a"), at(0), at(2))


# --- the property: equal to a model that keeps the exact last success of every account ----------------

Step = tuple[str, float, frozenset[str]]  # (kind, minutes later, accounts)
ACCOUNTS = ("a", "b", "c", "d")
steps = st.lists(
    st.tuples(
        st.sampled_from(["ok", "ok", "ok", "fail", "revoked", "tick", "tick"]),
        st.floats(min_value=0.5, max_value=12, allow_nan=False),
        st.frozensets(st.sampled_from(ACCOUNTS)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_listing_freshness_equals_exact_per_account_records(script: list[Step]) -> None:
    """Whatever listings succeed, fail, drop accounts or are revoked, and whenever the clock ticks: each
    account's resolved freshness (last success, first watched, error, revocation) is exactly what the
    reference model computes, and every stale alert is firing exactly when the model says it is."""
    polls = Listings([stale()])
    watched: dict[str, datetime] = {}
    success: dict[str, datetime] = {}
    error: dict[str, str | None] = {}
    revoked: dict[str, bool] = {}
    firing: dict[str, bool] = {}
    minutes = 0.0
    for kind, later, chosen in script:
        minutes += later
        now = at(minutes)
        accounts = tuple(a for a in ACCOUNTS if a in chosen)
        if kind == "tick":
            polls.tick(minutes)
            for account in watched:
                since = success.get(account, watched[account])
                if revoked[account] or now - since >= AFTER:
                    firing[account] = True
        elif kind == "ok":
            polls.listing(minutes, accounts)
            for account in accounts:
                watched.setdefault(account, now)
                success[account] = now
                error[account] = None
                revoked[account] = False
                firing[account] = False
        else:
            known = tuple(a for a in ACCOUNTS if a in watched)  # the poller names the known accounts
            polls.listing(minutes, known, ok=False, reason="HTTP 503", revoked=kind == "revoked")
            for account in known:
                error[account] = "HTTP 503"
                revoked[account] = revoked[account] or kind == "revoked"
                since = success.get(account, watched[account])
                if revoked[account] or now - since >= AFTER:
                    firing[account] = True
        for account in watched:
            record = polls.effective(account)
            assert record is not None
            got = (record.watched_since, record.last_success_at, record.last_error, record.access_revoked)
            assert got == (watched[account], success.get(account), error[account], revoked[account])
            states = polls.alerts.get(key(account), {})
            is_firing = any(s.status == "firing" for s in states.values())
            assert is_firing == firing.get(account, False), (account, minutes)


def test_records_take_the_subject_keys_the_caller_gives() -> None:
    """With `subject_of`, the records of a listing's accounts (and of single calls) hold the caller's own
    key objects; the records and transitions are equal to those made without it."""
    own = {account: BalanceKey(SOURCE, account) for account in ("a", "b")}
    for as_listing in (True, False):
        outcome = PollOutcome(SOURCE, at(0), ("a", "b"), True, None, False, listing=as_listing)
        rules = compile_rules([stale()])
        kwargs = {"listed_of": lambda source: (), "active_keys": list} if as_listing else {}
        plain = assess_poll(outcome, rules, {}.get, {}.get, **kwargs)  # type: ignore[arg-type]
        shared = assess_poll(
            outcome, rules, {}.get, {}.get, subject_of=own.__getitem__, **kwargs  # type: ignore[arg-type]
        )
        assert shared == plain
        records = {r.subject.account: r for r in shared.freshness}
        assert records["a"].subject is own["a"]
        assert records["b"].subject is own["b"]
