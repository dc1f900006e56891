"""The Mastercard listing's body spooled to disk, end to end over HTTP on 127.0.0.1.

They guarantee that a listing over the spool's threshold is written to an unlinked file in the given
folder and gives exactly the result the same body gives in memory; that small bodies and the per-account
endpoint never touch the disk; that a spool that cannot be written is a clear failed call, not a crash;
and that the spool file is closed on every way out (over the limit, cut short, retried, timed out,
cancelled, refused by the parser), across many calls.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from watcher.config import MastercardSendConfig
from watcher.sources import body as body_module
from watcher.sources import build_source, transport
from watcher.sources.base import FetchResult
from watcher.sources.mastercard import LISTING, MastercardSendSource

SEED = Path(__file__).resolve().parent.parent / "watcher" / "sandbox" / "seed"
T0 = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
MiB = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def listing_json(count: int) -> bytes:
    """The documented listing's first account, `count` times, each with its own token."""
    first = json.loads((SEED / "mc_account_balances.json").read_bytes())["account-balances"][0]
    accounts = [{**first, "non_card_token": f"{first['non_card_token']}{i}"} for i in range(count)]
    return json.dumps({"account-balances": accounts}, indent=1).encode()


def listing_xml(count: int) -> bytes:
    """The documented XML listing's first account, `count` times, each with its own token."""
    body = (SEED / "mc_account_balances.xml").read_text()
    close = "</account_balance>"
    start, end = body.index("<account_balance>"), body.index(close) + len(close)
    accounts = "".join(body[start:end].replace("NXQ</non", f"NXQ{i}</non") for i in range(count))
    return (body[:start] + accounts + body[body.rindex(close) + len(close):]).encode()


# Over the spool's threshold; half of the JSON one is too (a body cut or stalled half-way is spooled).
COUNT = {"json": 8000, "xml": 4000}
LARGE = {fmt: (listing_json if fmt == "json" else listing_xml)(count) for fmt, count in COUNT.items()}
CONTENT_TYPE = {"json": "application/json", "xml": "application/xml"}


@pytest.fixture
async def base() -> AsyncIterator[tuple[str, list[Handler]]]:
    """A loopback server answering each request with the next handler of the list (the last one
    repeats); yields its base URL and that list."""
    handlers: list[Handler] = []

    async def dispatch(request: web.Request) -> web.StreamResponse:
        handler = handlers.pop(0) if len(handlers) > 1 else handlers[0]
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", handlers
    await runner.cleanup()




def config(
    base: str, fmt: str = "json", tokens: tuple[str, ...] = (), **changes: Any
) -> MastercardSendConfig:
    data: dict[str, Any] = {
        "type": "mastercard-send", "name": "mc-gbp", "base_url": f"{base}/send", "partner_id": "ptnr_1",
        "consumer_key": "ck", "signing_key_path": "unused.p12", "signing_key_password": "pw",
        "format": fmt, "non_card_tokens": list(tokens), "timeout": "20s",
        "backoff_base": "1ms", "backoff_max": "5ms",
    }
    return MastercardSendConfig.model_validate({**data, **changes})


