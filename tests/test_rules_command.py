"""The rules test command (`balance-watcher rules test FILE...`): the shipped example passes, a failing
test prints a readable diff of events, and a bad test file is one clear message, never a traceback."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from watcher.rulestest import main_rules_test, run_rule_tests

ROOT = Path(__file__).resolve().parent.parent
RULES = """
[[rules]]
name = "low"
kind = "below"
threshold = "100"
annotations = { summary = "{account} at {amount}" }
"""


def write_test(tmp_path: Path, tests: str, rules: str = RULES) -> Path:
    (tmp_path / "rules.toml").write_text(rules)
    path = tmp_path / "rules.test.toml"
    path.write_text('rule_files = ["rules.toml"]\n' + tests)
    return path


ONE_SERIES = """
[[tests]]
name = "low balance"
[[tests.series]]
source = "mc"
account = "a1"
currency = "GBP"
values = "150 90*2 150"
"""


def test_the_example_rules_pass_their_tests() -> None:
    """rules.example.test.toml, shipped with the example rules, passes against them (as CI runs it)."""
    out = io.StringIO()
    assert main_rules_test([ROOT / "rules.example.test.toml"], out) == 0, out.getvalue()
    assert out.getvalue().rstrip().endswith("10 passed, 0 failed")


def test_expected_events_pass(tmp_path: Path) -> None:
    """Events expected at the right times, with filters on account and summary, make a passing test."""
    path = write_test(
        tmp_path,
        ONE_SERIES
        + """
[[tests.expect]]
at = "1m"
rule = "low"
status = "firing"
account = "a1"
summary = "a1 at 90"
[[tests.expect]]
at = "3m"
rule = "low"
status = "resolved"
""",
    )
    report = run_rule_tests(path)
    assert report.passed
    assert [(r.name, r.passed) for r in report.results] == [("low balance", True)]


def test_a_failing_test_prints_a_diff_and_exits_1(tmp_path: Path) -> None:
    """Missing events are marked -, unexpected ones +, matched ones unmarked, in time order."""
    path = write_test(
        tmp_path,
        ONE_SERIES
        + """
[[tests.expect]]
at = "2m"
rule = "low"
status = "firing"
""",
    )
    out = io.StringIO()
    assert main_rules_test([path], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[1] == "  FAIL  low balance"
    assert [line.split()[:4] for line in lines[3:6]] == [
        ["+", "1m", "low", "firing"],
        ["-", "2m", "low", "firing"],
        ["+", "3m", "low", "resolved"],
    ]
    assert lines[-1] == "0 passed, 1 failed"


def test_no_expectations_means_no_events(tmp_path: Path) -> None:
    """A test without [[tests.expect]] asserts that nothing is published."""
    report = run_rule_tests(write_test(tmp_path, ONE_SERIES))
    assert not report.passed
    assert any("+" in line and "firing" in line for line in report.results[0].diff)


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (
            ONE_SERIES.replace('values = "150 90*2 150"', 'values = "150 lots"'),
            "tests[0].series[0].values: 'lots' is not an amount, _ (no poll), fail or revoked",
        ),
        (
            ONE_SERIES.replace('values = "150 90*2 150"', 'values = "150*0"'),
            "tests[0].series[0].values: '150*0': the count after * must be a positive number",
        ),
        (ONE_SERIES.replace('currency = "GBP"', ""), "tests[0].series[0].currency: missing"),
        (
            ONE_SERIES.replace('name = "low balance"', 'name = "x"\ncolour = "red"'),
            "tests[0].colour: unknown key; valid keys: name, interval, start, series, expect",
        ),
        (
            ONE_SERIES + '[[tests.expect]]\nat = "1m"\nrule = "low"\nstatus = "burning"\n',
            "tests[0].expect[0].status: 'burning': use one of firing, resolved, repeat",
        ),
        (
            ONE_SERIES.replace("[[tests]]", '[[tests]]\ninterval = "soon"'),
            "tests[0].interval: invalid duration 'soon'",
        ),
        (
            ONE_SERIES.replace("[[tests]]", '[[tests]]\nstart = "yesterday"'),
            'tests[0].start: use a time with its offset, such as "2024-05-06T09:00:00Z"',
        ),
        ("", "tests: add at least one [[tests]]"),
    ],
)
def test_bad_test_files_name_the_key(tmp_path: Path, tests: str, message: str) -> None:
    """A test file that cannot run is reported in one line naming the file and the key at fault."""
    path = write_test(tmp_path, tests)
    report = run_rule_tests(path)
    assert report.error == f"{path}: {message}" or (report.error or "").startswith(f"{path}: {message}")
    out = io.StringIO()
    assert main_rules_test([path], out) == 1
    assert out.getvalue().startswith(f"{path}: cannot run: {path}: {message}")


def test_bad_rules_are_reported_as_the_loader_says(tmp_path: Path) -> None:
    """Rules that do not load make the test file fail with the loader's message (file, rule, key)."""
    path = write_test(tmp_path, ONE_SERIES, rules=RULES.replace('threshold = "100"', 'threshold = "x"'))
    report = run_rule_tests(path)
    assert report.error is not None
    assert "rules.toml: rule 'low' (rules[0]): threshold: invalid amount 'x'" in report.error


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A missing or malformed test file is a message, and exit code 1."""
    out = io.StringIO()
    assert main_rules_test([tmp_path / "nope.toml"], out) == 1
    assert "cannot read the test file" in out.getvalue()
    bad = tmp_path / "bad.toml"
    bad.write_text("rule_files = [")
    assert "not valid TOML" in (run_rule_tests(bad).error or "")
