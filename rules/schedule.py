"""Mute windows: when a rule's alerts are evaluated but not published (a planned nightly top-up, say).

Two shapes, each with a time zone (an IANA name; "UTC" when left out):
- a daily time range: `{ days = ["mon", "tue"], from = "01:00", to = "02:30", timezone = "Europe/London" }`.
  `days` defaults to every day; a range whose `to` is not after its `from` runs past midnight into the
  next day (it belongs to the day it starts on); `to = "24:00"` is the end of the day.
- a cron expression: `{ cron = "0-29 1 * * mon-fri", timezone = "Europe/London" }` mutes every minute the
  expression matches. Five fields: minute, hour, day of month, month, day of week (0 or 7 is Sunday;
  names such as mon or jan are accepted), each `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or
  a comma list. As in cron, when both day fields are restricted a day matching either one matches.

Pure: the time to judge is always an argument, never the clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # Python's weekday() order
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's order: Sunday is 0
_TIME_OF_DAY = re.compile(r"(\d{2}):(\d{2})")
_DAILY_KEYS = ("days", "from", "to", "timezone")
_CRON_KEYS = ("cron", "timezone")


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError(f'must be a time zone name such as "Europe/London", not {name!r}')
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown time zone {name!r}: use an IANA name such as "Europe/London"') from None


def _local(moment: datetime, zone: tzinfo) -> datetime:
    if moment.tzinfo is None:
        # A naive time would be read in the host's zone: that is a hidden input, so it is refused.
        raise ValueError("mute windows judge aware datetimes only")
    return moment.astimezone(zone)


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """Muted from `start` to `end` (minutes of the local day) on `days` (weekday numbers, Monday 0)."""

    days: frozenset[int]
    start: int
    end: int
    timezone: str = "UTC"
    # Loaded once by the loader (the time zone database is files); UTC by default, read nothing.
    zone: tzinfo = field(default=UTC, compare=False, repr=False)

    def contains(self, moment: datetime) -> bool:
        """True when `moment` falls inside the window."""
        local = _local(moment, self.zone)
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Past midnight: the evening part belongs to today, the morning part to yesterday's window.
        return (today in self.days and minute >= self.start) or (
            (today - 1) % 7 in self.days and minute < self.end
        )


@dataclass(frozen=True, slots=True)
class CronWindow:
    """Muted during every local minute that the cron `expression` matches."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # cron numbering: Sunday 0
    day_of_month_restricted: bool
    day_of_week_restricted: bool
    timezone: str = "UTC"
    # Loaded once by the loader (the time zone database is files); UTC by default, read nothing.
    zone: tzinfo = field(default=UTC, compare=False, repr=False)

    def contains(self, moment: datetime) -> bool:
        """True when `moment`'s local minute matches the expression."""
        local = _local(moment, self.zone)
        if not (local.minute in self.minutes and local.hour in self.hours and local.month in self.months):
            return False
        by_date = local.day in self.days_of_month
        by_weekday = (local.weekday() + 1) % 7 in self.days_of_week
        if self.day_of_month_restricted and self.day_of_week_restricted:
            return by_date or by_weekday
        return by_date and by_weekday


MuteWindow = DailyWindow | CronWindow


def is_muted(windows: Sequence[MuteWindow], moment: datetime) -> bool:
    """True when any of the windows contains `moment`."""
    return any(window.contains(moment) for window in windows)


def _time_of_day(value: object, *, end: bool) -> int:
    match = _TIME_OF_DAY.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        hours, minutes = int(match[1]), int(match[2])
        if (hours < 24 and minutes < 60) or (end and hours == 24 and minutes == 0):
            return hours * 60 + minutes
    latest = '"24:00"' if end else '"23:59"'
    raise ValueError(f'{value!r} is not a time of day such as "01:30" (from "00:00" to {latest})')


def _days(value: object) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'must be a non-empty list of days such as ["mon", "tue"], not {value!r}')
    days: set[int] = set()
    for day in value:
        if not isinstance(day, str) or day.lower() not in WEEKDAYS:
            raise ValueError(f"unknown day {day!r}: use {', '.join(WEEKDAYS)}")
        days.add(WEEKDAYS.index(day.lower()))
    return frozenset(days)


