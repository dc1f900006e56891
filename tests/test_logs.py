"""Logging: JSON lines off a terminal, and configured secrets masked wherever they appear."""

from __future__ import annotations

import io
import json
import logging

import structlog

from watcher.logs import REDACTED, configure_logging

SECRETS = ["s3cr3t-token-value", "p12-password", "api-key-123"]


def test_secrets_are_masked_in_structlog_and_library_lines() -> None:
    """A secret in the message, in a field, nested in a structure, or in a library's log record never
    reaches the output; each line is one JSON object."""
    out = io.StringIO()
    configure_logging("info", "json", SECRETS, stream=out)
    log = structlog.get_logger("test")
    log.info("calling with s3cr3t-token-value", header="Bearer s3cr3t-token-value",
             nested={"list": ["p12-password", 1]})
    log.error("failed", error=RuntimeError("bad key api-key-123"))
    logging.getLogger("aiokafka").error("SASL auth failed for password p12-password")
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    assert lines[0]["header"] == f"Bearer {REDACTED}"
    assert lines[2]["logger"] == "aiokafka"
    assert lines[2]["level"] == "error"


def test_short_values_are_not_treated_as_secrets() -> None:
    """A secret of under four characters would mask ordinary words, so it is not used for masking."""
    out = io.StringIO()
    configure_logging("info", "json", ["ab"], stream=out)
    structlog.get_logger().info("about abba")
    assert json.loads(out.getvalue())["event"] == "about abba"