def answer(body: bytes, fmt: str = "json", status: int = 200, chunked: bool = False) -> Handler:
    """The whole `body`, with a Content-Length, or (`chunked`) in 64 KiB chunks without one."""
    async def handle(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(status=status, body=body, headers={"Content-Type": CONTENT_TYPE[fmt]})
        response = web.StreamResponse(status=status, headers={"Content-Type": CONTENT_TYPE[fmt]})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for at in range(0, len(body), 65536):
            await response.write(body[at : at + 65536])
        await response.write_eof()
        return response
    return handle


def half_sent(body: bytes, *, drop: bool) -> Handler:
    """Announces all of `body`, sends half, then drops the connection (`drop`) or sends nothing more
    until the client gives up."""
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if drop:
            assert request.transport is not None
            request.transport.close()
        else:
            await asyncio.sleep(30)
        return response
    return handle


def spool_files(folder: Path) -> list[str]:
    """The open descriptors of this process that are files in `folder` (spool files: unlinked, yet
    still shown under the folder's path by /proc), or /dev/full (the full disk of a test)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        if target.startswith(f"{folder}/") or target == "/dev/full":
            found.append(target)
    return found


def same_result(a: FetchResult, b: FetchResult) -> bool:
    return replace(a, duration_s=0.0) == replace(b, duration_s=0.0)


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the spool files made from now on: [count]."""
    opened = [0]
    real = body_module.Spool.open

    def counted(self: body_module.Spool) -> body_module.SpoolWriter:
        opened[0] += 1
        return real(self)

    monkeypatch.setattr(body_module.Spool, "open", counted)
    return opened


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_large_listing_is_spooled_and_reads_as_in_memory(
    base: tuple[str, list[Handler]], session: aiohttp.ClientSession, key: RSAPrivateKey,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, chunked: bool,
) -> None:
    """A listing over the threshold (announced by Content-Length or not) goes to a spool file in the
    given folder, which is open while the body is parsed and closed after; the result is exactly the
    one of the same source keeping the body in memory; nothing is left in the folder."""
    url, handlers = base
    handlers.append(answer(LARGE[fmt], fmt, chunked=chunked))
    assert len(LARGE[fmt]) > body_module.SPOOL_THRESHOLD_BYTES
    in_memory = await MastercardSendSource(config(url, fmt), session, key, clock=lambda: T0).fetch(LISTING)
    assert in_memory.outcome == "ok"
    assert len(in_memory.observations) == COUNT[fmt]

    opened = count_opens(monkeypatch)
    source = MastercardSendSource(config(url, fmt), session, key, clock=lambda: T0, spool_dir=tmp_path)
    open_while_parsing: list[list[str]] = []
    parse = source._parse

    def watched(body: Any, **kw: Any) -> Any:
        assert isinstance(body, body_module.SpooledBody)
        open_while_parsing.append(spool_files(tmp_path))
        return parse(body, **kw)

    monkeypatch.setattr(source, "_parse", watched)
    spooled = await source.fetch(LISTING)
    assert same_result(spooled, in_memory)
    assert opened == [1]
    assert len(open_while_parsing) == 1
    assert len(open_while_parsing[0]) == 1
    assert spool_files(tmp_path) == []
    assert os.listdir(tmp_path) == []


async def test_small_bodies_and_accounts_never_touch_the_disk(
    base: tuple[str, list[Handler]], session: aiohttp.ClientSession, key: RSAPrivateKey,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a spool folder set, a listing under the threshold and the per-account endpoint (even with
    a body over the threshold) are read into memory: no spool file is ever made."""
    url, handlers = base
    opened = count_opens(monkeypatch)
    small = listing_json(3)
    handlers.append(answer(small))
    source = build_source(config(url), session, key, clock=lambda: T0, spool_dir=tmp_path)
    assert (await source.fetch(LISTING)).outcome == "ok"

    token = json.loads(small)["account-balances"][0]["non_card_token"]
    one = json.dumps({"account_balances": {"account_balance": json.loads(small)["account-balances"][0]}})
    padded = one.encode() + b" " * (2 * MiB)  # an account's answer over the threshold: still in memory
    handlers[:] = [answer(padded)]
    per_account = MastercardSendSource(
        config(url, tokens=(token,)), session, key, clock=lambda: T0, spool_dir=tmp_path
    )
    result = await per_account.fetch(token)
    assert result.outcome == "bad_response"  # over the per-account limit of 1 MiB, as without a spool
    assert result.error == transport.too_large(MiB)
    handlers[:] = [answer(one.encode())]
    assert (await per_account.fetch(token)).outcome == "ok"
    assert opened == [0]


async def test_a_spool_that_cannot_be_written_is_a_failed_call(
    base: tuple[str, list[Handler]], session: aiohttp.ClientSession, key: RSAPrivateKey, tmp_path: Path,
) -> None:
    """A spool folder that does not exist (or is full, or not writable): the call fails as a
    bad_response naming the folder, is not retried, and raises nothing."""
    url, handlers = base
    handlers.append(answer(LARGE["json"], chunked=True))
    missing = tmp_path / "gone"
    source = MastercardSendSource(config(url), session, key, clock=lambda: T0, spool_dir=missing)
    result = await source.fetch(LISTING)
    assert result.outcome == "bad_response"
    assert result.error is not None
    assert result.error.startswith(f"could not spool the response body to {missing}: No such file")
    assert result.attempts == 1
    assert result.observations == ()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
# A spool file closed only by the collector (its owner forgot it) warns; here that fails the test.
@pytest.mark.filterwarnings("error::ResourceWarning")
async def test_no_spool_file_is_left_open_across_calls_and_failures(
    base: tuple[str, list[Handler]], session: aiohttp.ClientSession, key: RSAPrivateKey,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many calls, each of them spooled, ending every way a call can end: read and parsed, over the
    listing limit, cut short and retried, a 503 retried then answered, timed out mid-body, cancelled
    mid-body, refused by the parser, an HTTP error with a large body, a full disk. Afterwards no
    descriptor of this process is a spool file (while one was parsed, one was), and none was left
    for the garbage collector to close."""
    url, handlers = base
    large = LARGE["json"]
    opened = count_opens(monkeypatch)
    spooling = MastercardSendSource(
        config(url, max_listing_bytes=4 * MiB, read_timeout="300ms"), session, key, clock=lambda: T0,
        spool_dir=tmp_path,
    )
    parse = spooling._parse
    seen_open: list[int] = []

    def watched(body: Any, **kw: Any) -> Any:
        seen_open.append(len(spool_files(tmp_path)))
        return parse(body, **kw)

    monkeypatch.setattr(spooling, "_parse", watched)

    async def cancelled() -> None:
        handlers[:] = [half_sent(large, drop=False)]
        task = asyncio.create_task(spooling.fetch(LISTING))
        while opened[0] == before:  # the body is being spooled  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    outcomes: list[tuple[str, str]] = []
    for _ in range(3):
        for handlers_now in (
            [answer(large, chunked=True)],
            [answer(large * 2, chunked=True)],  # over max_listing_bytes (4 MiB) after being spooled
            [half_sent(large, drop=True)],
            [answer(large, status=503), answer(large)],
            [half_sent(large, drop=False)],
            [answer(large[:-3] + b"}}}")],  # no longer valid JSON: read back whole, refused
            [answer(b'{"Errors": {"Error": [' + b" " * (2 * MiB) + b"]}}", status=400)],
        ):
            handlers[:] = handlers_now
            result = await spooling.fetch(LISTING)
            outcomes.append((result.outcome, (result.error or "")[:30]))
            assert spool_files(tmp_path) == [], outcomes[-1]
        before = opened[0]
        await cancelled()
        assert spool_files(tmp_path) == []
        with monkeypatch.context() as full:
            full.setattr(body_module.tempfile, "TemporaryFile", lambda dir: open("/dev/full", "w+b"))  # noqa: SIM115
            handlers[:] = [answer(large)]
            result = await spooling.fetch(LISTING)
            assert result.outcome == "bad_response"
            assert result.error == f"could not spool the response body to {tmp_path}: No space left on device"
        assert spool_files(tmp_path) == []
    assert [o for o, _ in outcomes[:7]] == [
        "ok", "bad_response", "bad_response", "ok", "timeout", "bad_response", "http_error"
    ], outcomes[:7]
    assert opened[0] >= 3 * 10  # every call above spooled (the retried ones once per attempt)
    assert seen_open
    assert all(n == 1 for n in seen_open)
    assert os.listdir(tmp_path) == []
