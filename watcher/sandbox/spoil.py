"""The answers of the faults that spoil a response whatever the API: error statuses, broken bodies,
broken transports. The API modules render the faults that change what a body says (BODY_KINDS) and
apply the auth faults themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import web

from watcher.sandbox.faults import DEFAULT_SLOW_BODY_INTERVAL_S, Fault

# Larger than any limit of the client (1 MiB for one account, 32 MiB for a listing).
HUGE_BODY_BYTES = 40 * 1024 * 1024
_HUGE_CHUNK = 256 * 1024
_SLOW_PIECE = 8  # bytes per piece of a slow body

_MAINTENANCE_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
    b"<body><h1>Service temporarily unavailable</h1><p>Please try again later.</p></body></html>\n"
)
# The classic "billion laughs": a few hundred bytes that expand to gigabytes in a naive XML parser.
XML_ENTITY_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE account_balances [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<account_balances><account_balance><account_description>&lol9;</account_description></account_balance>
</account_balances>
"""

# An error answer in the API's own format, for a status.
ErrorFor = Callable[[int], web.Response]


async def spoiled_response(
    request: web.Request,
    fault: Fault,
    *,
    body: bytes,
    content_type: str,
    json_body: bytes,
    xml_body: bytes,
    error: ErrorFor,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """The answer a transport or status fault gives instead of `body` (of `content_type`).

    `json_body` / `xml_body` are the answers the request would have had in each format; malformed ones
    are cut in half. `headers` go on the streamed answers, whose headers leave before the handler
    returns (the correlation id, the echoed X-Request-ID). Raises ValueError for the kinds the caller
    handles (body, auth and delay kinds).
    """
    extra = dict(headers or {})
    kind = fault.kind
    if kind == "http_500":
        return error(500)
    if kind in ("http_503", "http_429"):
        response = error(503 if kind == "http_503" else 429)
        retry_after = fault.retry_after if fault.retry_after is not None or kind == "http_503" else "1"
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response
    if kind == "malformed_json":
        return web.Response(body=json_body[: len(json_body) // 2], content_type="application/json")
    if kind == "malformed_xml":
        return web.Response(body=xml_body[: len(xml_body) // 2], content_type="application/xml")
    if kind == "wrong_content_type":
        return web.Response(body=_MAINTENANCE_PAGE, content_type="text/html")
    if kind == "xml_entity_bomb":
        return web.Response(body=XML_ENTITY_BOMB, content_type="application/xml")
    if kind == "truncated_body":
        return await _truncated(request, body, {"Content-Type": content_type, **extra})
    if kind == "huge_body":
        return await _huge(request, {"Content-Type": content_type, **extra})
    if kind == "slow_body":
        interval = fault.delay_seconds or DEFAULT_SLOW_BODY_INTERVAL_S
        return await _slow(request, body, {"Content-Type": content_type, **extra}, interval)
    raise ValueError(f"fault {kind!r} does not replace the response")


async def _truncated(request: web.Request, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
    """Announce the whole body, send half, and drop the connection."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


async def _huge(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """A chunked body of HUGE_BODY_BYTES (the start of a JSON string, then spaces): the client must stop
    reading at its limit. Ends quietly when the client hangs up."""
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b" " * _HUGE_CHUNK
    try:
        await response.write(b'{"padding": "')
        for _ in range(HUGE_BODY_BYTES // _HUGE_CHUNK):
            await response.write(chunk)
        await response.write(b'"}')
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client gave up at its limit, as it should
    return response


async def _slow(
    request: web.Request, body: bytes, headers: dict[str, str], interval_s: float
) -> web.StreamResponse:
    """The right body, trickled a few bytes at a time: each piece arrives before any read timeout, so only
    the client's total timeout can end it."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    try:
        for start in range(0, len(body), _SLOW_PIECE):
            await response.write(body[start : start + _SLOW_PIECE])
            await asyncio.sleep(interval_s)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client gave up
    return response
