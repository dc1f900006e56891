"""The systemd unit says what the daemon relies on; with systemd-analyze at hand it also verifies and
scores the unit (CI runs scripts/check-unit, which installs systemd when it is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from watcher.cli import EX_CONFIG, build_parser
from watcher.config import Settings, StateConfig

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "balance-watcher.service"
MAX_EXPOSURE = 1.5

Unit = dict[str, dict[str, list[str]]]

_TIME_UNITS = {
    "us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0
}


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in order (keys such as SystemCallFilter= may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{line!r} is not Key=value"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def timespan_s(text: str) -> float:
    """systemd's time span syntax ("45s", "2min 30s", "90") in seconds."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts, f"{text!r} is not a time span"
    for number, unit in parts:
        total += float(number) * _TIME_UNITS[unit or "s"]
    return total


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def test_notify_protocol(service: dict[str, list[str]]) -> None:
    """Type=notify, and only the main process (the daemon) may send READY/STATUS/WATCHDOG."""
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert timespan_s(one(service, "WatchdogSec")) >= 30  # pings go every half of it


def test_exec_start_runs_the_daemon(service: dict[str, list[str]]) -> None:
    """ExecStart is `balance-watcher run -c /etc/balance-watcher/config.toml` from the venv under /opt,
    and the CLI accepts exactly those arguments."""
    program, *args = one(service, "ExecStart").split()
    assert program == "/opt/balance-watcher/venv/bin/balance-watcher"
    assert args == ["run", "-c", "/etc/balance-watcher/config.toml"]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "run"
    assert parsed.config == Path("/etc/balance-watcher/config.toml")


def test_reload_checks_then_sends_sighup(service: dict[str, list[str]]) -> None:
    """`systemctl reload` runs `check` on the same config (so it fails visibly on bad rules), then sends
    SIGHUP to the main process: the daemon's rules reload."""
    check, hup = service["ExecReload"]
    program, *args = check.split()
    assert program == "/opt/balance-watcher/venv/bin/balance-watcher"
    assert args == ["check", "-c", "/etc/balance-watcher/config.toml"]
    assert build_parser().parse_args(args).command == "check"
    assert hup == "/bin/kill -HUP $MAINPID"


def test_restart_policy(service: dict[str, list[str]]) -> None:
    """Failures restart, but a bad config (exit 78, EX_CONFIG) does not loop."""
    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartPreventExitStatus").split() == [str(EX_CONFIG)]


def test_stop_timeout_exceeds_the_drain_grace(service: dict[str, list[str]]) -> None:
    """systemd waits longer than the daemon's own drain (shutdown_grace) before SIGKILL, with margin."""
    grace = Settings().shutdown_grace.total_seconds()
    assert timespan_s(one(service, "TimeoutStopSec")) >= grace + 10


def test_state_directory_holds_the_default_state_path(service: dict[str, list[str]]) -> None:
    """StateDirectory= creates the folder of the default state.db, owned by the service user."""
    directory = one(service, "StateDirectory")
    assert StateConfig().path.parent == Path("/var/lib") / directory
    assert one(service, "User") == "balance-watcher"


def test_service_user_and_credential_folder_are_provisioned(service: dict[str, list[str]]) -> None:
    """sysusers creates the unit's user; tmpfiles the root-only folder that LoadCredential= reads."""
    sysusers = (SYSTEMD / "balance-watcher.sysusers.conf").read_text()
    assert re.search(r"^u\s+balance-watcher\s", sysusers, re.MULTILINE)
    credentials = one(service, "LoadCredential")
    name, _, path = credentials.partition(":")
    assert name == "secret"
    tmpfiles = (SYSTEMD / "balance-watcher.tmpfiles.conf").read_text()
    assert re.search(rf"^d\s+{re.escape(path)}\s+0700\s+root\s+root\b", tmpfiles, re.MULTILINE)


def test_network_stays_open_for_apis_and_kafka(service: dict[str, list[str]]) -> None:
    """Hardening leaves IPv4, IPv6 and AF_UNIX (journal, sd_notify) sockets, and no private network."""
    assert set(one(service, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service


def test_unit_has_an_install_target() -> None:
    """`systemctl enable` starts it at boot."""
    assert parse_unit(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed; scripts/check-unit (run by CI) installs it and runs this check",
)


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing (Exec*= point at a stub: /opt is not installed here)."""
    if not Path("/bin/kill").exists():
        pytest.skip("/bin/kill (procps), which ExecReload= names, is not installed; scripts/check-unit is")
    stub = tmp_path / "balance-watcher"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    installed = "=/opt/balance-watcher/venv/bin/balance-watcher "
    unit.write_text(UNIT.read_text().replace(installed, f"={stub} "))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).strip() == ""


@needs_systemd_analyze
def test_systemd_analyze_security_exposure() -> None:
    """`systemd-analyze security --offline=yes` scores the unit at 1.5 or less."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    found = re.search(r"Overall exposure level for [^:]*: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout
