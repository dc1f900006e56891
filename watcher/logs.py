"""structlog set-up: JSON lines when stderr is not a terminal (the journal), readable lines when it is.

Every value that is a configured secret is replaced before a line is rendered, wherever it appears.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "**redacted**"


class RedactSecrets:
    """A structlog processor that masks every occurrence of the given secret values."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Very short values would mask ordinary words; real credentials are longer.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._scrub(v) for v in value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        # Anything else (an exception, a URL object) is rendered as text: scrub that text.
        return self._scrub(repr(value) if isinstance(value, BaseException) else str(value))

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if not self._secrets:
            return event_dict
        for k, v in list(event_dict.items()):
            event_dict[k] = self._scrub(v)
        return event_dict


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog once, at start-up, for the whole process."""
    out = stream if stream is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    redact = RedactSecrets(secrets)
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, apscheduler, aiohttp) log through the standard library: same format, same
    # redaction, so the journal gets one kind of line.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # APScheduler logs every job run at INFO; the watchdog heartbeat would fill the journal.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
