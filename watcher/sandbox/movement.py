"""How a sandbox balance moves: a closed-form function of the tick, computed when it is read.

A moving balance's amount at tick t, in cents, is

    target(t + phase) + noise(t) + what is left at t of the offset it had when anchored

`target` is a triangle wave, low -> high -> low every `period` ticks; `noise(t)` is drawn afresh each tick
from [-noise, +noise] by hashing (noise seed, t). A balance created or put off that path (by the control
API, and kept moving) settles onto it: its offset from the path shrinks by a quarter each tick, by at most
what `max_step` leaves after the wave and the noise, so that every step stays within `max_step`. Nothing
is stored per tick: advancing the world only counts ticks, and a read costs the same whatever the number
of accounts or of ticks gone by.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal

# How far back a balance's last change is looked for; beyond, it is taken to be this many ticks ago (with
# noise of a few cents or more, 64 ticks without a change does not happen in practice).
QUIET_TICKS_SCANNED = 64

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Movement:
    """How a balance wanders, in cents: around a target that goes low -> high -> low each `period` ticks,
    with noise within +-`noise`; no step is larger than `max_step`."""

    low: int
    high: int
    period: int
    noise: int
    max_step: int

    # The most an offset may shrink in one tick: what `max_step` leaves after the wave's steepest step, the
    # noise's widest swing and a cent of rounding.
    settle_step: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steepest_wave = 2 * (self.high - self.low) // self.period + 1
        settle_step = self.max_step - steepest_wave - 2 * self.noise - 1
        if settle_step < 1:
            raise ValueError(f"max_step {self.max_step} leaves no room to settle an offset: {self}")
        object.__setattr__(self, "settle_step", settle_step)  # frozen: set once, here

    def target(self, position: int) -> int:
        """The triangle wave at `position`, in integers: exact, and every target is hit in each period."""
        rise = self.period - abs(2 * (position % self.period) - self.period)  # 0 .. period .. 0
        return self.low + (self.high - self.low) * rise // self.period


def settled(offset: int, elapsed: int, step: int) -> int:
    """What is left of `offset` after `elapsed` ticks when each tick takes a quarter of it (as a pull of 1/4
    toward the target would), but never more than `step`: first `step` a tick while a quarter would be more,
    then geometric."""
    size = abs(offset)
    linear_ticks = _linear_ticks(size, step)
    if elapsed <= linear_ticks:
        left = size - elapsed * step
    else:
        left = size - linear_ticks * step
        quarters = elapsed - linear_ticks
        left = 0 if quarters >= _quarters_to_nothing(left) else left * 3**quarters // 4**quarters
    return left if offset >= 0 else -left


def settling_ticks(offset: int, step: int) -> int:
    """After how many ticks `settled` is 0 for good (at most)."""
    size = abs(offset)
    linear_ticks = _linear_ticks(size, step)
    return linear_ticks + _quarters_to_nothing(size - linear_ticks * step)


def _linear_ticks(size: int, step: int) -> int:
    # The ticks that take a whole `step`: while a quarter of what is left would be more than that.
    return max(0, -(-(size - 4 * step) // step))


def _quarters_to_nothing(size: int) -> int:
    # (3/4)^n < 2^-(n/2.41): taking a quarter 3 times per bit leaves less than 1, without computing 3^n.
    return 3 * size.bit_length()


class Ticks:
    """The world's tick count, and when (wall clock) the recent ticks started. Advancing is O(1)."""

    __slots__ = ("_runs", "count")

    def __init__(self, now: datetime) -> None:
        self.count = 0
        # (first tick, wall clock) of each advance: the last QUIET_TICKS_SCANNED + 1 cover that many ticks.
        self._runs: deque[tuple[int, datetime]] = deque([(0, now)], maxlen=QUIET_TICKS_SCANNED + 1)

    def advance(self, ticks: int, now: datetime) -> None:
        """`ticks` more ticks, all started at `now`."""
        if ticks > 0:
            self._runs.append((self.count + 1, now))
            self.count += ticks

    def started_at(self, tick: int) -> datetime:
        """The wall-clock time `tick` started (the oldest remembered for a tick older than those)."""
        for first, moment in reversed(self._runs):
            if first <= tick:
                return moment
        return self._runs[0][1]


