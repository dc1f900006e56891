"""The providers' error bodies, read into one clear line and a reason code. Pure; never raises.

Mastercard: `{"Errors": {"Error": [{"Source", "ReasonCode", "Description", "Recoverable", "Details"}]}}`
(Error may be one object; `Recoverable` a boolean or the string "true"/"false"; `Details` null, text, or
an object such as `{"Detail": [{"Name": ..., "Value": ...}]}`), or the same in XML under `<Errors>`.
Berlin Group (myPOS): `{"tppMessages": [{"category", "code", "path", "text"}]}`, the problem+json form
`{"code", "title", "detail", "additionalErrors": [...]}`, and OAuth2's `{"error", "error_description"}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from xml.etree.ElementTree import Element

from watcher.sources.base import ParseError
from watcher.sources.transport import clean
from watcher.sources.values import load_json
from watcher.sources.xmlsafe import parse_untrusted_xml

_LINE_LIMIT = 500
_DETAILS_LIMIT = 200
_MAX_ERRORS = 5
_MAX_DEPTH = 6


@dataclass(frozen=True, slots=True)
class ProviderError:
    """An error body understood: the first reason code, every code, and one line for the log."""

    reason_code: str | None
    codes: tuple[str, ...]
    text: str


def _str(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _get(mapping: Mapping[str, object], name: str) -> object:
    """A key looked up case-insensitively: gateways differ in `Errors` / `errors`."""
    if name in mapping:
        return mapping[name]
    lowered = name.lower()
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == lowered), None)


def _flatten(value: object, depth: int = 0) -> list[str]:
    """Details as short `name=value` or text parts, whatever their shape."""
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (int, float, Decimal)):
        return [str(value)]
    if isinstance(value, list):
        return [part for item in value[:10] for part in _flatten(item, depth + 1)]
    if isinstance(value, Mapping):
        name, val = _str(_get(value, "Name")), _get(value, "Value")
        if name is not None and val is not None:
            return [f"{name}={' '.join(_flatten(val, depth + 1))}"]
        parts: list[str] = []
        for key, item in list(value.items())[:10]:
            inner = _flatten(item, depth + 1)
            if isinstance(item, (Mapping, list)) or not inner:
                parts.extend(inner)
            else:
                parts.append(f"{key}={' '.join(inner)}")
        return parts
    return []


def _recoverable(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _mastercard_line(error: Mapping[str, object]) -> tuple[str | None, str]:
    code = _str(_get(error, "ReasonCode"))
    head = ": ".join(v for v in (code, _str(_get(error, "Description"))) if v)
    extras: list[str] = []
    source = _str(_get(error, "Source"))
    if source:
        extras.append(f"source {source}")
    recoverable = _recoverable(_get(error, "Recoverable"))
    if recoverable is not None:
        extras.append("recoverable" if recoverable else "not recoverable")
    details = "; ".join(_flatten(_get(error, "Details")))
    if details:
        extras.append(f"details: {clean(details, _DETAILS_LIMIT)}")
    if not head:
        return code, ""
    return code, head + (f" ({', '.join(extras)})" if extras else "")


def _xml_dict(element: Element, depth: int = 0) -> object:
    """An element as JSON would have it: a leaf is its text; repeated children become a list."""
    children = [c for c in element if isinstance(c.tag, str)]
    if not children or depth > _MAX_DEPTH:
        return (element.text or "").strip()
    result: dict[str, object] = {}
    for child in children:
        tag, value = _local(child.tag), _xml_dict(child, depth + 1)
        if tag in result:
            existing = result[tag]
            result[tag] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[tag] = value
    return result


def _parse_any(body: bytes) -> object:
    if body.lstrip()[:1] == b"<":
        try:
            root = parse_untrusted_xml(body)
        except ParseError:
            return None
        return {_local(root.tag): _xml_dict(root)}
    try:
        return load_json(body)
    except ParseError:
        return None


def _finish(found: list[tuple[str | None, str]]) -> ProviderError | None:
    lines = [line for _, line in found if line]
    codes = tuple(code for code, _ in found if code)
    if not lines and not codes:
        return None
    shown = lines[:_MAX_ERRORS]
    more = len(lines) - len(shown)
    text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return ProviderError(codes[0] if codes else None, codes, clean(text or ", ".join(codes), _LINE_LIMIT))


def read_mastercard_error(body: bytes | None) -> ProviderError | None:
    """Mastercard's error format, JSON or XML; None when the body is not one."""
    if not body:
        return None
    doc = _parse_any(body)
    container = _get(doc, "Errors") if isinstance(doc, Mapping) else None
    items = _get(container, "Error") if isinstance(container, Mapping) else None
    errors = items if isinstance(items, list) else [items]
    return _finish([_mastercard_line(e) for e in errors if isinstance(e, Mapping)])


def _berlin_line(message: Mapping[str, object]) -> tuple[str | None, str]:
    code = _str(_get(message, "code")) or _str(_get(message, "error"))
    text = (
        _str(_get(message, "text"))
        or _str(_get(message, "detail"))
        or _str(_get(message, "title"))
        or _str(_get(message, "error_description"))
    )
    path = _str(_get(message, "path"))
    line = ": ".join(v for v in (code, text) if v)
    return code, line + (f" (at {path})" if line and path else "")


def read_berlin_group_error(body: bytes | None) -> ProviderError | None:
    """A Berlin Group (or OAuth2) error body; None when the body is not one."""
    if not body:
        return None
    doc = _parse_any(body) if body.lstrip()[:1] != b"<" else None
    if not isinstance(doc, Mapping):
        return None
    messages = _get(doc, "tppMessages")
    if messages is None:
        messages = _get(doc, "additionalErrors")
        messages = [doc, *(messages if isinstance(messages, list) else [])]
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, list):
        return None
    return _finish([_berlin_line(m) for m in messages if isinstance(m, Mapping)])
