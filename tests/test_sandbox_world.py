"""The sandbox's world: balances as functions of seed and tick, read lazily; ticks that cost nothing."""

from __future__ import annotations

import gc
import itertools
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from types import FrameType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from watcher.sandbox.movement import Balance, Movement, Path, Ticks, settled, settling_ticks
from watcher.sandbox.world import (
    _MASTERCARD_PROFILES,
    _MYPOS_PROFILES,
    MAX_CATCH_UP_TICKS,
    SEED_MYPOS_ACCOUNT,
    World,
)

PARTNER = "P1"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clocks:
    """The monotonic clock and the wall clock of a world, both moved by hand."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = T0

    def sleep(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += timedelta(seconds=seconds)


def world(
    *, seed: int = 1, accounts: int = 10, mypos: int = 3, tick_seconds: float = 0,
    clocks: Clocks | None = None,
) -> World:
    clocks = clocks or Clocks()
    return World(seed=seed, accounts_per_partner=accounts, mypos_accounts=mypos, tick_seconds=tick_seconds,
                 clock=lambda: clocks.monotonic, wall_clock=lambda: clocks.wall, mypos_seed_body=b"{}")


def amounts(w: World) -> list[Decimal]:
    """Every balance of the world now: the partner's accounts, then every myPOS balance."""
    mastercard = [account.balance.amount for account in w.mastercard_accounts(PARTNER)]
    mypos = [balance.amount for account in w.mypos_accounts() for balance in account.balances.values()]
    return mastercard + mypos


def steps_taken(action: Callable[[], object]) -> list[str]:
    """Every line of Python `action` runs and every built-in it calls, in order (addresses left out)."""
    steps: list[str] = []

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            steps.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        return trace

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            steps.append(getattr(arg, "__qualname__", "?"))

    # A collection may run anywhere, with the callbacks installed (hypothesis times them): not a step.
    collecting = gc.isenabled()
    gc.disable()
    sys.settrace(trace)
    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
        sys.settrace(None)
        if collecting:
            gc.enable()
    return steps


# -- ticks cost nothing ---------------------------------------------------------------------------------


def test_advance_takes_the_same_steps_for_any_number_of_accounts_or_ticks() -> None:
    """A tick's cost does not depend on the world's size: advancing a world of thousands of accounts runs
    exactly the lines and calls advancing one of a few does, whatever the number of ticks, and none of
    them is a balance's."""
    small, large = world(accounts=5, mypos=1), world(accounts=4000, mypos=300)
    for w in (small, large):
        w.mastercard_accounts(PARTNER)
    large.mastercard_accounts("P2")
    one_tick = steps_taken(partial(small.advance, 1))
    assert steps_taken(partial(large.advance, 1)) == one_tick
    assert steps_taken(partial(large.advance, 1000)) == one_tick
    assert not [step for step in one_tick if step.startswith(("Balance.", "Path.", "Movement."))]


def test_sync_takes_the_same_steps_for_any_number_of_accounts() -> None:
    """Ticks that fall due by the clock, a catch-up after a long pause included, run the same lines and
    calls for any number of accounts."""
    calls = []
    for accounts, mypos in ((5, 1), (4000, 300)):
        clocks = Clocks()
        w = world(accounts=accounts, mypos=mypos, tick_seconds=1, clocks=clocks)
        w.mastercard_accounts(PARTNER)
        clocks.sleep(100_000)
        calls.append(steps_taken(w.sync))
        assert w.tick == MAX_CATCH_UP_TICKS
    assert calls[0] == calls[1]


# -- deterministic --------------------------------------------------------------------------------------


def test_amounts_are_a_function_of_seed_and_tick() -> None:
    """Same seed, same tick, same amounts: however the ticks came (one at a time and read each time, or all
    at once), and whenever the accounts were first asked for."""
    stepwise, at_once, late = world(), world(), world()
    stepwise.mastercard_accounts(PARTNER)
    at_once.mastercard_accounts(PARTNER)
    for _ in range(60):
        stepwise.advance(1)
        amounts(stepwise)
    at_once.advance(60)
    late.advance(30)
    late.mastercard_accounts(PARTNER)
    late.advance(30)
    assert amounts(stepwise) == amounts(at_once) == amounts(late)


