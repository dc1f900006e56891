"""The sandbox's simulated accounts, and how their balances move over time.

Deterministic: every account's starting balance and every move come from a random generator seeded
with the configured seed and the account's identity. Time advances in ticks of `tick_seconds` read
from the monotonic clock passed in; each tick moves every moving balance one bounded step toward a
target that swings slowly between a low and a high, so a demo sees changes, dips below 5000.00 and
recoveries, and now and then an overdraft. `tick_seconds == 0` keeps the world static; the control
API can still advance it by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from random import Random

MASTERCARD_QUANTUM = Decimal("0.01")
MYPOS_QUANTUM = Decimal("0.001")  # myPOS's sample shows three decimal places: 120.260
SEED_MYPOS_ACCOUNT = "50553500971"
SEED_MYPOS_MASKED_PAN = "453754******2234"
SEED_MYPOS_AVAILABLE = Decimal("120.260")
# A long pause (a suspended laptop) is not replayed tick by tick beyond this.
MAX_CATCH_UP_TICKS = 1000


@dataclass(frozen=True, slots=True)
class Movement:
    """How a balance wanders, in cents: toward a target that goes low -> high -> low each `period` ticks.

    Every step is the pull toward the target plus noise, bounded by `max_step`.
    """

    low: int
    high: int
    period: int
    noise: int
    max_step: int

    def step_cents(self, current_cents: int, tick: int, rng: Random) -> int:
        """The change, in cents, of a balance at `current_cents` on `tick`."""
        position = tick % self.period
        # A triangle wave in integers: exact, and every target is hit in each period.
        target = self.low + (self.high - self.low) * (self.period - abs(2 * position - self.period)) // (
            self.period
        )
        pull = (target - current_cents) // 4
        step = pull + rng.randint(-self.noise, self.noise)
        return max(-self.max_step, min(self.max_step, step))


@dataclass(slots=True)
class MovingBalance:
    """One signed balance. `movement` None: it stays where it is (static, or set by the control API)."""

    amount: Decimal
    currency: str
    movement: Movement | None
    rng: Random
    phase: int = 0

    def step(self, tick: int) -> bool:
        """Move one tick; True when the amount changed."""
        if self.movement is None:
            return False
        current_cents = int((self.amount * 100).to_integral_value())
        delta = self.movement.step_cents(current_cents, tick + self.phase, self.rng)
        if delta == 0:
            return False
        self.amount += Decimal(delta).scaleb(-2)
        return True


@dataclass(slots=True)
class MastercardAccount:
    """A Mastercard Send account of one partner. `balance.amount` is signed: negative is IN_DEBIT."""

    non_card_token: str
    description: str
    created_date: str
    balance: MovingBalance
    updated_at: datetime


@dataclass(slots=True)
class MyposAccount:
    """A myPOS card account: its balances by balanceType, in the order they are reported.

    `verbatim` holds the seed sample body, served as it is until the control API sets a balance.
    `booked_lags` makes "booked" follow "available" one tick behind, as settled transactions do.
    """

    number: str
    masked_pan: str
    balances: dict[str, MovingBalance]
    verbatim: bytes | None = None
    booked_lags: bool = False


@dataclass(frozen=True, slots=True)
class _Profile:
    description: str
    currency: str
    start: int  # cents
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
        self.tick = 0
        self.frozen = False
        self._partners: dict[str, dict[str, MastercardAccount]] = {}
        self._mypos: dict[str, MyposAccount] = {}
        self._mypos[SEED_MYPOS_ACCOUNT] = MyposAccount(
            number=SEED_MYPOS_ACCOUNT,
            masked_pan=SEED_MYPOS_MASKED_PAN,
            balances={"available": MovingBalance(SEED_MYPOS_AVAILABLE, "EUR", None, self._rng("mypos-seed"))},
            verbatim=mypos_seed_body,
        )
        for index in range(mypos_accounts):
            account = self._new_mypos_account(index)
            self._mypos[account.number] = account

    # -- time ---------------------------------------------------------------------------------------

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
        """Move every moving balance `ticks` steps now, frozen or not (the control API's "advance")."""
        for _ in range(ticks):
            self.tick += 1
            now = self._wall_clock()
            for accounts in self._partners.values():
                for mc_account in accounts.values():
                    if mc_account.balance.step(self.tick):
                        mc_account.updated_at = now
            for mypos_account in self._mypos.values():
                available = mypos_account.balances.get("available")
                booked = mypos_account.balances.get("booked")
                if mypos_account.booked_lags and available is not None and booked is not None:
                    booked.amount = available.amount
                for balance in mypos_account.balances.values():
                    if balance is not booked or not mypos_account.booked_lags:
                        balance.step(self.tick)

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

        The balance then stays where it is put unless `keep_moving`.
        """
        accounts = self._partner(partner)
        account = accounts.get(non_card_token)
        if account is None:
            account = MastercardAccount(
                non_card_token=non_card_token,
                description=description or "Sandbox account",
                created_date=self._wall_clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
                balance=MovingBalance(amount, currency, None, self._rng(f"mc:{partner}:{non_card_token}")),
                updated_at=self._wall_clock(),
            )
            accounts[non_card_token] = account
        if description is not None:
            account.description = description
        account.balance.amount = amount
        account.balance.currency = currency
        if not keep_moving:
            account.balance.movement = None
        account.updated_at = self._wall_clock()
        return account

    def _partner(self, partner: str) -> dict[str, MastercardAccount]:
        accounts = self._partners.get(partner)
        if accounts is None:
            accounts = {}
            for index in range(self._accounts_per_partner):
                account = self._new_mastercard_account(partner, index)
                accounts[account.non_card_token] = account
            self._partners[partner] = accounts
        return accounts

    def _new_mastercard_account(self, partner: str, index: int) -> MastercardAccount:
        token = f"non_card_token:sbx-{partner}-{index + 1:04d}"
        profile = _MASTERCARD_PROFILES[index % len(_MASTERCARD_PROFILES)]
        rng = self._rng(f"mc:{partner}:{token}")
        description = profile.description
        if index >= len(_MASTERCARD_PROFILES):
            description = f"{description} {index // len(_MASTERCARD_PROFILES) + 1}"
        start = profile.start + rng.randint(-5_000, 5_000)
        created = f"20{18 + index % 6:02d}-{1 + index % 12:02d}-{1 + rng.randrange(28):02d}T09:30:00Z"
        return MastercardAccount(
            non_card_token=token,
            description=description,
            created_date=created,
            balance=MovingBalance(
                Decimal(start).scaleb(-2), profile.currency, profile.movement, rng, rng.randrange(1000)
            ),
            updated_at=self._wall_clock(),
        )

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
        is put unless `keep_moving`.
        """
        account = self._mypos.get(number)
        if account is None:
            account = MyposAccount(number, self._masked_pan(self._rng(f"mypos:{number}")), {})
            self._mypos[number] = account
        account.verbatim = None
        balance = account.balances.get(balance_type)
        if balance is None:
            balance = MovingBalance(amount, currency, None, self._rng(f"mypos:{number}:{balance_type}"))
            account.balances[balance_type] = balance
        balance.amount = amount
        balance.currency = currency
        if not keep_moving:
            balance.movement = None
            if balance_type in ("available", "booked"):
                account.booked_lags = False
        return account

    def _new_mypos_account(self, index: int) -> MyposAccount:
        number = f"505535{index + 1:05d}"
        if number == SEED_MYPOS_ACCOUNT:
            number = f"505536{index + 1:05d}"
        profile = _MYPOS_PROFILES[index % len(_MYPOS_PROFILES)]
        rng = self._rng(f"mypos:{number}")
        start = Decimal(profile.start + rng.randint(-5_000, 5_000)).scaleb(-2).quantize(MYPOS_QUANTUM)
        available = MovingBalance(start, profile.currency, profile.movement, rng, rng.randrange(1000))
        booked = MovingBalance(start, profile.currency, None, rng)
        return MyposAccount(
            number=number,
            masked_pan=self._masked_pan(rng),
            balances={"available": available, "booked": booked},
            booked_lags=True,
        )

    # -- helpers ------------------------------------------------------------------------------------

    def _rng(self, identity: str) -> Random:
        # String seeds are hashed with SHA-512 by random.Random: the same on every run and platform.
        return Random(f"{self._seed}:{identity}")

    @staticmethod
    def _masked_pan(rng: Random) -> str:
        return f"453754******{rng.randrange(10_000):04d}"
