"""One bounded GET, with every way it can fail turned into a FetchOutcome and a message.

Shared by the sources so that timeouts, refused connections and oversized bodies are classified the
same way for every provider. Nothing here ever sees or prints request headers (they carry secrets).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Literal

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from rules.types import Observation
from watcher.sources.base import FetchOutcome, FetchResult

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_CHUNK = 64 * 1024


def utc_now() -> datetime:
    """The default clock of the sources: observation times are aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Response:
    """A response that arrived whole. `body` is None when it was larger than the limit."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content_type: str
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Failure:
    """A call that produced no response to look at."""

    outcome: FetchOutcome
    error: str


def finished(
    source: str,
    target: str,
    started: float,
    outcome: FetchOutcome,
    *,
    correlation_id: str = "",
    http_status: int | None = None,
    error: str | None = None,
    observations: tuple[Observation, ...] = (),
    rejected: tuple[str, ...] = (),
) -> FetchResult:
    """The FetchResult of a call that began at `started` (time.monotonic)."""
    return FetchResult(
        source=source,
        target=target,
        outcome=outcome,
        correlation_id=correlation_id,
        observations=observations,
        rejected=rejected,
        http_status=http_status,
        error=error,
        duration_s=time.monotonic() - started,
    )


def clean(text: str, limit: int = 300) -> str:
    """Text from the other side, made safe for one log line: no control characters, bounded length."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


def too_large(limit: int) -> str:
    """The error text for a body over the limit."""
    return f"the response body is larger than the limit of {limit // 1024} KiB"


def media_type_is(content_type: str, wanted: Literal["json", "xml"]) -> bool:
    """application/json or any +json type; for XML also text/xml and +xml."""
    media = content_type.split(";", 1)[0].strip().lower()
    if wanted == "json":
        return media == "application/json" or media.endswith("+json")
    return media in ("application/xml", "text/xml") or media.endswith("+xml")


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed `limit` (after decompression)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    limit: int,
    ssl: SSLContext | None = None,
) -> Response | Failure:
    """GET `url` exactly as given (already percent-encoded; it may be what was signed).

    The timeout covers connecting, the headers and the whole body. Never raises for a failed call.
    """
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(
                URL(url, encoded=True),
                headers=dict(headers),
                ssl=ssl if ssl is not None else True,
                allow_redirects=False,  # a redirect would carry signed headers to a URL never signed
                raise_for_status=False,
            ) as response:
                body = await _read(response, limit)
                return Response(
                    status=response.status,
                    reason=response.reason or "",
                    headers=response.headers,
                    content_type=response.headers.get("Content-Type", ""),
                    body=body,
                )
    except TimeoutError:  # also aiohttp's own ServerTimeoutError, which is one
        return Failure("timeout", f"no complete answer within {timeout_s:g}s")
    except aiohttp.ClientPayloadError as exc:
        return Failure("bad_response", clean(f"the response body was cut short or malformed: {exc}"))
    except (aiohttp.ClientError, OSError) as exc:
        return Failure("network_error", clean(f"{type(exc).__name__}: {exc}"))