def _cron_value(text: str, low: int, high: int, names: Sequence[str], name_base: int) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + name_base
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{text!r} is not a value from {low} to {high}")
    return int(text)


def _cron_field(text: str, low: int, high: int, names: Sequence[str], name_base: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"step {step_text!r} in {item!r} is not a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start_text, _, end_text = span.partition("-")
            first = _cron_value(start_text, low, high, names, name_base)
            last = _cron_value(end_text, low, high, names, name_base)
            if first > last:
                raise ValueError(f"range {span!r} runs backwards")
        else:
            first = _cron_value(span, low, high, names, name_base)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(expression: object, timezone: str = "UTC") -> CronWindow:
    """Read a five-field cron expression; ValueError names the field at fault."""
    if not isinstance(expression, str):
        raise ValueError(f'must be a cron expression such as "0-29 1 * * mon-fri", not {expression!r}')
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r} has {len(fields)} fields; a cron expression has five: "
            "minute hour day-of-month month day-of-week"
        )
    specs = (
        ("minute", 0, 59, (), 0),
        ("hour", 0, 23, (), 0),
        ("day of month", 1, 31, (), 0),
        ("month", 1, 12, _MONTHS, 1),
        ("day of week", 0, 7, _CRON_DAYS, 0),
    )
    parsed: list[frozenset[int]] = []
    for text, (name, low, high, names, base) in zip(fields, specs, strict=True):
        try:
            parsed.append(_cron_field(text, low, high, names, base))
        except ValueError as exc:
            raise ValueError(f"{expression!r}: {name}: {exc}") from None
    weekdays = frozenset(day % 7 for day in parsed[4])  # 7 is Sunday too
    return CronWindow(
        expression,
        parsed[0],
        parsed[1],
        parsed[2],
        parsed[3],
        weekdays,
        day_of_month_restricted=not fields[2].startswith("*"),
        day_of_week_restricted=not fields[4].startswith("*"),
        timezone=timezone,
        zone=_zone(timezone),
    )


def _window(table: Mapping[str, object]) -> MuteWindow:
    """One window; a ValueError starting with ".key: " names the key at fault."""
    allowed = _CRON_KEYS if "cron" in table else _DAILY_KEYS
    for key in table:
        if key not in allowed:
            hint = (
                "a cron window takes cron and timezone"
                if "cron" in table
                else ("a daily window takes days, from, to and timezone, or use cron")
            )
            raise ValueError(f".{key}: unknown key; {hint}")
    timezone = table.get("timezone", "UTC")
    try:
        zone = _zone(timezone)
    except ValueError as exc:
        raise ValueError(f".timezone: {exc}") from None
    assert isinstance(timezone, str)  # _zone accepted it
    if "cron" in table:
        try:
            return parse_cron(table["cron"], timezone)
        except ValueError as exc:
            raise ValueError(f".cron: {exc}") from None
    for key in ("from", "to"):
        if key not in table:
            raise ValueError(f'.{key}: missing; a daily window needs from and to, such as "01:00"')
    try:
        days = _days(table["days"]) if "days" in table else frozenset(range(7))
    except ValueError as exc:
        raise ValueError(f".days: {exc}") from None
    try:
        start = _time_of_day(table["from"], end=False)
    except ValueError as exc:
        raise ValueError(f".from: {exc}") from None
    try:
        end = _time_of_day(table["to"], end=True)
    except ValueError as exc:
        raise ValueError(f".to: {exc}") from None
    if start == end:
        raise ValueError('.to: equals from, an empty window; for a whole day use from "00:00", to "24:00"')
    return DailyWindow(days, start, end, timezone, zone)


def parse_mute(value: object) -> tuple[MuteWindow, ...]:
    """Read a rule's `mute` list; a ValueError starting with "[i].key: " names the window and key."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise ValueError(
            'must be a list of tables such as [{ from = "01:00", to = "02:30", timezone = "Europe/London" }]'
        )
    windows: list[MuteWindow] = []
    for index, table in enumerate(value):
        try:
            windows.append(_window(table))
        except ValueError as exc:
            raise ValueError(f"[{index}]{exc}") from None
    return tuple(windows)
