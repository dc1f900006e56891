"""The records of accounts first seen in a listing are held by key and made when read: the same records, in
the same order, as made one by one, without holding one object per account until the store has written
them (the first sight of 100,000 accounts held 8.4 MiB of them at its peak)."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from rules.first_listed import FirstListedRecords
from rules.model import Rule
from rules.staleness import assess_poll
from rules.types import AlertState, BalanceKey, Freshness, PollOutcome, subject_key

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
SOURCE = "mc-list"
STALE = Rule("stale", "stale", after=timedelta(minutes=15))


def key(account: str) -> BalanceKey:
    return subject_key(SOURCE, account)


def no_alerts(subject: BalanceKey) -> dict[str, AlertState] | None:
    return None


def first_listing(accounts: tuple[str, ...]) -> PollOutcome:
    return PollOutcome(SOURCE, T0, accounts, True, listing=True)


def test_a_first_listing_holds_its_new_accounts_by_key() -> None:
    """A first listing: the source's record, then each account's `Freshness(key, at, at, listed=True)`, in
    the listing's order; an account that had a record of its own (polled alone before) keeps its
    `watched_since` and is made as before."""
    own = Freshness(key("b"), T0 - timedelta(hours=1), T0 - timedelta(minutes=5))
    stored = {own.subject: own}
    result = assess_poll(
        first_listing(("a", "b", "c")), [STALE], stored.get, no_alerts,
        listed_of=lambda source: (), active_keys=lambda: (),
    )
    assert isinstance(result.freshness, FirstListedRecords)
    assert result.freshness == (
        Freshness(key("*"), T0, T0, last_listing_at=T0),
        Freshness(key("a"), T0, T0, listed=True),
        Freshness(key("b"), own.watched_since, T0, listed=True),
        Freshness(key("c"), T0, T0, listed=True),
    )


def test_a_listing_with_no_new_account_returns_a_plain_tuple() -> None:
    """Only a listing with accounts first seen in it holds keys; the next one stores the source's record."""
    stored: dict[BalanceKey, Freshness] = {}
    first = assess_poll(
        first_listing(("a",)), [STALE], stored.get, no_alerts,
        listed_of=lambda source: (), active_keys=lambda: (),
    )
    stored.update({r.subject: r for r in first.freshness})
    again = assess_poll(
        PollOutcome(SOURCE, T0 + timedelta(minutes=1), ("a",), True, listing=True), [STALE], stored.get,
        no_alerts, listed_of=lambda source: {"a"}, active_keys=lambda: (),
    )
    assert type(again.freshness) is tuple
    assert [r.subject for r in again.freshness] == [key("*")]


def test_the_records_of_a_first_listing_are_not_held_one_by_one() -> None:
    """Holding the result of a first listing of 20,000 accounts (whose keys exist already, as the
    source's) costs under a tenth of holding its records as objects."""
    accounts = tuple(f"acct-{n}" for n in range(20_000))
    keys = {account: key(account) for account in accounts}
    stored: dict[BalanceKey, Freshness] = {}
    tracemalloc.start()
    try:
        result = assess_poll(
            first_listing(accounts), [STALE], stored.get, no_alerts,
            listed_of=lambda source: (), active_keys=lambda: (), subject_of=keys.__getitem__,
        )
        held, _ = tracemalloc.get_traced_memory()
        made = tuple(result.freshness)
        both, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(made) == 20_001
    assert held < (both - held) / 10


entries = st.lists(
    st.one_of(
        st.builds(key, st.text("abc", min_size=1, max_size=3)),
        st.builds(
            Freshness, st.builds(key, st.text("abc", min_size=1, max_size=3)),
            st.sampled_from([T0, T0 + timedelta(seconds=1)]), st.none() | st.just(T0), listed=st.booleans(),
        ),
    ),
    max_size=8,
)


@given(entries, st.integers(-10, 10), st.integers(-10, 10))
def test_records_read_as_the_sequence_they_stand_for(
    mixed: list[Freshness | BalanceKey], start: int, stop: int
) -> None:
    """Any mix of records and keys reads as the records, a key as its first-listed record: by iteration,
    index, slice and length, and equal (both ways) to a tuple of them and to no other."""
    expected = tuple(e if isinstance(e, Freshness) else Freshness(e, T0, T0, listed=True) for e in mixed)
    records = FirstListedRecords(mixed, T0)
    assert tuple(records) == expected
    assert len(records) == len(expected)
    assert [records[i] for i in range(-len(expected), len(expected))] == [*expected, *expected]
    assert tuple(records[start:stop]) == expected[start:stop]
    assert records == expected
    assert expected == records
    assert records == FirstListedRecords(list(expected), T0)
    assert records != (*expected, Freshness(key("z"), T0))
    if expected:
        assert records != (*expected[:-1], Freshness(expected[-1].subject, T0 - timedelta(days=1)))