@dataclass(slots=True)
class Path:
    """One balance's own way along a movement: where in the wave it starts and its noise."""

    movement: Movement
    phase: int
    noise_seed: int

    def cents(self, tick: int) -> int:
        """Where a settled balance is at `tick`: the target plus this tick's noise."""
        movement = self.movement
        # SplitMix64 of (noise seed, tick): 64 well-spread bits, the same on every run and platform.
        bits = (self.noise_seed + tick * 0x9E3779B97F4A7C15) & _MASK64
        bits = ((bits ^ (bits >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        bits = ((bits ^ (bits >> 27)) * 0x94D049BB133111EB) & _MASK64
        noise = (bits ^ (bits >> 31)) % (2 * movement.noise + 1) - movement.noise
        return movement.target(tick + self.phase) + noise


class Balance:
    """One signed balance, read at the world's current tick.

    Anchored at a tick at an exact amount (where its path was, or what the control API put there). From
    there it either stays, moves along a `Path` (the anchor's offset from the path settling away), or
    follows another balance one tick behind (myPOS's booked behind available). Digits below the cent that
    the anchor had are kept as they are while it moves.
    """

    __slots__ = ("_anchored_at", "_fixed", "_leader", "_memo_cents", "_memo_tick", "_offset", "_path",
                 "_residue", "_settled_by", "_since", "_ticks", "currency")

    def __init__(self, ticks: Ticks, amount: Decimal, currency: str, now: datetime, path: Path | None = None,
                 *, since: int | None = None):
        """Anchored at `amount` at tick `since` (default: now). An account made by the world is anchored
        at tick 0, whenever it is first asked for, so its amounts depend on the tick alone."""
        self._ticks = ticks
        self.currency = currency
        self._path = path
        self._leader: Balance | None = None
        self._anchor(amount, now, since)

    @property
    def amount(self) -> Decimal:
        """The amount now."""
        return self.amount_at(self._ticks.count)

    @property
    def updated_at(self) -> datetime:
        """When the amount last changed: the wall-clock start of that tick, or when it was anchored."""
        now = self._ticks.count
        if now > self._since and (self._path is not None or self._leader is not None):
            if self._cents_at(now) != self._cents_at(now - 1):  # nearly always, with noise
                return self._ticks.started_at(now)
            oldest = max(self._since + 1, now - QUIET_TICKS_SCANNED + 1)
            for tick in range(now - 1, oldest - 1, -1):
                if self._cents_at(tick) != self._cents_at(tick - 1):
                    return self._ticks.started_at(tick)
            if oldest > self._since + 1:
                return self._ticks.started_at(oldest)
        return self._anchored_at

    def amount_at(self, tick: int) -> Decimal:
        """The amount at `tick` (the anchor's for a tick before the anchor)."""
        if tick > self._since:
            if self._path is not None:
                return Decimal(self._moved_cents(self._path, tick)).scaleb(-2) + self._residue
            if self._leader is not None:
                return self._leader.amount_at(tick - 1)
        return self._fixed  # the exact digits put there

    def put(self, amount: Decimal, currency: str, now: datetime, *, keep_moving: bool) -> None:
        """Anchor at `amount` now; it then stays there, or, `keep_moving`, moves on from there as before."""
        self.currency = currency
        if not keep_moving:
            self._path = None
            self._leader = None
        self._anchor(amount, now)

    def hold(self, now: datetime) -> None:
        """Anchor where it is now, moving on as before (a balance that follows one being re-anchored)."""
        self._anchor(self.amount, now)

    def follows(self, leader: Balance) -> bool:
        """Whether this balance is `leader`'s, one tick behind."""
        return self._leader is leader

    def follow(self, leader: Balance) -> None:
        """From the next tick on, be what `leader` was the tick before."""
        self._path = None
        self._leader = leader

    def _anchor(self, amount: Decimal, now: datetime, since: int | None = None) -> None:
        self._since = self._ticks.count if since is None else since
        self._fixed = amount
        self._anchored_at = now
        self._memo_tick, self._memo_cents = -1, 0
        path = self._path
        if path is None:  # it stays, or follows another: only `_fixed` is read
            self._residue, self._offset, self._settled_by = _ZERO_RESIDUES["0"], 0, self._since
            return
        cents = _floor_cents(amount)
        residue = amount - Decimal(cents).scaleb(-2)
        self._residue = _ZERO_RESIDUES.get(str(residue), residue)  # 0.000 for myPOS: three decimals
        self._offset = cents - path.cents(self._since)
        self._settled_by = self._since + settling_ticks(self._offset, path.movement.settle_step)

    def _cents_at(self, tick: int) -> int:
        if tick > self._since:
            if self._path is not None:
                return self._moved_cents(self._path, tick)
            if self._leader is not None:
                return self._leader._cents_at(tick - 1)
        return _floor_cents(self._fixed)

    def _moved_cents(self, path: Path, tick: int) -> int:
        if tick == self._memo_tick:
            return self._memo_cents
        cents = path.cents(tick)
        if tick < self._settled_by:
            cents += settled(self._offset, tick - self._since, path.movement.settle_step)
        if tick == self._ticks.count:  # read again for updated_at, or by another request in the same tick
            self._memo_tick, self._memo_cents = tick, cents
        return cents


def _floor_cents(amount: Decimal) -> int:
    # Whole cents, rounded down: digits below the cent are the anchor's residue, kept apart.
    return int(amount.scaleb(2).to_integral_value(rounding=ROUND_FLOOR))


# Shared: most balances have no digits below the cent, and a Decimal each would cost 100 bytes.
_ZERO_RESIDUES = {text: Decimal(text) for text in ("0", "0.0", "0.00", "0.000")}
