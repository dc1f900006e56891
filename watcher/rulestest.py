"""`balance-watcher rules test FILE...`: unit tests for alert rules, in the spirit of `promtool test rules`.

A test file (TOML) names rules files and describes, per test, balances observed over time and the alert
events expected. The balances go through the real engine, as the daemon feeds it: each step is one
poll of every series (`assess`, then `assess_poll`) and then one `tick`; every published transition is
an event. A failing test prints the events in time order, `-` for expected but not published and `+`
for published but not expected.

    rule_files = ["rules.example.toml"]          # relative to the test file

    [[tests]]
    name = "a low GBP balance pages after two minutes"
    interval = "1m"                              # time between steps (default 1m)
    start = "2024-05-06T09:00:00Z"               # the first step (default 2024-01-01T00:00:00Z)

    [[tests.series]]                             # one balance: source, account, currency, balance_type
    source = "mc-gbp"
    account = "acct-1"
    currency = "GBP"
    values = "6000 4900*3 fail revoked _ 6000"   # amount | _ (no poll) | fail | revoked; X*N repeats X

    [[tests.expect]]                             # every event the test expects; none if there is none
    at = "1m"                                    # time since start
    rule = "gbp-prefund-low"
    status = "firing"                            # firing | resolved | repeat
    # account = "acct-1", source = "mc-gbp": needed with several series; summary = "...": checked if given
"""

from __future__ import annotations

import contextlib
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from rules.compiled import CompiledRules, compile_rules
from rules.durations import format_duration, parse_duration
from rules.engine import assess
from rules.lifecycle import AlertTransition
from rules.loader import RulesError, load_rule_files
from rules.staleness import assess_poll
from rules.timeline import tick
from rules.types import (
    IN_CREDIT,
    IN_DEBIT,
    AlertState,
    Balance,
    BalanceKey,
    Freshness,
    KnownBalance,
    Observation,
    PollOutcome,
    subject_key,
)

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
STATUSES = ("firing", "resolved", "repeat")
_FILE_KEYS = ("rule_files", "tests")
_TEST_KEYS = ("name", "interval", "start", "series", "expect")
_SERIES_KEYS = (
    "source",
    "account",
    "currency",
    "balance_type",
    "provider",
    "values",
    "error",
    "revoked_reason",
)
_EXPECT_KEYS = ("at", "rule", "status", "source", "account", "summary")


class TestFileError(ValueError):
    """A test file that cannot be run; the message names the file and the key."""

    __test__ = False  # not a pytest test class, whatever its name


@dataclass(frozen=True, slots=True)
class Event:
    """One alert event, as a test expects it or as the engine published it. None matches anything."""

    at: timedelta
    rule: str
    status: str
    source: str | None = None
    account: str | None = None
    summary: str | None = None

    def matches(self, other: Event) -> bool:
        """True when `other` (published) is this expected event."""
        return (
            (self.at, self.rule, self.status) == (other.at, other.rule, other.status)
            and self.source in (None, other.source)
            and self.account in (None, other.account)
            and self.summary in (None, other.summary)
        )

    def line(self) -> str:
        where = f"{self.source or 'any'}:{self.account or 'any'}"
        text = f"{format_duration(self.at):>8}  {self.rule:<28} {self.status:<9} {where}"
        return f"{text}  {self.summary!r}" if self.summary is not None else text


@dataclass(frozen=True, slots=True)
class Series:
    """One balance observed over the steps of a test."""

    key: BalanceKey
    currency: str
    provider: str
    steps: tuple[Decimal | str, ...]
    error: str
    revoked_reason: str


@dataclass(frozen=True, slots=True)
class RuleTest:
    """One [[tests]] table, read."""

    name: str
    interval: timedelta
    start: datetime
    series: tuple[Series, ...]
    expected: tuple[Event, ...]


@dataclass
class TestResult:
    """One test's outcome; `diff` is empty when it passed."""

    __test__ = False  # not a pytest test class, whatever its name

    name: str
    diff: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.diff


@dataclass
class TestReport:
    """Everything one test file gave: its results, or why it could not run."""

    __test__ = False  # not a pytest test class, whatever its name

    path: Path
    rules: int = 0
    results: list[TestResult] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(result.passed for result in self.results)


