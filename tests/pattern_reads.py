"""Test helpers: a Mastercard body read one way or the other (the XML pattern, xml_pattern, allowed or not;
a direct path on or off), so that a test can compare the two ways on the same bytes."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import watcher.sources.mastercard_xml as mastercard_xml
from rules.types import Observation
from watcher.sources.base import ParsedBalances, ParseError
from watcher.sources.body import Body
from watcher.sources.mastercard_accounts import ListingKeys
from watcher.sources.xml_pattern import NotPlain


def read_xml(
    body: Body, *, pattern: bool, keys: ListingKeys | None = None, **kw: Any
) -> tuple[str, bool]:
    """parse_mastercard_xml's outcome as text (the result's repr, so that 1000 and 1000.00 differ, or the
    ParseError's message), and whether the pattern read the body; `pattern=False` leaves every body to
    the XML parser. `kw`: source, observed_at, correlation_id."""
    read_pattern = mastercard_xml._read_pattern
    took = False

    def reading(*args: Any, **kwargs: Any) -> ParsedBalances:
        nonlocal took
        if not pattern:
            raise NotPlain
        parsed = read_pattern(*args, **kwargs)
        took = True
        return parsed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mastercard_xml, "_read_pattern", reading)
        try:
            return repr(mastercard_xml.parse_mastercard_xml(body, keys=keys, **kw)), took
        except ParseError as exc:
            return f"ParseError: {exc}", took


def count_direct_reads(
    patch: pytest.MonkeyPatch, module: ModuleType, name: str, *, direct: bool
) -> Callable[[], int]:
    """Wraps a reader's direct path, `module.name` (mastercard_json's `_plain_json_account`,
    mastercard_xml's `_plain_xml_account`), for the patch's life; with `direct=False` it reads no
    account, leaving every one to the general path (_account). Returns how many accounts it has read so
    far."""
    plain = getattr(module, name)
    taken = 0

    def counting(*args: Any) -> Observation | None:
        nonlocal taken
        found: Observation | None = plain(*args) if direct else None
        taken += found is not None
        return found

    patch.setattr(module, name, counting)
    return lambda: taken
