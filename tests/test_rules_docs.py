"""docs/rules.md and the rules package say the same: every rule key, kind and placeholder is documented,
and the document names none that does not exist; the runbook has a section per kind."""

from __future__ import annotations

import re
from pathlib import Path

from rules.annotations import PLACEHOLDERS
from rules.keys import RULE_KEYS
from rules.model import RULE_KINDS

ROOT = Path(__file__).resolve().parent.parent
RULES_DOC = (ROOT / "docs" / "rules.md").read_text()
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_rule_key_is_in_the_keys_table_and_no_other() -> None:
    """The keys table lists exactly the keys the loader reads."""
    rows = re.findall(r"^\| `([a-z_]+)` \|", _section(RULES_DOC, "Keys"), re.MULTILINE)
    assert sorted(rows) == sorted(RULE_KEYS)


def test_every_placeholder_is_documented_and_no_other() -> None:
    """The placeholders table lists exactly the placeholders annotations may use."""
    documented = set(re.findall(r"`\{([a-z_]+)\}`", _section(RULES_DOC, "Annotations")))
    assert documented == set(PLACEHOLDERS)


def test_every_kind_has_a_section_and_a_runbook_entry() -> None:
    """Each kind is explained in the reference and has a runbook section for on-call."""
    kinds = _section(RULES_DOC, "Kinds")
    runbook_headings = set(re.findall(r"^## (.+)$", RUNBOOK, re.MULTILINE))
    for kind in RULE_KINDS:
        assert f"`{kind}`" in kinds
        assert any(kind in heading.split(" / ") for heading in runbook_headings), kind
