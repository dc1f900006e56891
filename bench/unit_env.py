"""The environment the systemd unit gives the daemon, for benchmarks that measure it as it runs."""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "balance-watcher.service"


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """The variables the unit's `Environment=` lines set (glibc's allocator tuning among them)."""
    found: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                name, _, value = pair.partition("=")
                found[name] = value
    return found