def _require(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise TestFileError(f"{where}.{key}: unknown key; valid keys: {', '.join(allowed)}")


def _text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in table and default is None:
        raise TestFileError(f"{where}.{key}: missing")
    value = table.get(key, default)
    if not isinstance(value, str):
        raise TestFileError(f"{where}.{key}: must be a string, not {value!r}")
    if not value and key != "balance_type":
        raise TestFileError(f"{where}.{key}: must not be empty")
    return value


def _steps(text: str, where: str) -> tuple[Decimal | str, ...]:
    steps: list[Decimal | str] = []
    for token in text.split():
        word, _, count_text = token.partition("*")
        if count_text and (not count_text.isdigit() or int(count_text) == 0):
            raise TestFileError(f"{where}: {token!r}: the count after * must be a positive number")
        if word in ("_", "fail", "revoked"):
            value: Decimal | str = word
        else:
            try:
                value = Decimal(word)
            except InvalidOperation:
                raise TestFileError(
                    f"{where}: {word!r} is not an amount, _ (no poll), fail or revoked"
                ) from None
        steps.extend([value] * (int(count_text) if count_text else 1))
    return tuple(steps)


def _series(table: Any, where: str) -> Series:
    if not isinstance(table, Mapping):
        raise TestFileError(f"{where}: must be a table, written [[tests.series]]")
    _require(table, _SERIES_KEYS, where)
    balance_type = _text(table, "balance_type", where, "")
    key = BalanceKey(_text(table, "source", where), _text(table, "account", where), balance_type)
    provider = _text(table, "provider", where, "mypos-psd2" if balance_type else "mastercard-send")
    return Series(
        key,
        _text(table, "currency", where),
        provider,
        _steps(_text(table, "values", where), f"{where}.values"),
        _text(table, "error", where, "poll failed (test)"),
        _text(table, "revoked_reason", where, "access revoked (test)"),
    )


def _duration(table: Mapping[str, Any], key: str, where: str, default: str) -> timedelta:
    try:
        return parse_duration(table.get(key, default), allow_zero=key == "at")
    except ValueError as exc:
        raise TestFileError(f"{where}.{key}: {exc}") from None


def _expected(table: Any, where: str) -> Event:
    if not isinstance(table, Mapping):
        raise TestFileError(f"{where}: must be a table, written [[tests.expect]]")
    _require(table, _EXPECT_KEYS, where)
    status = _text(table, "status", where)
    if status not in STATUSES:
        raise TestFileError(f"{where}.status: {status!r}: use one of {', '.join(STATUSES)}")
    optional = {key: _text(table, key, where) for key in ("source", "account", "summary") if key in table}
    return Event(_duration(table, "at", where, "0s"), _text(table, "rule", where), status, **optional)


def _start(table: Mapping[str, Any], where: str) -> datetime:
    value = table.get("start", DEFAULT_START)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a bad text is reported just below
            value = datetime.fromisoformat(value)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TestFileError(f'{where}.start: use a time with its offset, such as "2024-05-06T09:00:00Z"')
    return value


def _test(table: Any, where: str) -> RuleTest:
    if not isinstance(table, Mapping):
        raise TestFileError(f"{where}: must be a table, written [[tests]]")
    _require(table, _TEST_KEYS, where)
    series, expect = table.get("series", []), table.get("expect", [])
    if not isinstance(series, list) or not series:
        raise TestFileError(f"{where}.series: add at least one [[tests.series]]")
    if not isinstance(expect, list):
        raise TestFileError(f"{where}.expect: must be [[tests.expect]] tables")
    return RuleTest(
        _text(table, "name", where),
        _duration(table, "interval", where, "1m"),
        _start(table, where),
        tuple(_series(item, f"{where}.series[{i}]") for i, item in enumerate(series)),
        tuple(_expected(item, f"{where}.expect[{i}]") for i, item in enumerate(expect)),
    )


def read_test_file(path: Path) -> tuple[list[Path], list[RuleTest]]:
    """The rules files (resolved from the test file's folder) and the tests; TestFileError if bad."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TestFileError(f"{path}: cannot read the test file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TestFileError(f"{path}: not valid TOML: {exc}") from None
    _require(data, _FILE_KEYS, str(path))
    files, tests = data.get("rule_files"), data.get("tests")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise TestFileError(f'{path}: rule_files: name the rules files to test, such as ["rules.toml"]')
    if not isinstance(tests, list) or not tests:
        raise TestFileError(f"{path}: tests: add at least one [[tests]]")
    return [path.parent / f for f in files], [_test(t, f"{path}: tests[{i}]") for i, t in enumerate(tests)]


class _Daemon:
    """The daemon's side of the engine, in memory: the same calls in the same order, state kept as told."""

    def __init__(self, rules: CompiledRules, start: datetime) -> None:
        self.rules = rules
        self.start = start
        self.known: dict[BalanceKey, KnownBalance] = {}
        self.alerts: dict[BalanceKey, dict[str, AlertState]] = {}
        self.freshness: dict[BalanceKey, Freshness] = {}
        self.events: list[Event] = []

    def _keep(self, transitions: Sequence[AlertTransition], states: Sequence[AlertState]) -> None:
        for t in transitions:
            key = t.state.key
            summary = dict(t.annotations).get("summary")
            self.events.append(
                Event(t.at - self.start, t.rule.name, t.status, key.source, key.account, summary)
            )
        for state in states:
            self.alerts.setdefault(state.key, {})[state.fingerprint] = state

    def poll(self, series: Series, value: Decimal | str, now: datetime, step: int) -> None:
        key = series.key
        if value == "_":
            return
        if isinstance(value, Decimal):
            state = (IN_DEBIT if value < 0 else IN_CREDIT) if series.provider == "mastercard-send" else None
            amount = abs(value) if state is not None else value
            balance = Balance(amount, series.currency, state, key.balance_type or None)
            observation = Observation(key, series.provider, balance, now, f"test-{step}")
            # The key's alerts and its source's, so that a source-wide alert's suppression applies.
            alerts = {**self.alerts.get(subject_key(key.source), {}), **self.alerts.get(key, {})}
            result = assess(observation, self.known.get(key), self.rules, alerts)
            self.known[key] = result.known
            self._keep(result.transitions, result.alerts)
            outcome = PollOutcome(key.source, now, (key.account,), True)
        else:
            revoked = value == "revoked"
            reason = series.revoked_reason if revoked else series.error
            outcome = PollOutcome(key.source, now, (key.account,), False, reason, revoked)
        polled = assess_poll(outcome, self.rules, self.freshness.get, self.alerts.get)
        self.freshness.update({record.subject: record for record in polled.freshness})
        self._keep(polled.transitions, polled.alerts)

    def tick(self, now: datetime) -> None:
        every = [state for by_fp in self.alerts.values() for state in by_fp.values()]
        update = tick(now, self.rules, every, list(self.freshness.values()), self.known)
        self._keep(update.transitions, update.alerts)


def run_test(test: RuleTest, rules: CompiledRules) -> TestResult:
    """Run one test through the engine and compare the events."""
    daemon = _Daemon(rules, test.start)
    for step in range(max(len(series.steps) for series in test.series)):
        now = test.start + step * test.interval
        for series in test.series:
            if step < len(series.steps):
                daemon.poll(series, series.steps[step], now, step)
        daemon.tick(now)
    return TestResult(test.name, _diff(list(test.expected), daemon.events))


def _diff(expected: list[Event], published: list[Event]) -> list[str]:
    """Every event in time order: "  " matched, "- " expected but not published, "+ " unexpected."""
    rows: list[tuple[timedelta, int, str]] = []
    missing = list(expected)
    unexpected = False
    for order, event in enumerate(published):
        match = next((e for e in missing if e.matches(event)), None)
        if match is None:
            unexpected = True
            rows.append((event.at, order, f"+ {event.line()}"))
        else:
            missing.remove(match)
            rows.append((event.at, order, f"  {event.line()}"))
    if not missing and not unexpected:
        return []
    rows.extend((event.at, len(published), f"- {event.line()}") for event in missing)
    header = f"  {'at':>8}  {'rule':<28} {'status':<9} source:account"
    return [header, *(text for _, _, text in sorted(rows, key=lambda row: (row[0], row[1])))]


def run_rule_tests(test_file: Path) -> TestReport:
    """Read a test file, load its rules files and run every test; never raises for a bad file."""
    report = TestReport(test_file)
    try:
        rule_files, tests = read_test_file(test_file)
        rules = compile_rules(load_rule_files(rule_files).rules)
    except (TestFileError, RulesError) as exc:
        report.error = str(exc)
        return report
    except ValueError as exc:  # rules the loader let through but the engine refuses
        report.error = f"{test_file}: {exc}"
        return report
    report.rules = len(rules)
    report.results = [run_test(test, rules) for test in tests]
    return report


def print_report(report: TestReport, out: TextIO) -> None:
    """The report, readably: one line per test, and the event diff of each failing one."""
    if report.error is not None:
        print(f"{report.path}: cannot run: {report.error}", file=out)
        return
    print(f"{report.path}: {len(report.results)} test(s) of {report.rules} rule(s)", file=out)
    for result in report.results:
        print(f"  {'ok  ' if result.passed else 'FAIL'}  {result.name}", file=out)
        for line in result.diff:
            print(f"        {line}", file=out)


def main_rules_test(paths: Sequence[Path], out: TextIO = sys.stdout) -> int:
    """Run every test file and print the results; 0 when every test passed, else 1."""
    reports = [run_rule_tests(path) for path in paths]
    for report in reports:
        print_report(report, out)
    results = [result for report in reports for result in report.results]
    failed = sum(not result.passed for result in results)
    broken = sum(report.error is not None for report in reports)
    summary = f"{len(results) - failed} passed, {failed} failed"
    print(summary + (f", {broken} file(s) could not run" if broken else ""), file=out)
    return 0 if failed == 0 and broken == 0 and results else 1


if __name__ == "__main__":
    # python -m watcher.rulestest FILE...: the same as `balance-watcher rules test FILE...`.
    if len(sys.argv) < 2:
        print("usage: python -m watcher.rulestest TEST_FILE...", file=sys.stderr)
        sys.exit(2)
    sys.exit(main_rules_test([Path(arg) for arg in sys.argv[1:]]))
