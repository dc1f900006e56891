"""OAuth1 signatures computed by child processes (`[signing] processes`): RSA off the event loop and off
its interpreter, so that the loop goes on with answers while another core signs.

Threads (`[signing] threads`) share the loop's GIL: a signing thread needs it before and after each
signature, and with the loop busy it waits up to the switch interval (5 ms) each time, so one thread
signed fewer requests a second than the loop signing alone (bench/README.md). A child process has its
own interpreter. The loop pays for a line written to it and a line read back instead of the signature.

Each child is `python -m watcher.sign_worker` (its protocol is described there), fed over a pipe. The
keys reach it over that pipe too: it never reads a key file or a password. A child that dies fails the
requests it held (their polls fail and are retried by the next round) and is started again by the next
request; if that start fails, the requests until the next try (1 s, doubling to a minute) are refused at
once, saying why, or go to the children still running. A child that holds requests and answers none for
10 s is killed as stuck, and replaced the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import sys
import time
from collections.abc import Sequence
from typing import cast

import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from watcher.signers import SigningError

__all__ = ["SigningError", "SigningProcesses"]

log = structlog.get_logger("watcher.signing")

WORKER = (sys.executable, "-m", "watcher.sign_worker")
# How long a child may take to start and answer its first request (it imports cryptography).
START_TIMEOUT_S = 30.0
# How long a closing child may take to answer what it holds before it is killed.
CLOSE_TIMEOUT_S = 5.0
# After failed starts, the wait before the next: 1 s, doubling up to this.
RESTART_BACKOFF_MAX_S = 60.0
# A child holding requests that has answered none for this long is stuck: it is killed (its requests
# fail) and replaced. A signature takes about a millisecond; a child never holds more than the sources'
# concurrency (a second's work at most).
STALL_TIMEOUT_S = 10.0
WATCH_PERIOD_S = 2.0


class _Child(asyncio.SubprocessProtocol):
    """One signing process: the requests it holds, answered in the order sent."""

    def __init__(self) -> None:
        self.transport: asyncio.SubprocessTransport | None = None
        self.pending: dict[int, asyncio.Future[str]] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # When it last answered, or was handed a request with none in hand (time.monotonic()).
        self.last_progress = time.monotonic()
        self._partial = b""

    @property
    def alive(self) -> bool:
        return self.transport is not None and not self.done.done()

    def send(self, line: str) -> None:
        assert self.transport is not None
        # cast, not isinstance: uvloop's transports have the interface without the asyncio base classes.
        stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))
        stdin.write(line.encode())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        if lines:
            self.last_progress = time.monotonic()
        for line in lines:
            request_id, _, answer = line.decode().partition("\t")
            future = self.pending.pop(int(request_id), None)
            if future is not None and not future.done():  # a caller cancelled meanwhile
                future.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        # Called once the process has exited and its pipes are closed: every answer it wrote is in.
        assert self.transport is not None
        code = self.transport.get_returncode()
        error = SigningError(f"signing process {self.transport.get_pid()} exited with code {code}")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        if not self.done.done():
            self.done.set_result(None)


class SigningProcesses:
    """A few signing processes, shared by every Mastercard source; the composition root owns them.

    Each request goes to the child holding the fewest. `start` starts them all and checks that each
    answers; `close` lets them answer what they hold, then stops them.
    """

    def __init__(self, count: int, *, command: Sequence[str] | None = None) -> None:
        """`command` starts one child; by default `WORKER`, this interpreter running sign_worker."""
        if count < 1:
            raise ValueError("SigningProcesses needs at least one process")
        self._command = tuple(WORKER if command is None else command)
        self._children: list[_Child | None] = [None] * count
        # Every key sent so far, by the identity of its object (sources hold theirs for their lifetime):
        # its id on the wire, and the line that teaches it to a child started later.
        self._keys: dict[int, tuple[RSAPrivateKey, str, str]] = {}
        self._request_ids = itertools.count(1)
        self._restart = asyncio.Lock()
        # After a child fails to start, none is started again before this (time.monotonic()), so that a
        # broken installation costs each call a quick refusal, not a start (up to START_TIMEOUT_S) each.
        self._next_start = 0.0
        self._failed_starts = 0
        self._start_failure = ""
        self._watch: asyncio.TimerHandle | None = None
        self._closed = False

    async def start(self) -> None:
        """Start every child and wait for each to answer; raises SigningError if one cannot. Then watch
        them for a stall (see STALL_TIMEOUT_S) until closed."""
        for slot in range(len(self._children)):
            self._children[slot] = await self._spawn()
        self._watch = asyncio.get_running_loop().call_later(WATCH_PERIOD_S, self._kill_stalled)

    async def authorization_header(
        self, url: str, method: str, consumer_key: str, key: RSAPrivateKey
    ) -> str:
        """`watcher.signing.authorization_header`, computed by a child. Raises SigningError when the
        child cannot sign it or dies first, ValueError for a field that cannot travel on one line."""
        fields = (method, consumer_key, url)
        if any("\t" in field or "\n" in field or "\r" in field for field in fields):
            raise ValueError("a signed request's method, consumer key and URL hold no tab or line break")
        child = await self._least_loaded()
        key_id = self._key_id(key)
        request_id = next(self._request_ids)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if not child.pending:
            child.last_progress = time.monotonic()
        child.pending[request_id] = future
        child.send(f"S\t{request_id}\t{key_id}\t{method}\t{consumer_key}\t{url}\n")
        answer = await future
        if answer.startswith("!"):
            raise SigningError(f"the signing process could not sign: {answer[1:]}")
        return answer

    async def close(self) -> None:
        """Let each child answer what it holds (its stdin closed, it exits), then stop it."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        children = [child for child in self._children if child is not None and child.transport is not None]
        for child in children:
            assert child.transport is not None
            stdin = child.transport.get_pipe_transport(0)
            if stdin is not None:
                stdin.close()
        for child in children:
            assert child.transport is not None
            try:
                await asyncio.wait_for(asyncio.shield(child.done), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("signing process did not stop; killed", pid=child.transport.get_pid())
            await _killed(child)

    def _kill_stalled(self) -> None:
        """Kill each child that holds requests and has answered none for STALL_TIMEOUT_S; its requests
        fail as it exits, and the next request starts another. Runs every WATCH_PERIOD_S."""
        now = time.monotonic()
        for child in self._children:
            if child is None or not child.alive or not child.pending:
                continue
            if now - child.last_progress > STALL_TIMEOUT_S:
                assert child.transport is not None
                log.error("signing process stopped answering; killed", pid=child.transport.get_pid(),
                          requests=len(child.pending), silent_s=round(now - child.last_progress, 1))
                with contextlib.suppress(ProcessLookupError):
                    child.transport.kill()
        self._watch = asyncio.get_running_loop().call_later(WATCH_PERIOD_S, self._kill_stalled)

    async def _least_loaded(self) -> _Child:
        if self._closed:
            raise SigningError("the signing processes are closed")
        alive = [child for child in self._children if child is not None and child.alive]
        # A start under way is waited for only by callers with no child to go to.
        if len(alive) < len(self._children) and not (alive and self._restart.locked()):
            await self._replace_dead()
            alive = [child for child in self._children if child is not None and child.alive]
        if not alive:
            raise SigningError(self._start_failure or "no signing process is running")
        return min(alive, key=lambda child: len(child.pending))

    async def _replace_dead(self) -> None:
        """Start a child in each dead one's place, unless a start failed moments ago (see _next_start)."""
        async with self._restart:  # one start at a time; the callers waiting here find it done
            for slot, child in enumerate(self._children):
                if (child is not None and child.alive) or time.monotonic() < self._next_start:
                    continue
                if child is not None and child.transport is not None:
                    child.transport.close()
                    log.warning("signing process exited; starting another", pid=child.transport.get_pid(),
                                code=child.transport.get_returncode())
                self._children[slot] = None
                try:
                    self._children[slot] = await self._spawn()
                except SigningError as exc:
                    self._failed_starts += 1
                    wait_s = min(RESTART_BACKOFF_MAX_S, 2.0 ** (self._failed_starts - 1))
                    self._next_start = time.monotonic() + wait_s
                    self._start_failure = f"{exc}; the next start is tried in {wait_s:.0f} s"
                    log.error("signing process could not start", error=str(exc), retry_in_s=wait_s)
                    return
                self._failed_starts = 0
                self._start_failure = ""

    async def _spawn(self) -> _Child:
        """A new child, taught every key so far, that has answered a first request."""
        loop = asyncio.get_running_loop()
        _transport, child = await loop.subprocess_exec(
            _Child, *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None
        )
        for _key, _key_id, line in self._keys.values():
            child.send(line)
        # A request naming no key: its answer ("no signing key") proves the child reads and answers.
        probe: asyncio.Future[str] = loop.create_future()
        child.pending[0] = probe
        child.send("S\t0\t-\tGET\t-\thttp://localhost/\n")
        try:
            await asyncio.wait_for(probe, START_TIMEOUT_S)
        except (TimeoutError, SigningError) as exc:
            await _killed(child)
            reason = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise SigningError(f"a signing process could not start: {reason}") from None
        return child

    def _key_id(self, key: RSAPrivateKey) -> str:
        known = self._keys.get(id(key))
        if known is not None:
            return known[1]
        key_id = str(len(self._keys) + 1)
        der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        line = f"K\t{key_id}\t{base64.b64encode(der).decode()}\n"
        self._keys[id(key)] = (key, key_id, line)
        for child in self._children:
            if child is not None and child.alive:
                child.send(line)
        return key_id


async def _killed(child: _Child) -> None:
    """`child` stopped (killed if it still runs) and its transport closed."""
    assert child.transport is not None
    if child.transport.get_returncode() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            child.transport.kill()
    await child.done
    child.transport.close()
