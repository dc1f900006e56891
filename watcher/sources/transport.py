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

from rules.types import BalanceKey, Observation
from watcher.config import MastercardSendConfig, MyposPsd2Config
from watcher.sources.base import FetchOutcome, FetchResult
from watcher.sources.body import Body, Spool, SpooledBody, SpoolError, SpoolWriter

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_CHUNK = 64 * 1024


def utc_now() -> datetime:
    """The default clock of the sources: observation times are aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Response:
    """A response that arrived whole. `body` is None when it was larger than the limit, or spooled.

    `spooled`: the body on disk, when the call asked for spooling and the body was over the spool's
    threshold (`body` is then None). Whoever holds the Response last closes it (`close`).
    """

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content_type: str
    body: bytes | None
    spooled: SpooledBody | None = None

    @property
    def content(self) -> Body | None:
        """The body wherever it is: in memory, spooled, or None when it was over the limit."""
        return self.spooled if self.spooled is not None else self.body

    def close(self) -> None:
        """Give back the spool file, if there is one."""
        if self.spooled is not None:
            self.spooled.close()


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
    accounts: Mapping[str, BalanceKey] | None = None,
    unchanged: int = 0,
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
        accounts=accounts,
        unchanged=unchanged,
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


async def _read(response: aiohttp.ClientResponse, limit: int, spool: Spool | None) -> Body | None:
    """The whole body, or None as soon as it is known to exceed `limit` (after decompression).

    With a `spool`, a body over its threshold (by Content-Length, or once that much has arrived) goes
    to a spool file as it arrives and comes back as a SpooledBody; a smaller one stays in memory. The
    spool file is closed on every way out but that one (over the limit, a body cut short, a timeout).
    """
    length = response.content_length
    if length is not None and length > limit:
        return None
    # Gathered in one buffer that grows in place and becomes the body without a copy: a list of
    # chunks joined at the end would hold the body twice at that moment (74 MiB for a listing of
    # 100,000 accounts, instead of 37).
    body = io.BytesIO()
    size = 0
    writer: SpoolWriter | None = None
    try:
        if spool is not None and length is not None and length > spool.threshold:
            writer = spool.open()
        while chunk := await response.content.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            if writer is not None:
                writer.write(chunk)
                continue
            body.write(chunk)
            if spool is not None and size > spool.threshold:
                writer = spool.open()
                with body.getbuffer() as gathered:
                    writer.write(gathered)
                body = io.BytesIO()
        if writer is None:
            return body.getvalue()
        spooled, writer = writer.finish(), None
        return spooled
    finally:
        if writer is not None:
            writer.close()


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
    spool: Spool | None = None,
) -> Response | Failure:
    """One request to `url` exactly as given (already percent-encoded; it may be what was signed).

    `form` is sent as application/x-www-form-urlencoded. `spool`: a large body goes to disk (see
    _read); the caller closes the Response. Never raises for a failed call.
    """
    # `connect` covers the TCP and TLS set-up (and a wait for a pooled connection), `sock_connect` the
    # TCP connect alone; `sock_read` restarts with every chunk received.
    client_timeout = aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect_s, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s
    )
    body: Body | None = None
    handed_over = False
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
                body = await _read(response, limit, spool)
                got = Response(
                    status=response.status,
                    reason=response.reason or "",
                    headers=response.headers,
                    content_type=response.headers.get("Content-Type", ""),
                    body=body if isinstance(body, bytes) else None,
                    spooled=body if isinstance(body, SpooledBody) else None,
                )
        handed_over = True
        return got
    except SpoolError as exc:  # the disk, not the server: not retried
        return Failure("bad_response", str(exc))
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
    finally:
        # A spooled body whose response is not handed over (the exchange's end timed out or was
        # cancelled after the body was read) is closed here.
        if not handed_over and isinstance(body, SpooledBody):
            body.close()


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    limit: int,
    ssl: SSLContext | None = None,
    spool: Spool | None = None,
) -> Response | Failure:
    """GET `url` exactly as given; see `request`."""
    return await request(
        session, "GET", url, headers=headers, timeouts=timeouts, limit=limit, ssl=ssl, spool=spool
    )
