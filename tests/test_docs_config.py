"""docs/configuration.md and the settings model (watcher/config.py) say the same: every key of the model
is documented with its default, and the document names no key the model does not have."""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from watcher.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
HEADER = ["key", "type", "default", "meaning"]


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: Annotated and Optional removed, unions flattened."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [alt for arg in get_args(annotation) for alt in _unwrap(arg)]
    return [annotation]


def _models(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models an annotation holds, and whether it is a list of them (an array of tables)."""
    found: list[type[BaseModel]] = []
    is_list = False
    for alt in _unwrap(annotation):
        if get_origin(alt) is list:
            inner, _ = _models(get_args(alt)[0])
            if inner:
                found += inner
                is_list = True
        elif isinstance(alt, type) and issubclass(alt, BaseModel):
            found.append(alt)
    return found, is_list


def _tag(model: type[BaseModel]) -> str:
    """A tagged source's `type` value, e.g. "mastercard-send"."""
    (value,) = get_args(model.model_fields["type"].annotation)
    return str(value)


def _same(a: FieldInfo, b: FieldInfo) -> bool:
    return a.annotation == b.annotation and a.default == b.default and a.metadata == b.metadata


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf key as the document writes it: `kafka.bootstrap_servers`, `sources[].interval` for a
    key every source type shares, `sources[mypos-psd2].api_key` for a key of one type."""
    for name, field in model.model_fields.items():
        models, is_list = _models(field.annotation)
        if not models:
            yield prefix + name, field
        elif not is_list:
            (sub,) = models
            yield from model_keys(sub, f"{prefix}{name}.")
        elif len(models) == 1:
            yield from model_keys(models[0], f"{prefix}{name}[].")
        else:
            shared = {
                key for key, info in models[0].model_fields.items()
                if key != "type" and all(
                    key in m.model_fields and _same(info, m.model_fields[key]) for m in models[1:]
                )
            }
            tags = tuple(_tag(m) for m in models)
            yield f"{prefix}{name}[].type", FieldInfo(annotation=cast(Any, Literal)[tags])  # every tag
            for key in sorted(shared, key=list(models[0].model_fields).index):
                yield from _leaf_or_nested(models[0], key, f"{prefix}{name}[].")
            for m in models:
                for key in m.model_fields:
                    if key not in shared and key != "type":
                        yield from _leaf_or_nested(m, key, f"{prefix}{name}[{_tag(m)}].")


def _leaf_or_nested(model: type[BaseModel], key: str, prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    field = model.model_fields[key]
    models, _ = _models(field.annotation)
    if models:
        raise AssertionError(f"{prefix}{key}: nested tables inside sources are not handled by this test")
    yield prefix + key, field


def render_default(field: FieldInfo) -> str:
    """The default as the document's default column starts: a TOML value in backticks, `required`, or
    `unset` (None)."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    assert value is not PydanticUndefined
    return f"`{toml_value(value)}`" if value is not None else "unset"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return json.dumps(duration_text(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise AssertionError(f"no TOML rendering for the default {value!r}")


def duration_text(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


def documented_rows(text: str) -> dict[str, list[str]]:
    """The rows of every table whose header is `key | type | default | meaning`, by key."""
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells == HEADER:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        key = re.fullmatch(r"`([^`]+)`", cells[0])
        assert key, f"docs/configuration.md: the first cell of {line!r} is not a `key`"
        assert key.group(1) not in rows, f"docs/configuration.md documents {key.group(1)} twice"
        assert len(cells) == len(HEADER), f"docs/configuration.md: {line!r} does not have {len(HEADER)} cells"
        rows[key.group(1)] = cells
    return rows


def test_model_walk_sees_both_source_types() -> None:
    """The walk reaches nested sections, keys shared by both source types, and each type's own keys."""
    keys = dict(model_keys(Settings))
    assert "kafka.bootstrap_servers" in keys
    assert "sources[].interval" in keys
    assert "sources[].type" in keys
    assert "sources[mastercard-send].partner_id" in keys
    assert "sources[mypos-psd2].account_numbers" in keys
    # base_url exists in both types with different defaults: documented per type.
    assert "sources[mastercard-send].base_url" in keys
    assert "sources[mypos-psd2].base_url" in keys


def test_every_key_is_documented_and_nothing_else() -> None:
    """Each key of the settings model has a row in docs/configuration.md, and each row names a real key."""
    model = dict(model_keys(Settings))
    documented = documented_rows(DOC.read_text())
    missing = [key for key in model if key not in documented]
    unknown = [key for key in documented if key not in model]
    problems = [f"not in docs/configuration.md: {key}" for key in missing]
    problems += [f"in docs/configuration.md but not in the settings model: {key}" for key in unknown]
    assert not problems, "\n".join(problems)


def test_documented_defaults_match_the_model() -> None:
    """The default column starts with the model's default (`value`, required or unset)."""
    documented = documented_rows(DOC.read_text())
    wrong = []
    for key, field in model_keys(Settings):
        if key not in documented:
            continue  # reported by the test above
        expected = render_default(field)
        if not documented[key][2].startswith(expected):
            wrong.append(f"{key}: the default column should start with {expected}: {documented[key][2]!r}")
    assert not wrong, "\n".join(wrong)


def test_enumerated_values_are_all_listed() -> None:
    """For a key with a fixed set of values, the type column lists every one of them."""
    documented = documented_rows(DOC.read_text())
    wrong = []
    for key, field in model_keys(Settings):
        if key not in documented:
            continue
        literals = [a for a in _unwrap(field.annotation) if get_origin(a) is Literal]
        for literal in literals:
            for value in get_args(literal):
                if f'"{value}"' not in documented[key][1]:
                    wrong.append(f'{key}: the type column does not list "{value}"')
    assert not wrong, "\n".join(wrong)
