"""The state store's freshness records in memory (watcher.freshness_records): a listed account's record is
kept compact, and reads back exactly as it was put."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.types import BalanceKey, Freshness
from watcher.freshness_records import FreshnessRecords
from watcher.hot_keys import HotKeys

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MOMENTS = [T0 + timedelta(minutes=m) for m in range(4)]
SUBJECTS = [BalanceKey(source, account) for source in ("mc", "other") for account in ("*", "a", "b", "c")]

records = st.builds(
    Freshness,
    subject=st.sampled_from(SUBJECTS),
    watched_since=st.sampled_from(MOMENTS),
    last_success_at=st.none() | st.sampled_from(MOMENTS),
    last_error=st.none() | st.just("HTTP 503"),
    access_revoked=st.booleans(),
    listed=st.booleans(),
    last_listing_at=st.none() | st.sampled_from(MOMENTS),
)


def check_against(model: dict[BalanceKey, Freshness], kept: FreshnessRecords) -> None:
    for subject in SUBJECTS:
        assert kept.get(subject) == model.get(subject), subject
    for source in ("mc", "other", "absent"):
        expected = {s.account for s, r in model.items() if r.listed and s.source == source}
        assert set(kept.listed(source)) == expected
        assert len(kept.listed(source)) == len(expected)
    assert sorted(kept.unlisted(), key=repr) == sorted((r for r in model.values() if not r.listed), key=repr)


@settings(max_examples=300)
@given(st.lists(records, max_size=40))
def test_every_record_reads_back_as_the_last_one_put_for_its_subject(puts: list[Freshness]) -> None:
    """Whatever records are put, in any order (listed or not, compact or not, one replacing another), a
    look-up gives the last one put for that subject, the listed index holds exactly the subjects whose
    last record is listed, and the unlisted ones are exactly those that are not."""
    kept = FreshnessRecords()
    model: dict[BalanceKey, Freshness] = {}
    for fresh in puts:
        kept.put(fresh)
        model[fresh.subject] = fresh
        check_against(model, kept)
    check_against(model, FreshnessRecords(model.values()))


def test_the_accounts_of_one_listing_share_one_pair_and_keep_no_record() -> None:
    """The records of accounts first seen in the same listing keep no Freshness and no key: their index
    entries point at one shared (watched_since, last_success_at) pair; a look-up makes the record again."""
    kept = FreshnessRecords()
    for account in ("a", "b", "c"):
        kept.put(Freshness(BalanceKey("mc", account), T0, T0, listed=True))
    assert kept._records == {}
    pairs = {id(pair) for pair in kept._listed["mc"].values()}
    assert len(pairs) == 1
    assert kept.get(BalanceKey("mc", "b")) == Freshness(BalanceKey("mc", "b"), T0, T0, listed=True)
    assert kept.get(BalanceKey("mc", "b", "savings")) is None


def test_a_listed_record_with_more_to_it_is_kept_whole() -> None:
    """A listed record that says more than its pair (an error, a revocation, a listing time) is kept as it
    is, still in the listed index, and an unlisted one replacing it takes it out of the index."""
    kept = FreshnessRecords()
    odd = Freshness(BalanceKey("mc", "a"), T0, T0, last_error="HTTP 503", listed=True)
    kept.put(odd)
    assert kept.get(BalanceKey("mc", "a")) is odd
    assert set(kept.listed("mc")) == {"a"}
    dropped = Freshness(BalanceKey("mc", "a"), T0, MOMENTS[1])
    kept.put(dropped)
    assert kept.get(BalanceKey("mc", "a")) is dropped
    assert set(kept.listed("mc")) == set()
    assert kept.unlisted() == [dropped]


def test_the_memo_of_pairs_is_bounded() -> None:
    """A daemon that lists new accounts at every round makes a new pair each time: the memo that shares
    them starts again past its limit instead of growing for ever, and every record still reads back."""
    kept = FreshnessRecords()
    for n in range(3000):
        kept.put(Freshness(BalanceKey("mc", f"acct-{n}"), T0 + timedelta(seconds=n), T0, listed=True))
    assert len(kept._memo) <= 1024
    assert kept.get(BalanceKey("mc", "acct-7")) == Freshness(
        BalanceKey("mc", "acct-7"), T0 + timedelta(seconds=7), T0, listed=True
    )


@settings(max_examples=300)
@given(st.lists(records | st.tuples(st.sampled_from(["pack", "let_go", "get"]), st.sampled_from(SUBJECTS)),
                max_size=40))
def test_records_packed_or_let_go_read_back_the_same(steps: list[Freshness | tuple[str, BalanceKey]]) -> None:
    """Packing or letting go of any subject at any moment (each put durable at once; a listed record
    stays as it is) changes nothing a reader sees: look-ups, the listed index, the unlisted walk and
    whether a subject was polled alone give the last record put; the walks read nothing back."""
    disk: dict[BalanceKey, Freshness] = {}
    kept = FreshnessRecords(hot=HotKeys(0), load=disk.get)
    for step in steps:
        if isinstance(step, Freshness):
            kept.put(step)
            disk[step.subject] = step
        elif step[0] == "pack":
            kept.pack(step[1])
        elif step[0] == "let_go":
            kept.let_go(step[1])
        else:
            check_against(disk, kept)  # reads every subject back
        held = dict(kept._records)
        assert set(kept.unlisted_subjects()) == {s for s, r in disk.items() if not r.listed}
        unlisted = sorted((r for r in disk.values() if not r.listed), key=repr)
        assert sorted(kept.unlisted(), key=repr) == unlisted
        for subject in SUBJECTS:
            assert kept.polled_alone(subject) == (subject in disk and not disk[subject].listed)
            card = BalanceKey(subject.source, subject.account, "available")
            assert kept.polled_alone(card) == kept.polled_alone(subject)
        assert all(kept._records[k] is v for k, v in held.items()), "the walks change nothing"
    check_against(disk, kept)