def test_a_static_world_shows_its_profiles_start_amounts() -> None:
    """Before any tick every account is within 50.00 of its profile's start amount (the shape the listing
    benchmark measures: healthy balances, no alert at first sight), the same for a partner first asked
    for later; accounts of one profile then go their own ways (their paths are anywhere in the wave)."""
    w = world(accounts=500, mypos=30)
    accounts = w.mastercard_accounts(PARTNER)
    for index, account in enumerate(accounts):
        start = Decimal(_MASTERCARD_PROFILES[index % len(_MASTERCARD_PROFILES)].start).scaleb(-2)
        assert abs(account.balance.amount - start) <= Decimal("50.00")
    mypos = [a for a in w.mypos_accounts() if a.number != SEED_MYPOS_ACCOUNT]
    for index, account in enumerate(mypos):
        start = Decimal(_MYPOS_PROFILES[index % len(_MYPOS_PROFILES)].start).scaleb(-2)
        assert all(abs(b.amount - start) <= Decimal("50.00") for b in account.balances.values())
    w.advance(50)
    later = world(accounts=500, mypos=30)
    later.advance(50)
    assert amounts(later) == amounts(w)
    w.advance(400)
    mains = [account.balance.amount for account in accounts[::5]]
    main = _MASTERCARD_PROFILES[0].movement
    assert max(mains) - min(mains) > Decimal(main.high - main.low).scaleb(-2) / 2  # noise alone: 2 x 300.00


def test_different_seeds_and_accounts_differ() -> None:
    """Another seed gives other amounts, and two accounts of the same profile do not move alike."""
    one, other = world(seed=1), world(seed=2)
    one.advance(7)
    other.advance(7)
    assert amounts(one) != amounts(other)
    twins = [one.mastercard_accounts(PARTNER)[i] for i in (1, 6)]  # the same profile, 5 apart
    series: list[list[Decimal]] = [[], []]
    for _ in range(20):
        one.advance(1)
        for series_of, account in zip(series, twins, strict=True):
            series_of.append(account.balance.amount)
    assert series[0] != series[1]


def test_balances_stay_within_their_profile_and_step() -> None:
    """Over two long periods every moving balance steps no more than its max_step and keeps its decimals
    (two for Mastercard, three for myPOS); once settled from its start amount onto its path (within
    `settling_ticks` of tick 0), it stays within its wave's range widened by its noise."""
    w = world(accounts=10, mypos=6)
    cards = w.mastercard_accounts(PARTNER)
    cards_mypos = w.mypos_accounts()[1:]
    history: dict[int, list[Decimal]] = {}
    for _ in range(400):
        for index, card in enumerate(cards):
            history.setdefault(index, []).append(card.balance.amount)
        for index, account in enumerate(cards_mypos):
            history.setdefault(-1 - index, []).append(account.balances["available"].amount)
        w.advance(1)
    for key, series in history.items():
        profile = _MASTERCARD_PROFILES[key % 5] if key >= 0 else _MYPOS_PROFILES[(-1 - key) % 3]
        movement, places = profile.movement, (-2 if key >= 0 else -3)
        assert all(amount.as_tuple().exponent == places for amount in series)
        cents = [int(amount * 100) for amount in series]
        assert max(abs(b - a) for a, b in itertools.pairwise(cents)) <= movement.max_step
        settled_from = settling_ticks(movement.high - movement.low + movement.noise, movement.settle_step)
        assert settled_from < 200
        assert min(cents[settled_from:]) >= movement.low - movement.noise
        assert max(cents[settled_from:]) <= movement.high + movement.noise


# -- the control API's balances -------------------------------------------------------------------------


