"""Packed records (watcher.packed): what the state store keeps for an account not polled lately unpacks to
an equal record, Decimals with their exponent, datetimes to the microsecond; what cannot come back exactly
is not packed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.types import AlertState, Balance, BalanceKey, Freshness, KnownBalance
from watcher.packed import (
    pack_alert,
    pack_freshness,
    pack_known,
    unpack_alert,
    unpack_freshness,
    unpack_known,
)

KEY = BalanceKey("mastercard", "non_card_token:sbx-0001")
T0 = datetime(2026, 12, 2, 8, 0, 12, 345678, tzinfo=UTC)

# Naive bounds, as hypothesis wants them; every value drawn is in UTC.
moments = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
)
maybe_moments = st.none() | moments
amounts = st.decimals(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=40)
keys = st.builds(BalanceKey, texts, texts, st.sampled_from(["", "available", "blocked"]))

known_balances = st.builds(
    KnownBalance,
    balance=st.builds(Balance, amounts, st.sampled_from(["USD", "EUR", ""]),
                      st.sampled_from([None, "IN_CREDIT", "IN_DEBIT"]), st.none() | texts),
    observed_at=moments,
    correlation_id=texts,
    version=st.integers(min_value=0, max_value=2**70),
    description=st.none() | texts,
    history=st.lists(st.tuples(moments, amounts), max_size=5).map(tuple),
)
alert_states = st.builds(
    AlertState,
    fingerprint=texts, rule=texts, key=keys,
    status=st.sampled_from(["inactive", "pending", "firing", "resolved"]),
    episode=st.integers(min_value=0, max_value=10**6), started_at=moments, resolved_at=maybe_moments,
    pending_since=maybe_moments, cleared_since=maybe_moments, published=st.booleans(), muted=st.booleans(),
    suppressed_by=st.none() | texts, last_sent_at=maybe_moments, repeats=st.integers(0, 999),
    reason=st.none() | texts, kind=st.none() | texts, severity=st.none() | texts,
)
freshness_records = st.builds(
    Freshness,
    subject=keys, watched_since=moments, last_success_at=maybe_moments, last_error=st.none() | texts,
    access_revoked=st.booleans(), listed=st.booleans(), last_listing_at=maybe_moments,
)


def decimal_texts(known: KnownBalance) -> list[str]:
    return [str(known.balance.amount), *(str(amount) for _, amount in known.history)]


@settings(max_examples=300)
@given(known_balances)
def test_a_known_balance_unpacks_equal_with_its_decimals_exponents(known: KnownBalance) -> None:
    """Any known balance, with any history, unpacks to an equal one whose amounts print the same (equal
    Decimals may differ in exponent: 1000 and 1000.00 are one amount, but the events say which was sent)."""
    packed = pack_known(known)
    assert packed is not None
    again = unpack_known(packed)
    assert again == known
    assert decimal_texts(again) == decimal_texts(known)
    assert [at.tzinfo for at, _ in again.history] == [UTC] * len(known.history)


@settings(max_examples=300)
@given(alert_states)
def test_an_alert_state_unpacks_equal_for_its_key(state: AlertState) -> None:
    """Any alert state unpacks, given its key, to an equal one."""
    packed = pack_alert(state)
    assert packed is not None
    assert unpack_alert(state.key, packed) == state


@settings(max_examples=300)
@given(freshness_records)
def test_a_freshness_record_unpacks_equal_for_its_subject(fresh: Freshness) -> None:
    """Any freshness record unpacks, given its subject, to an equal one."""
    packed = pack_freshness(fresh)
    assert packed is not None
    assert unpack_freshness(fresh.subject, packed) == fresh


@given(st.sampled_from([None, timezone(timedelta(hours=2)), timezone(timedelta(0), "GMT")]), moments)
def test_a_record_with_a_time_outside_utc_is_not_packed(zone: timezone | None, moment: datetime) -> None:
    """A naive datetime, or one in another zone (even a zone at offset 0 under another name), would
    unpack changed: such a record is not packed, and the store keeps the object."""
    other = moment.replace(tzinfo=zone)
    known = KnownBalance(Balance(Decimal("1.00"), "USD"), T0, "c", 1, history=((other, Decimal("2.00")),))
    assert pack_known(known) is None
    assert pack_alert(AlertState("f", "stale", KEY, "firing", 1, T0, last_sent_at=other)) is None
    assert pack_freshness(Freshness(KEY, T0, other)) is None


def test_an_accounts_records_pack_to_a_third_of_their_size() -> None:
    """What this is for: an account polled one by one, its balance with a three-entry history, its stale
    alert and its freshness, packs to under 500 bytes of payload."""
    history = tuple((T0 - timedelta(minutes=m), Decimal(f"2{m}031.62")) for m in (40, 20, 10))
    amount = Balance(Decimal("24031.62"), "USD", "IN_CREDIT")
    known = KnownBalance(amount, T0, "corr-1234", 7, "Bench", history)
    reason = "no successful poll since 2026-12-02T08:00:12.345678Z (over 2m)"
    alert = AlertState("0123456789abcdef" * 2, "stale-account", KEY, "firing", 3, T0, pending_since=T0,
                       last_sent_at=T0, reason=reason, kind="stale", severity="warning")
    packed = [pack_known(known), pack_alert(alert), pack_freshness(Freshness(KEY, T0, T0))]
    sizes = [len(p) for p in packed if p is not None]
    assert len(sizes) == 3
    assert sum(sizes) < 500, sizes
