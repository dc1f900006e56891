"""Mute windows: daily time ranges and cron expressions, in their time zones, across midnight and DST."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.durations import format_duration, parse_duration
from rules.schedule import CronWindow, DailyWindow, is_muted, parse_cron, parse_mute


def london(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Europe/London"))


NIGHTLY_WEEKDAYS = parse_mute(
    [
        {
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "from": "01:00",
            "to": "02:30",
            "timezone": "Europe/London",
        }
    ]
)


@pytest.mark.parametrize(
    ("moment", "muted"),
    [
        (london(2024, 5, 6, 0, 59), False),  # Monday
        (london(2024, 5, 6, 1, 0), True),
        (london(2024, 5, 6, 2, 29), True),
        (london(2024, 5, 6, 2, 30), False),
        (london(2024, 5, 11, 1, 30), False),  # Saturday
        # The same instants in UTC: London is UTC+1 in May.
        (datetime(2024, 5, 6, 0, 0, tzinfo=UTC), True),
        (datetime(2024, 5, 6, 1, 29, tzinfo=UTC), True),
        (datetime(2024, 5, 6, 1, 30, tzinfo=UTC), False),
        # In winter London is UTC+0.
        (datetime(2024, 1, 8, 1, 0, tzinfo=UTC), True),
        (datetime(2024, 1, 8, 0, 30, tzinfo=UTC), False),
    ],
)
def test_daily_window_in_its_time_zone(moment: datetime, muted: bool) -> None:
    """A daily window mutes from `from` (included) to `to` (excluded), local time, on its days only."""
    assert is_muted(NIGHTLY_WEEKDAYS, moment) is muted


@pytest.mark.parametrize(
    ("moment", "muted"),
    [
        (datetime(2024, 5, 10, 22, 59, tzinfo=UTC), False),  # Friday
        (datetime(2024, 5, 10, 23, 0, tzinfo=UTC), True),
        (datetime(2024, 5, 11, 5, 59, tzinfo=UTC), True),  # Saturday morning: Friday's window
        (datetime(2024, 5, 11, 6, 0, tzinfo=UTC), False),
        (datetime(2024, 5, 11, 23, 30, tzinfo=UTC), False),  # Saturday evening: no window starts
        (datetime(2024, 5, 10, 3, 0, tzinfo=UTC), True),  # Friday morning: Thursday's window
        (datetime(2024, 5, 6, 3, 0, tzinfo=UTC), False),  # Monday morning: Sunday has none
    ],
)
def test_window_past_midnight_belongs_to_the_day_it_starts(moment: datetime, muted: bool) -> None:
    """A window whose `to` is not after its `from` runs into the next day, and belongs to its start day."""
    windows = parse_mute([{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "23:00", "to": "06:00"}])
    assert is_muted(windows, moment) is muted


def test_whole_day_and_every_day() -> None:
    """`to = "24:00"` is the end of the day; without `days` a window is every day."""
    (window,) = parse_mute([{"from": "00:00", "to": "24:00", "days": ["sun"]}])
    assert isinstance(window, DailyWindow)
    assert window.contains(datetime(2024, 5, 12, 23, 59, tzinfo=UTC))
    assert not window.contains(datetime(2024, 5, 13, 0, 0, tzinfo=UTC))
    (daily,) = parse_mute({"from": "12:00", "to": "12:01"})
    assert all(daily.contains(datetime(2024, 5, d, 12, 0, tzinfo=UTC)) for d in range(1, 8))


def test_dst_change_is_wall_clock_time() -> None:
    """On the night the clocks go forward, a 00:30-02:30 London window still ends at 02:30 local time."""
    windows = parse_mute([{"from": "00:30", "to": "02:30", "timezone": "Europe/London"}])
    # 31 March 2024: 01:00 GMT becomes 02:00 BST.
    assert is_muted(windows, datetime(2024, 3, 31, 0, 45, tzinfo=UTC))  # 00:45 GMT
    assert is_muted(windows, datetime(2024, 3, 31, 1, 15, tzinfo=UTC))  # 02:15 BST
    assert not is_muted(windows, datetime(2024, 3, 31, 1, 30, tzinfo=UTC))  # 02:30 BST


def test_naive_times_are_refused() -> None:
    """A naive datetime would be read in the host's zone, a hidden input: the engine refuses it."""
    with pytest.raises(ValueError, match="aware"):
        is_muted(NIGHTLY_WEEKDAYS, datetime(2024, 5, 6, 1, 30))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("expression", "moment", "muted"),
    [
        ("0-29 1 * * mon-fri", datetime(2024, 5, 6, 1, 0, tzinfo=UTC), True),
        ("0-29 1 * * mon-fri", datetime(2024, 5, 6, 1, 29, tzinfo=UTC), True),
        ("0-29 1 * * mon-fri", datetime(2024, 5, 6, 1, 30, tzinfo=UTC), False),
        ("0-29 1 * * mon-fri", datetime(2024, 5, 11, 1, 0, tzinfo=UTC), False),  # Saturday
        ("*/15 * * * *", datetime(2024, 5, 6, 7, 45, tzinfo=UTC), True),
        ("*/15 * * * *", datetime(2024, 5, 6, 7, 46, tzinfo=UTC), False),
        ("* 22-23,0-5 * * *", datetime(2024, 5, 6, 3, 10, tzinfo=UTC), True),
        ("* 22-23,0-5 * * *", datetime(2024, 5, 6, 6, 10, tzinfo=UTC), False),
        ("* * 1 * *", datetime(2024, 6, 1, 12, 0, tzinfo=UTC), True),
        ("* * * jan,dec *", datetime(2024, 12, 24, 12, 0, tzinfo=UTC), True),
        ("* * * jan,dec *", datetime(2024, 11, 24, 12, 0, tzinfo=UTC), False),
        ("* * * * 0", datetime(2024, 5, 12, 12, 0, tzinfo=UTC), True),  # Sunday is 0
        ("* * * * 7", datetime(2024, 5, 12, 12, 0, tzinfo=UTC), True),  # and 7
        ("* * * * sun", datetime(2024, 5, 13, 12, 0, tzinfo=UTC), False),
        # Both day fields restricted: either matches, as in cron.
        ("* * 1 * mon", datetime(2024, 5, 6, 12, 0, tzinfo=UTC), True),  # a Monday, not the 1st
        ("* * 1 * mon", datetime(2024, 5, 1, 12, 0, tzinfo=UTC), True),  # the 1st, a Wednesday
        ("* * 1 * mon", datetime(2024, 5, 7, 12, 0, tzinfo=UTC), False),
        ("10-50/20 * * * *", datetime(2024, 5, 7, 12, 30, tzinfo=UTC), True),
        ("10-50/20 * * * *", datetime(2024, 5, 7, 12, 40, tzinfo=UTC), False),
        ("5/20 * * * *", datetime(2024, 5, 7, 12, 45, tzinfo=UTC), True),
    ],
)
def test_cron_window(expression: str, moment: datetime, muted: bool) -> None:
    """A cron window mutes every minute its five fields match (values, ranges, steps, lists, names)."""
    assert parse_cron(expression).contains(moment) is muted