def test_set_balance_stays_where_it_is_put() -> None:
    """Put without keep_moving, a balance keeps the exact digits it was given, tick after tick, and its
    timestamp is when it was put."""
    clocks = Clocks()
    w = world(clocks=clocks)
    token = w.mastercard_accounts(PARTNER)[1].non_card_token
    w.advance(3)
    clocks.sleep(5)
    put_at = clocks.wall
    account = w.set_mastercard_balance(PARTNER, token, Decimal("5000"), "GBP")
    number = w.mypos_accounts()[1].number
    w.set_mypos_balance(number, "available", Decimal("99.5"), "EUR")
    for _ in range(50):
        clocks.sleep(1)
        w.advance(1)
        assert str(account.balance.amount) == "5000"
        assert account.updated_at == put_at
        assert str(w.mypos_accounts()[1].balances["available"].amount) == "99.5"


def test_keep_moving_moves_on_from_where_it_is_put_back_to_its_path() -> None:
    """Put with keep_moving, a balance reads what it was given at that tick, then moves on within its
    step, its distance from where it would have been shrinking every tick until it is back on its path."""
    w, twin = world(), world()
    for x in (w, twin):
        x.mastercard_accounts(PARTNER)
        x.advance(10)
    token = w.mastercard_accounts(PARTNER)[1].non_card_token  # Payouts: the smallest room to settle
    account = w.set_mastercard_balance(PARTNER, token, Decimal("25000.00"), "GBP", keep_moving=True)
    assert account.balance.amount == Decimal("25000.00")
    same = twin.mastercard_account(PARTNER, token)
    assert same is not None
    max_step = Decimal(_MASTERCARD_PROFILES[1].movement.max_step) / 100
    previous, distance = account.balance.amount, abs(account.balance.amount - same.balance.amount)
    for _ in range(300):
        w.advance(1)
        twin.advance(1)
        amount = account.balance.amount
        assert abs(amount - previous) <= max_step
        assert abs(amount - same.balance.amount) <= distance
        previous, distance = amount, abs(amount - same.balance.amount)
    assert distance == 0


def test_keep_moving_keeps_digits_below_the_cent() -> None:
    """A myPOS balance put at an amount with a mill keeps that mill while it moves on."""
    w = world()
    number = w.mypos_accounts()[1].number
    w.set_mypos_balance(number, "available", Decimal("1234.567"), "EUR", keep_moving=True)
    w.advance(3)
    amount = w.mypos_accounts()[1].balances["available"].amount
    assert amount != Decimal("1234.567")
    assert amount.as_tuple().exponent == -3
    assert amount.as_tuple().digits[-1] == 7


def test_an_account_the_control_api_creates_stays_even_with_keep_moving() -> None:
    """A new account or balance type has no profile to move with: it stays where it is put."""
    w = world()
    account = w.set_mastercard_balance(
        PARTNER, "non_card_token:new", Decimal("12.50"), "EUR", keep_moving=True
    )
    w.set_mypos_balance("50553599999", "available", Decimal("1.000"), "EUR", keep_moving=True)
    w.advance(20)
    assert account.balance.amount == Decimal("12.50")
    mypos_account = w.mypos_account("50553599999")
    assert mypos_account is not None
    assert mypos_account.balances["available"].amount == Decimal("1.000")


# -- timestamps -----------------------------------------------------------------------------------------


def test_updated_at_is_the_start_of_the_tick_it_last_changed() -> None:
    """A Mastercard account's timestamp: when it was created until a tick changes it, then the wall-clock
    start of the tick that did (every tick of a catch-up starts at the same time)."""
    clocks = Clocks()
    w = world(clocks=clocks)
    created_at = clocks.wall
    accounts = w.mastercard_accounts(PARTNER)
    assert {account.updated_at for account in accounts} == {created_at}
    clocks.sleep(2)
    w.advance(1)
    assert {account.updated_at for account in accounts} == {clocks.wall}
    clocks.sleep(2)
    advanced_at = clocks.wall
    w.advance(5)
    clocks.sleep(30)  # no tick: nothing changes
    assert {account.updated_at for account in accounts} == {advanced_at}


