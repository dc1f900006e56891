"""One bounded GET, with every way it can fail turned into a FetchOutcome and a message.

Shared by the sources so that timeouts, refused connections and oversized bodies are classified the
same way for every provider. Nothing here ever sees or prints request headers (they carry secrets).
"""

from __future__ import annotations

import asyncio
import io
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
from watcher.config import MastercardSendConfig, MyposPsd2Config
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
    """A call that produced no response to look at.

    `retryable`: the request may not have reached the server, or the connection broke: worth another
    attempt. A slow server (read or total timeout) is not retried: it would only double the wait.
    """

    outcome: FetchOutcome
    error: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The limits of one attempt, in seconds: the whole exchange, the connection set-up, and the longest
    silence while waiting for the headers or the next bytes of the body (a trickle resets it; the total
    still ends it)."""

    total_s: float
    connect_s: float
    read_s: float

    @classmethod
    def of(cls, config: MastercardSendConfig | MyposPsd2Config) -> Timeouts:
        """The configured timeouts of a source; the parts never exceed the total."""
        total = config.timeout.total_seconds()
        return cls(
            total_s=total,
            connect_s=min(config.connect_timeout.total_seconds(), total),
            read_s=min(config.read_timeout.total_seconds(), total),
        )


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
    reason_code: str | None = None,
    access_revoked: bool = False,
    retry_after_s: float | None = None,
    attempts: int = 1,
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
        reason_code=reason_code,
        access_revoked=access_revoked,
        retry_after_s=retry_after_s,
        attempts=attempts,
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
    # Gathered in one buffer that grows in place and becomes the body without a copy: a list of
    # chunks joined at the end would hold the body twice at that moment (74 MiB for a listing of
    # 100,000 accounts, instead of 37).
    body = io.BytesIO()
    size = 0
    while chunk := await response.content.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        body.write(chunk)
    return body.getvalue()


async def request(
    session: aiohttp.ClientSession,
    method: Literal["GET", "POST"],
    url: str,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    limit: int,
    ssl: SSLContext | None = None,
    form: Mapping[str, str] | None = None,
) -> Response | Failure:
    """One request to `url` exactly as given (already percent-encoded; it may be what was signed).

    `form` is sent as application/x-www-form-urlencoded. Never raises for a failed call.
    """
    # `connect` covers the TCP and TLS set-up (and a wait for a pooled connection), `sock_connect` the
    # TCP connect alone; `sock_read` restarts with every chunk received.
    client_timeout = aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect_s, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s
    )
    try:
        async with asyncio.timeout(timeouts.total_s):
            async with session.request(
                method,
                URL(url, encoded=True),
                headers=dict(headers),
                data=dict(form) if form is not None else None,
                ssl=ssl if ssl is not None else True,
                timeout=client_timeout,
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
    # aiohttp's own timeouts are TimeoutErrors too: the specific ones first.
    except aiohttp.ConnectionTimeoutError:
        return Failure("timeout", f"could not connect within {timeouts.connect_s:g}s", retryable=True)
    except aiohttp.SocketTimeoutError:
        return Failure("timeout", f"no data from the server for {timeouts.read_s:g}s")
    except TimeoutError:
        return Failure("timeout", f"no complete answer within {timeouts.total_s:g}s")
    except aiohttp.ClientPayloadError as exc:
        error = clean(f"the response body was cut short or malformed: {exc}")
        return Failure("bad_response", error, retryable=True)
    except (aiohttp.ClientError, OSError) as exc:
        return Failure("network_error", clean(f"{type(exc).__name__}: {exc}"), retryable=True)


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    limit: int,
    ssl: SSLContext | None = None,
) -> Response | Failure:
    """GET `url` exactly as given; see `request`."""
    return await request(session, "GET", url, headers=headers, timeouts=timeouts, limit=limit, ssl=ssl)