def test_cron_window_in_a_time_zone() -> None:
    """A cron window is read in its time zone: 1 am in London is midnight UTC in summer."""
    (window,) = parse_mute([{"cron": "* 1 * * *", "timezone": "Europe/London"}])
    assert isinstance(window, CronWindow)
    assert window.contains(datetime(2024, 5, 6, 0, 15, tzinfo=UTC))
    assert not window.contains(datetime(2024, 5, 6, 1, 15, tzinfo=UTC))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "has 4 fields"),
        ("60 * * * *", "minute: '60' is not a value from 0 to 59"),
        ("* 24 * * *", "hour: '24' is not a value from 0 to 23"),
        ("* * 0 * *", "day of month: '0' is not a value from 1 to 31"),
        ("* * * 13 *", "month: '13' is not a value from 1 to 12"),
        ("* * * * 8", "day of week: '8' is not a value from 0 to 7"),
        ("*/0 * * * *", "minute: step '0' in '*/0' is not a positive number"),
        ("30-10 * * * *", "minute: range '30-10' runs backwards"),
        ("* * * * funday", "day of week: 'funday' is not a value"),
    ],
)
def test_cron_errors(expression: str, message: str) -> None:
    """A bad cron expression is refused with the field at fault."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cron(expression)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(minutes=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("1d", timedelta(days=1)),
        (" 15m ", timedelta(minutes=15)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    """Durations read as the configuration's do: a number and a unit, or a sum of them."""
    assert parse_duration(text) == expected


@settings(max_examples=200, deadline=None)
@given(milliseconds=st.integers(min_value=1, max_value=10**10))
def test_format_duration_reads_back(milliseconds: int) -> None:
    """Whatever the duration, its shortest spelling reads back as the same duration."""
    duration = timedelta(milliseconds=milliseconds)
    assert parse_duration(format_duration(duration)) == duration
