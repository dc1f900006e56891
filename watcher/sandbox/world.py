"""The sandbox's simulated accounts, and how their balances move over time.

Deterministic: each account's place in its profile's wave, its noise seed and its other particulars are
drawn once, when it is created, from SHA-512 of the configured seed and the account's identity; its
amount at any tick is then a function of those and the tick (watcher/sandbox/movement.py), computed when
it is read. Time advances in ticks of `tick_seconds` read from the monotonic clock passed in; advancing
only counts them, so a tick costs the same whatever the number of accounts. A moving balance follows a
target that swings slowly between a low and a high, with noise and a bounded step, so a demo sees
changes, dips below 5000.00 and recoveries, and now and then an overdraft. An account starts near its
profile's start amount at tick 0 and settles onto its own path (anywhere in the wave) over its first
ticks, as a balance put there with `keep_moving` would: a static world (`tick_seconds == 0`, the listing
benchmark's) shows the start amounts, all in healthy ranges. The control API can still advance a static
world by hand.

A balance put somewhere by the control API stays there. With `keep_moving` it moves on from there: the
distance from where it would have been shrinks by a quarter each tick (by no more than its step allows)
until it is back on its path, where it would have been had it not been put.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from watcher.sandbox.movement import Balance, Movement, Path, Ticks

MASTERCARD_QUANTUM = Decimal("0.01")
_MYPOS_QUANTUM = Decimal("0.001")  # myPOS's sample shows three decimal places: 120.260
SEED_MYPOS_ACCOUNT = "50553500971"
SEED_MYPOS_MASKED_PAN = "453754******2234"
SEED_MYPOS_AVAILABLE = Decimal("120.260")
# A long pause (a suspended laptop) is not replayed beyond this many ticks.
MAX_CATCH_UP_TICKS = 1000


@dataclass(slots=True)
class MastercardAccount:
    """A Mastercard Send account of one partner. `balance.amount` is signed: negative is IN_DEBIT."""

    non_card_token: str
    description: str
    created_date: str
    balance: Balance

    @property
    def updated_at(self) -> datetime:
        """When the balance last changed (the start of that tick), or was created or set."""
        return self.balance.updated_at


@dataclass(slots=True)
class MyposAccount:
    """A myPOS card account: its balances by balanceType, in the order they are reported.

    `verbatim` holds the seed sample body, served as it is until the control API sets a balance. A world
    account's "booked" follows its "available" one tick behind, as settled transactions do.
    """

    number: str
    masked_pan: str
    balances: dict[str, Balance]
    verbatim: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Profile:
    description: str
    currency: str
    start: int  # cents: where its accounts start, then settle onto the path
    movement: Movement


# Amounts in cents; Movement(low, high, period in ticks, noise, max step). Chosen so that a default
# partner shows one healthy account, one that keeps crossing 5000.00, one that dips into debit, a EUR
# account and a stable reserve.
_MASTERCARD_PROFILES = (
    _Profile("Main prefunding", "GBP", 2_400_000, Movement(1_800_000, 3_000_000, 90, 30_000, 150_000)),
    _Profile("Payouts account", "GBP", 620_000, Movement(300_000, 900_000, 40, 25_000, 90_000)),
    _Profile("Marketplace float", "GBP", 150_000, Movement(-150_000, 400_000, 60, 20_000, 80_000)),
    _Profile("Euro settlement", "EUR", 1_500_000, Movement(1_100_000, 1_900_000, 120, 20_000, 100_000)),
    _Profile("Reserve account", "GBP", 5_200_000, Movement(5_000_000, 5_400_000, 200, 10_000, 50_000)),
)
_MYPOS_PROFILES = (
    _Profile("", "EUR", 820_000, Movement(300_000, 1_200_000, 50, 30_000, 120_000)),
    _Profile("", "EUR", 95_000, Movement(20_000, 250_000, 70, 8_000, 40_000)),
    _Profile("", "GBP", 2_000_000, Movement(1_500_000, 2_500_000, 100, 20_000, 100_000)),
)


class World:
    """Every simulated account, created on first use, moved by the clock's ticks."""

    def __init__(
        self,
        *,
        seed: int,
        accounts_per_partner: int,
        mypos_accounts: int,
        tick_seconds: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
        mypos_seed_body: bytes,
    ) -> None:
        self._seed = seed
        self._accounts_per_partner = accounts_per_partner
        self._tick_seconds = tick_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        self._clock_ticks_seen = 0
        self._ticks = Ticks(wall_clock())
        self.frozen = False
        self._partners: dict[str, dict[str, MastercardAccount]] = {}
        self._mypos: dict[str, MyposAccount] = {}
        seed_available = Balance(self._ticks, SEED_MYPOS_AVAILABLE, "EUR", self._wall_clock())
        self._mypos[SEED_MYPOS_ACCOUNT] = MyposAccount(
            number=SEED_MYPOS_ACCOUNT,
            masked_pan=SEED_MYPOS_MASKED_PAN,
            balances={"available": seed_available},
            verbatim=mypos_seed_body,
        )
        for index in range(mypos_accounts):
            account = self._new_mypos_account(index)
            self._mypos[account.number] = account

    # -- time ---------------------------------------------------------------------------------------

    @property
    def tick(self) -> int:
        """How many ticks have moved the world so far."""
        return self._ticks.count

    def sync(self) -> None:
        """Apply the ticks the clock says are due; frozen, they pass without moving anything."""
        if self._tick_seconds <= 0:
            return
        clock_ticks = int((self._clock() - self._started) // self._tick_seconds)
        due = clock_ticks - self._clock_ticks_seen
        self._clock_ticks_seen = clock_ticks
        if due > 0 and not self.frozen:
            self.advance(min(due, MAX_CATCH_UP_TICKS))

    def advance(self, ticks: int) -> None:
        """Move every moving balance `ticks` steps now, frozen or not (the control API's "advance").

        Only the count moves: balances are computed from it when read, so this costs the same for any
        number of accounts or ticks.
        """
        self._ticks.advance(ticks, self._wall_clock())

    # -- Mastercard ---------------------------------------------------------------------------------

    def mastercard_accounts(self, partner: str) -> list[MastercardAccount]:
        """Every account of a partner, its default accounts created on first use."""
        return list(self._partner(partner).values())

    def mastercard_partners(self) -> list[str]:
        """The partners asked for so far, whose accounts exist."""
        return list(self._partners)

    def mastercard_account(self, partner: str, non_card_token: str) -> MastercardAccount | None:
        """One account of a partner, or None when the partner has no such token."""
        return self._partner(partner).get(non_card_token)

    def set_mastercard_balance(
        self,
        partner: str,
        non_card_token: str,
        amount: Decimal,
        currency: str,
        *,
        description: str | None = None,
        keep_moving: bool = False,
    ) -> MastercardAccount:
        """Put a signed balance on an account (negative: IN_DEBIT), creating the account if needed.

        The balance then stays where it is put unless `keep_moving` (an account created here has nothing
        to move with, and stays).
        """
        accounts = self._partner(partner)
        account = accounts.get(non_card_token)
        now = self._wall_clock()
        if account is None:
            account = MastercardAccount(
                non_card_token=non_card_token,
                description=description or "Sandbox account",
                created_date=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                balance=Balance(self._ticks, amount, currency, now),
            )
            accounts[non_card_token] = account
        if description is not None:
            account.description = description
        account.balance.put(amount, currency, now, keep_moving=keep_moving)
        return account

    def _partner(self, partner: str) -> dict[str, MastercardAccount]:
        accounts = self._partners.get(partner)
        if accounts is None:
            accounts = {}
            now = self._wall_clock()
            for index in range(self._accounts_per_partner):
                account = self._new_mastercard_account(partner, index, now)
                accounts[account.non_card_token] = account
            self._partners[partner] = accounts
        return accounts

    def _new_mastercard_account(self, partner: str, index: int, now: datetime) -> MastercardAccount:
        token = f"non_card_token:sbx-{partner}-{index + 1:04d}"
        profile = _MASTERCARD_PROFILES[index % len(_MASTERCARD_PROFILES)]
        draws = _Draws(self._seed, f"mc:{partner}:{token}")
        description = profile.description
        if index >= len(_MASTERCARD_PROFILES):
            description = f"{description} {index // len(_MASTERCARD_PROFILES) + 1}"
        created = f"20{18 + index % 6:02d}-{1 + index % 12:02d}-{1 + draws.below(28):02d}T09:30:00Z"
        balance = self._starting(profile, draws, now, MASTERCARD_QUANTUM)
        return MastercardAccount(token, description, created, balance)

    def _starting(self, profile: _Profile, draws: _Draws, now: datetime, quantum: Decimal) -> Balance:
        """A new account's balance: within 50.00 of its profile's start amount at tick 0 (whenever it is
        made), settling from there onto its own path."""
        start = Decimal(profile.start + draws.below(10_001) - 5_000).scaleb(-2).quantize(quantum)
        return Balance(self._ticks, start, profile.currency, now, _path_of(profile.movement, draws), since=0)

    # -- myPOS --------------------------------------------------------------------------------------

    def mypos_account(self, number: str) -> MyposAccount | None:
        """A myPOS card account, or None when the world has no such account number."""
        return self._mypos.get(number)

    def mypos_accounts(self) -> list[MyposAccount]:
        """Every myPOS card account of the world."""
        return list(self._mypos.values())

    def set_mypos_balance(
        self, number: str, balance_type: str, amount: Decimal, currency: str, *, keep_moving: bool = False
    ) -> MyposAccount:
        """Put one balance type of a card account at `amount`, creating account or type if needed.

        The account then answers from its balances (no longer the seed file); the balance stays where it
        is put unless `keep_moving` (a type created here has nothing to move with, and stays). Put without
        `keep_moving`, available or booked ends booked's following: booked stays where it is.
        """
        now = self._wall_clock()
        account = self._mypos.get(number)
        if account is None:
            account = MyposAccount(number, _masked_pan(_Draws(self._seed, f"mypos:{number}")), {})
            self._mypos[number] = account
        account.verbatim = None
        balance = account.balances.get(balance_type)
        if balance is None:
            account.balances[balance_type] = Balance(self._ticks, amount, currency, now)
            return account
        booked = account.balances.get("booked")
        if booked is not None and booked is not balance and booked.follows(balance):
            if keep_moving:
                booked.hold(now)  # it shows this tick what it showed, and the new amount from the next
            else:
                booked.put(booked.amount, booked.currency, now, keep_moving=False)
        balance.put(amount, currency, now, keep_moving=keep_moving)
        return account

    def _new_mypos_account(self, index: int) -> MyposAccount:
        number = f"505535{index + 1:05d}"
        if number == SEED_MYPOS_ACCOUNT:
            number = f"505536{index + 1:05d}"
        profile = _MYPOS_PROFILES[index % len(_MYPOS_PROFILES)]
        draws = _Draws(self._seed, f"mypos:{number}")
        masked_pan = _masked_pan(draws)
        now = self._wall_clock()
        available = self._starting(profile, draws, now, _MYPOS_QUANTUM)
        booked = Balance(self._ticks, available.amount_at(0), profile.currency, now, since=0)
        booked.follow(available)
        return MyposAccount(number, masked_pan, {"available": available, "booked": booked})


_DRAW_SPAN = 1 << 64  # a draw is 64 bits


class _Draws:
    """Whole numbers drawn from the seed and an account's identity: SHA-512 of "seed:identity", 64 bits a
    draw (the same on every run and platform; eight draws at most)."""

    __slots__ = ("_bits",)

    def __init__(self, seed: int, identity: str) -> None:
        self._bits = int.from_bytes(hashlib.sha512(f"{seed}:{identity}".encode()).digest(), "big")

    def below(self, bound: int) -> int:
        """One of 0 .. bound - 1 (bound at most 2^64; the bias of the modulo is below 2^-40 for these)."""
        value = self._bits & (_DRAW_SPAN - 1)
        self._bits >>= 64
        return value % bound


def _masked_pan(draws: _Draws) -> str:
    return f"453754******{draws.below(10_000):04d}"


def _path_of(movement: Movement, draws: _Draws) -> Path:
    """An account's own path: anywhere in its wave (so that accounts of one profile do not cross a
    threshold all at once), with its own noise."""
    return Path(movement, draws.below(movement.period), draws.below(_DRAW_SPAN))
