"""Field checks the parsers share: exact amounts, currency codes, provider timestamps, and the
bookkeeping that lets one bad entry of a listing be reported without losing the others. Pure, no I/O.
"""

from __future__ import annotations

import functools
import gc
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Concatenate, ParamSpec, TypeVar

from rules.types import BalanceKey, Observation
from watcher.sources.base import ParsedBalances, ParseError

# Sane bounds for money: beyond them a value is a provider bug or an attack, not a balance.
MAX_INTEGER_DIGITS = 18
MAX_FRACTION_DIGITS = 18

# An unsigned amount as a plain decimal string; read_amount turns exactly these into Decimal(text).
UNSIGNED_AMOUNT = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")
_SIGNED_AMOUNT = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?")
_CURRENCY = re.compile(r"[A-Z]{3}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# How many reasons a ParseError spells out when every entry of a listing was bad.
_REASONS_SHOWN = 5


# Bodies at least this large are parsed with the cyclic garbage collector paused (see collector_paused).
PAUSE_GC_BYTES = 1024 * 1024
_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_paused_here = False
_Body = TypeVar("_Body", bound=Sized)
_Args = ParamSpec("_Args")
_Result = TypeVar("_Result")


@contextmanager
def collector_paused(pause: bool = True) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large body is parsed (`pause=False`: do nothing).

    Reading a listing of 100,000 accounts allocates about a million tracked objects (dicts, elements,
    observations) in a second; each 700 allocations start a collection, and the full ones walk the
    whole heap again and again: a third of the parse time, for nothing, as a parse makes no reference
    cycles (what it drops is freed by reference counting as usual). What survives is scanned by the next
    collections once, as it would have been anyway.

    Process-wide, so counted: with parses in several threads at once, the collector is enabled again
    when the last one ends, and only if it was enabled when the first one began (a collector someone
    else disabled stays disabled).
    """
    global _gc_pausers, _gc_paused_here
    if not pause:
        yield
        return
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_paused_here = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_paused_here:
                _gc_paused_here = False
                gc.enable()


def pausing_collector(
    read: Callable[Concatenate[_Body, _Args], _Result],
) -> Callable[Concatenate[_Body, _Args], _Result]:
    """`read(body, ...)` run with the collector paused when the body is large (PAUSE_GC_BYTES or more; see
    collector_paused): a parser's entry point, whatever its format."""

    @functools.wraps(read)
    def paused(body: _Body, /, *args: _Args.args, **kwargs: _Args.kwargs) -> _Result:
        with collector_paused(len(body) >= PAUSE_GC_BYTES):
            return read(body, *args, **kwargs)

    return paused


class EntryError(Exception):
    """One entry of a body is unusable; `path` names the field at fault, e.g. `balances[1].amount`."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def show(value: object, limit: int = 60) -> str:
    """A short, log-safe rendering of a value found in a body, for error messages."""
    if isinstance(value, str):
        text = _CONTROL.sub("?", value)
        return repr(text if len(text) <= limit else text[:limit] + "...")
    if isinstance(value, Decimal):
        text = str(value)
        return text if len(text) <= limit else text[:limit] + "..."
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(body: bytes) -> object:
    """Decode a JSON body with every number as an exact Decimal; NaN and Infinity are refused."""
    try:
        return json.loads(body, parse_float=Decimal, parse_int=Decimal, parse_constant=refuse_constant)
    except RecursionError:
        raise ParseError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ParseError(f"not valid JSON: {exc}") from None


def read_amount(value: object, path: str, *, signed: bool) -> Decimal:
    """An amount given as a decimal string or an exact JSON number, checked to be sane money.

    `signed=False` is for Mastercard, whose amounts are magnitudes with the sign in `state`.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise EntryError(path, "is empty")
        if not signed and text.startswith("-"):
            raise EntryError(path, f"{show(value)} is negative; the sign is carried by state")
        if not (_SIGNED_AMOUNT if signed else UNSIGNED_AMOUNT).fullmatch(text):
            raise EntryError(
                path,
                f"{show(value)} is not a plain decimal amount "
                f"(at most {MAX_INTEGER_DIGITS} integer and {MAX_FRACTION_DIGITS} fraction digits)",
            )
        return Decimal(text)
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise EntryError(path, f"expected an amount, found {show(value)}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise EntryError(path, f"{show(amount)} is not a finite number")
    if not signed and amount.is_signed():
        raise EntryError(path, f"{show(amount)} is negative; the sign is carried by state")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked above
    if amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise EntryError(path, f"{show(amount)} has more than {MAX_INTEGER_DIGITS} integer digits")
    if -exponent > MAX_FRACTION_DIGITS:
        raise EntryError(path, f"{show(amount)} has more than {MAX_FRACTION_DIGITS} fraction digits")
    # 1e3 arrives as Decimal("1E+3"); downstream wants the plain "1000" (exact: at most 18 digits).
    return amount.quantize(Decimal(1)) if exponent > 0 else amount


def read_currency(value: object, path: str) -> str:
    """An ISO 4217 alphabetic code: three uppercase letters."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise EntryError(path, f"expected a currency code of three uppercase letters, found {show(value)}")
    # One string object per code across every call: 100,000 accounts polled one by one would otherwise
    # keep a copy each (52 bytes) in their known balances.
    return sys.intern(value)


def parse_timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when it is not a valid one.

    Callers keep the raw text either way: a provider sample has a time with 80 seconds.
    """
    if not _RFC3339.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def finish(results: Sequence[tuple[str, Observation | EntryError]]) -> ParsedBalances:
    """Keep the good entries, the first of each key; report the rest.

    A body that had entries but not one usable is a ParseError naming why, so the caller sees a failed
    call instead of an account list that silently went empty.
    """
    kept: list[Observation] = []
    first_at: dict[object, str] = {}
    rejected: list[str] = []
    for path, item in results:
        if isinstance(item, EntryError):
            rejected.append(str(item))
        elif item.key in first_at:
            rejected.append(duplicate(path, item.key, first_at[item.key]))
        else:
            first_at[item.key] = path
            kept.append(item)
    return finished(kept, rejected)


def duplicate(path: str, key: BalanceKey, first_path: str) -> str:
    """Why the entry at `path`, of `key`, is left out: its key was first seen at `first_path` (as `finish`
    says it)."""
    return (
        f"{path}: account {show(key.account)}"
        + (f" balance type {show(key.balance_type)}" if key.balance_type else "")
        + f" appears again (first at {first_path}); the first is kept"
    )


def finished(kept: Sequence[Observation], rejected: Sequence[str], unchanged: int = 0) -> ParsedBalances:
    """The end of `finish` (for a parser that keeps and rejects entries as it reads them): the balances
    kept (and the count of those left out unchanged: see ParsedBalances), or the ParseError of a body
    that had entries but not one usable."""
    if rejected and not kept and not unchanged:
        shown = "; ".join(rejected[:_REASONS_SHOWN])
        more = len(rejected) - _REASONS_SHOWN
        raise ParseError(f"no usable balance: {shown}" + (f"; and {more} more" if more > 0 else ""))
    return ParsedBalances(observations=tuple(kept), rejected=tuple(rejected), unchanged=unchanged)
