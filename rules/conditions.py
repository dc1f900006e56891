"""When a rule holds: every balance kind's condition, judged on one observation and what came before it,
and the short balance history that `drop` rules look back on.

A condition is a pair of predicates on a `Reading`: `breached` (an alert that is not firing starts to
hold) and `cleared` (a firing alert stops holding). They differ only for `below` / `above`, whose
clear point gives hysteresis; for the other kinds `cleared` is `not breached`. `stale` rules are not
judged on balances at all (see rules.staleness).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from rules.model import CONDITIONS, Rule
from rules.types import Balance

# (until, amount): `amount` was the signed balance until `until`, when the next change was observed.
History = tuple[tuple[datetime, Decimal], ...]


class Reading(NamedTuple):
    """One observation as conditions judge it.

    `previous` is the balance known before it (None on first sight); `history` the key's history after
    it (see `remember`), so that the amount just replaced counts as still in force until `at`.
    A NamedTuple rather than a frozen dataclass: one is built per observation, and this is 3x cheaper.
    """

    balance: Balance
    amount: Decimal
    previous: Balance | None
    history: History
    at: datetime

    def peak_within(self, window: timedelta) -> Decimal:
        """The highest signed amount in force at any moment of the last `window`, the current included."""
        return peak_since(self.history, self.at - window, self.amount)

    def movement(self) -> Decimal | None:
        """How much the amount moved since the previous observation; None when there is nothing to
        compare with (first sight, or another currency)."""
        previous = self.previous
        if previous is None or previous.currency != self.balance.currency:
            return None
        return self.amount - previous.signed_amount


Predicate = Callable[[Reading], bool]


@dataclass(frozen=True, slots=True)
class Judge:
    """A rule's condition, ready to call on readings."""

    breached: Predicate
    cleared: Predicate


def _on_amount(rule: Rule) -> Judge:
    condition = CONDITIONS[rule.kind](rule)
    breached, cleared = condition.breached, condition.cleared
    return Judge(lambda r: breached(r.amount), lambda r: cleared(r.amount))


def _state(rule: Rule) -> Judge:
    wanted = rule.state
    if wanted is None:
        raise ValueError(f"state rule {rule.name!r} needs a state")
    return Judge(lambda r: r.balance.state == wanted, lambda r: r.balance.state != wanted)


def _change(rule: Rule) -> Judge:
    minimum = rule.min_change
    if minimum is None or minimum <= 0:
        raise ValueError(f"change rule {rule.name!r} needs a positive min_change")

    def breached(reading: Reading) -> bool:
        moved = reading.movement()
        return moved is not None and abs(moved) >= minimum

    return Judge(breached, lambda r: not breached(r))


def _drop(rule: Rule) -> Judge:
    window, amount, percent = rule.window, rule.min_drop, rule.min_drop_percent
    if window is None or (amount is None and percent is None):
        raise ValueError(f"drop rule {rule.name!r} needs a window and min_drop or min_drop_percent")

    def breached(reading: Reading) -> bool:
        if not reading.history:
            return False  # nothing before the current amount: no fall
        peak = peak_since(reading.history, reading.at - window, reading.amount)
        fall = peak - reading.amount
        if fall <= 0:
            return False
        if amount is not None and fall < amount:
            return False
        # A percentage of a peak at or under zero means nothing: such a fall counts by amount only.
        return percent is None or (peak > 0 and fall * 100 >= percent * peak)

    return Judge(breached, lambda r: not breached(r))


_JUDGES: dict[str, Callable[[Rule], Judge]] = {
    "below": _on_amount,
    "above": _on_amount,
    "state": _state,
    "change": _change,
    "drop": _drop,
}


def judge_of(rule: Rule) -> Judge:
    """The condition of a balance rule; ValueError for a `stale` rule or missing parameters."""
    build = _JUDGES.get(rule.kind)
    if build is None:
        raise ValueError(f"a {rule.kind!r} rule is not judged on balances")
    return build(rule)


def peak_since(history: History, since: datetime, current: Decimal) -> Decimal:
    """The highest amount in force after `since`: the current one, or one that was replaced after it."""
    # The history is strictly decreasing in amount and increasing in time, so the first entry still in
    # force after `since` is the highest of them.
    for until, amount in history:
        if until > since:
            return max(amount, current)
    return current


def remember(history: History, replaced: Decimal, until: datetime, keep: timedelta | None) -> History:
    """The history after `replaced` stopped being the balance at `until`, for windows up to `keep`.

    Drops what no window of `keep` can reach any more, and every amount not higher than a later one:
    a drop is measured from the peak, and a later, higher amount is always a better peak for every
    window that could still see the earlier one.
    """
    if keep is None:
        return ()
    entries = list(history)
    while entries and entries[-1][1] <= replaced:
        entries.pop()
    entries.append((until, replaced))
    cutoff = until - keep
    first = 0
    while entries[first][0] <= cutoff:
        first += 1
    return tuple(entries[first:])