def test_updated_at_of_a_balance_that_stops_changing() -> None:
    """When a balance stops changing (a flat wave without noise, once settled), its timestamp stays the
    start of the last tick that changed it."""
    flat = Movement(low=100_000, high=100_000, period=10, noise=0, max_step=10_000)
    ticks = Ticks(T0)
    balance = Balance(ticks, Decimal("1500.00"), "GBP", T0, Path(flat, phase=0, noise_seed=1))
    last_change, previous = T0, balance.amount
    for second in range(1, 60):
        ticks.advance(1, T0 + timedelta(seconds=second))
        if balance.amount != previous:
            last_change, previous = T0 + timedelta(seconds=second), balance.amount
        assert balance.updated_at == last_change
    assert balance.amount == Decimal("1000.00")
    assert T0 < last_change < T0 + timedelta(seconds=59)


# -- myPOS ----------------------------------------------------------------------------------------------


def test_booked_follows_available_one_tick_behind() -> None:
    """A world card account's booked balance is its available one tick before; put available with
    keep_moving and booked shows the new amount from the next tick; put it still and booked stays."""
    w = world()
    account = w.mypos_accounts()[1]
    available, booked = account.balances["available"], account.balances["booked"]
    assert booked.amount == available.amount
    for _ in range(30):
        before = available.amount
        w.advance(1)
        assert booked.amount == before
        assert available.amount != before
    shown = booked.amount
    w.set_mypos_balance(account.number, "available", Decimal("4321.000"), "EUR", keep_moving=True)
    assert (available.amount, booked.amount) == (Decimal("4321.000"), shown)
    w.advance(1)
    assert booked.amount == Decimal("4321.000")
    w.advance(1)
    shown = booked.amount
    w.set_mypos_balance(account.number, "available", Decimal("7.000"), "EUR")
    w.advance(5)
    assert (available.amount, booked.amount) == (Decimal("7.000"), shown)


def test_mypos_seed_account_never_moves() -> None:
    """The seed account's one balance is the sample's, whatever the ticks."""
    w = world()
    w.advance(500)
    seed = w.mypos_account(SEED_MYPOS_ACCOUNT)
    assert seed is not None
    assert [(kind, str(b.amount)) for kind, b in seed.balances.items()] == [("available", "120.260")]


# -- time -----------------------------------------------------------------------------------------------


def test_freeze_skips_ticks_and_advance_moves_anyway() -> None:
    """Frozen, the ticks that pass are skipped, not replayed on unfreezing; advance moves n ticks frozen or
    not; a long pause catches up MAX_CATCH_UP_TICKS at most; tick_seconds 0 never moves by itself."""
    clocks = Clocks()
    w, reference = world(tick_seconds=1, clocks=clocks), world()
    clocks.sleep(3)
    w.sync()
    assert w.tick == 3
    w.frozen = True
    before = amounts(w)
    clocks.sleep(50)
    w.sync()
    assert (w.tick, amounts(w)) == (3, before)
    w.advance(2)
    reference.advance(5)
    assert (w.tick, amounts(w)) == (5, amounts(reference))
    w.frozen = False
    clocks.sleep(1)
    w.sync()
    assert w.tick == 6
    clocks.sleep(1_000_000)
    w.sync()
    assert w.tick == 6 + MAX_CATCH_UP_TICKS
    static_clocks = Clocks()
    static = world(clocks=static_clocks)
    static_clocks.sleep(1_000_000)
    static.sync()
    assert static.tick == 0


# -- the offset's settling ------------------------------------------------------------------------------


@given(offset=st.integers(-10**12, 10**12), step=st.integers(1, 200_000))
def test_an_offset_settles_by_bounded_steps(offset: int, step: int) -> None:
    """An offset shrinks toward 0 without changing sign, by at most `step` (and a cent of rounding) a
    tick, and is 0 from `settling_ticks` on."""
    end = settling_ticks(offset, step)
    checked = sorted({0, 1, 2, end - 2, end - 1, end, end + 1, end // 2, end // 2 + 1} - {-1, -2})
    assert settled(offset, 0, step) == offset
    for elapsed in checked:
        now, after = settled(offset, elapsed, step), settled(offset, elapsed + 1, step)
        assert abs(after) <= abs(now)
        assert abs(now - after) <= step + 1
        assert now * offset >= 0
    assert settled(offset, end, step) == 0
    assert settled(offset, end + 100, step) == 0
