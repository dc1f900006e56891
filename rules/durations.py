"""Durations as rules files write them ("90s", "15m", "1h30m", "1d") and as messages show them.

The same grammar as the configuration's durations, so operators learn one.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HINT = 'use a number and a unit (ms, s, m, h, d) such as "90s", "15m" or "1h30m"'


def parse_duration(value: object, *, allow_zero: bool = False) -> timedelta:
    """Read "500ms", "90s", "15m", "6h", "1d" or a sum such as "1h30m"; ValueError says what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f'a duration is a string such as "15m", not {value!r}')
    text = value.strip().replace(" ", "")
    parts = _PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    duration = timedelta(seconds=sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts))
    if duration <= timedelta(0) and not allow_zero:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return duration


@lru_cache(maxsize=256)  # a handful of rule durations, spelled once per stale subject and tick
def format_duration(duration: timedelta) -> str:
    """The shortest spelling parse_duration reads back: "1h30m", "90s" is "1m30s", zero is "0s"."""
    total_ms = round(duration.total_seconds() * 1000)
    if total_ms <= 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, total_ms = divmod(total_ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
