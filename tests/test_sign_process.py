"""Signing processes (`[signing] processes`): real child processes sign what the daemon sends, with the
key the request names; a failure fails only the requests it touches, a dead child is replaced, and the
children stop only when the daemon closes them."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from oauth_headers import oauth_params, verify_oauth

from watcher import sign_process
from watcher.sign_process import SigningError, SigningProcesses
from watcher.sign_worker import serve
from watcher.signing import authorization_header


@pytest.fixture(scope="module")
def other_key() -> RSAPrivateKey:
    """A second signing key, for a second source."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def processes() -> AsyncIterator[SigningProcesses]:
    """Two started signing processes, closed after the test."""
    signer = SigningProcesses(2)
    await signer.start()
    yield signer
    await signer.close()


def pids(signer: SigningProcesses) -> list[int]:
    pid_list = []
    for child in signer._children:
        assert child is not None
        assert child.transport is not None
        pid_list.append(child.transport.get_pid())
    return pid_list


async def test_each_header_verifies_for_its_url_with_its_key(
    processes: SigningProcesses, key: RSAPrivateKey, other_key: RSAPrivateKey
) -> None:
    """Many requests at once over two processes and two keys: each header is signed with the key its
    request named, for exactly its URL, with a nonce of its own; both processes take a share."""
    base = "http://127.0.0.1:8080/send/v1/partners/p/non-card-tokens"
    urls = [f"{base}/t:{i}/account-balance" for i in range(60)]
    keys = [key if i % 3 else other_key for i in range(60)]
    requests = [asyncio.ensure_future(processes.authorization_header(url, "GET", "ck!a", k))
                for url, k in zip(urls, keys, strict=True)]
    await asyncio.sleep(0)  # every request sent
    assert all(child is not None and len(child.pending) == 30 for child in processes._children)
    headers = await asyncio.gather(*requests)
    for url, k, header in zip(urls, keys, headers, strict=True):
        verify_oauth(header, "GET", url, k.public_key())
        assert oauth_params(header)["oauth_consumer_key"] == "ck!a"
    assert len({oauth_params(header)["oauth_nonce"] for header in headers}) == 60
    assert all(child is not None and child.pending == {} for child in processes._children)


async def test_a_header_is_the_one_made_in_process(processes: SigningProcesses, key: RSAPrivateKey) -> None:
    """What a process makes has the parameters, order and form of `authorization_header` made here."""
    url = "http://127.0.0.1:8080/send/v1/partners/p/account-balances"
    header = await processes.authorization_header(url, "GET", "ck", key)
    params = oauth_params(header)
    local = authorization_header(url, "GET", "ck", key, nonce=params["oauth_nonce"],
                                 timestamp=int(params["oauth_timestamp"]))
    assert header == local  # PKCS#1 v1.5 signatures are deterministic


async def test_a_request_that_cannot_be_signed_fails_alone(
    processes: SigningProcesses, key: RSAPrivateKey
) -> None:
    """A URL the signer cannot parse fails its own request, naming why; the processes go on signing."""
    before = pids(processes)
    with pytest.raises(SigningError, match="could not sign: ValueError: Invalid IPv6 URL"):
        await processes.authorization_header("http://[::1/x", "GET", "ck", key)
    url = "http://127.0.0.1:8080/ok"
    verify_oauth(await processes.authorization_header(url, "GET", "ck", key), "GET", url, key.public_key())
    assert pids(processes) == before


@pytest.mark.parametrize("field", ["method", "consumer_key", "url"])
async def test_a_field_with_a_line_break_or_tab_is_refused(
    processes: SigningProcesses, key: RSAPrivateKey, field: str
) -> None:
    """A method, consumer key or URL holding a tab or line break cannot be sent: a ValueError, before
    anything reaches a process."""
    values = {"method": "GET", "consumer_key": "ck", "url": "http://127.0.0.1/x"}
    for bad in ("\t", "\n", "\r"):
        args = {**values, field: values[field] + bad + "y"}
        with pytest.raises(ValueError, match="no tab or line break"):
            await processes.authorization_header(args["url"], args["method"], args["consumer_key"], key)
    assert all(child is not None and child.pending == {} for child in processes._children)


async def test_a_dead_process_fails_what_it_held_and_is_replaced(key: RSAPrivateKey) -> None:
    """A process killed with requests in hand fails those, naming its exit; the others were answered.
    The next request starts a new process, which knows the keys sent before it started."""
    signer = SigningProcesses(1)
    await signer.start()
    try:
        (old_pid,) = pids(signer)
        url = "http://127.0.0.1:8080/x"
        requests = [asyncio.ensure_future(signer.authorization_header(url, "GET", "ck", key))
                    for _ in range(400)]
        await asyncio.wait(requests, return_when=asyncio.FIRST_COMPLETED)
        os.kill(old_pid, signal.SIGKILL)
        results = await asyncio.gather(*requests, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        answered = [r for r in results if isinstance(r, str)]
        assert failed
        assert answered
        assert all(isinstance(r, SigningError) for r in failed)
        assert f"signing process {old_pid} exited with code -9" in str(failed[0])
        for header in answered:
            verify_oauth(header, "GET", url, key.public_key())
        header = await signer.authorization_header(url, "GET", "ck", key)
        verify_oauth(header, "GET", url, key.public_key())
        assert pids(signer) != [old_pid]
    finally:
        await signer.close()


async def test_sigterm_and_sigint_leave_a_process_signing(
    processes: SigningProcesses, key: RSAPrivateKey
) -> None:
    """systemd and a terminal signal every process of the service; the children go on until the daemon,
    after its last poll, closes them."""
    before = pids(processes)
    for pid in before:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
    await asyncio.sleep(0.2)
    url = "http://127.0.0.1:8080/x"
    headers = await asyncio.gather(*(processes.authorization_header(url, "GET", "ck", key) for _ in range(4)))
    for header in headers:
        verify_oauth(header, "GET", url, key.public_key())
    assert pids(processes) == before


async def test_close_answers_what_was_sent_then_refuses(key: RSAPrivateKey) -> None:
    """Closing lets each process answer every request already sent, then stops it (exit 0); a request
    after that is refused."""
    signer = SigningProcesses(2)
    await signer.start()
    url = "http://127.0.0.1:8080/x"
    requests = [asyncio.ensure_future(signer.authorization_header(url, "GET", "ck", key)) for _ in range(40)]
    await asyncio.sleep(0)  # every request sent
    await signer.close()
    for header in await asyncio.gather(*requests):
        verify_oauth(header, "GET", url, key.public_key())
    for child in signer._children:
        assert child is not None
        assert child.transport is not None
        assert child.transport.get_returncode() == 0
    with pytest.raises(SigningError, match="closed"):
        await signer.authorization_header(url, "GET", "ck", key)


async def test_a_process_that_cannot_start_is_reported() -> None:
    """A child that exits at once (a broken installation) makes `start` fail, naming the exit code."""
    signer = SigningProcesses(1, command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(SigningError, match=r"could not start: signing process \d+ exited with code 3"):
        await signer.start()
    await signer.close()


async def test_after_a_failed_start_calls_are_refused_at_once_until_the_next_try(
    tmp_path: Path, key: RSAPrivateKey
) -> None:
    """A child that cannot start is tried once for many concurrent calls; until the next try (1 s, then
    2 s, ...) calls are refused at once, saying why and when; then a start is tried again."""
    starts = tmp_path / "starts"
    command = [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(6)"]
    signer = SigningProcesses(1, command=command)
    url = "http://127.0.0.1:8080/x"
    results = await asyncio.gather(*(signer.authorization_header(url, "GET", "ck", key) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, SigningError) for r in results)
    assert starts.read_text() == "x"
    with pytest.raises(SigningError, match=r"exited with code 6; the next start is tried in 1 s"):
        await signer.authorization_header(url, "GET", "ck", key)
    assert starts.read_text() == "x"
    signer._next_start = 0.0  # the second elapsed
    with pytest.raises(SigningError, match="the next start is tried in 2 s"):
        await signer.authorization_header(url, "GET", "ck", key)
    assert starts.read_text() == "xx"
    await signer.close()


async def first_killed_then_started_by(signer: SigningProcesses, program: str) -> int:
    """Kill the first of `signer`'s children, make its replacements run `program`; the second's pid."""
    first, second = pids(signer)
    signer._command = (sys.executable, "-c", program)
    os.kill(first, signal.SIGKILL)
    child = signer._children[0]
    assert child is not None
    await child.done
    return second


async def test_a_failed_restart_leaves_the_other_processes_signing(key: RSAPrivateKey) -> None:
    """With one of two children dead and its replacement unable to start, requests go on to the other."""
    signer = SigningProcesses(2)
    await signer.start()
    try:
        second = await first_killed_then_started_by(signer, "raise SystemExit(7)")
        url = "http://127.0.0.1:8080/x"
        for _ in range(3):
            header = await signer.authorization_header(url, "GET", "ck", key)
            verify_oauth(header, "GET", url, key.public_key())
        assert signer._children[0] is None
        survivor = signer._children[1]
        assert survivor is not None
        assert survivor.transport is not None
        assert survivor.transport.get_pid() == second
    finally:
        await signer.close()


async def test_callers_with_a_running_process_do_not_wait_for_a_start(
    monkeypatch: pytest.MonkeyPatch, key: RSAPrivateKey
) -> None:
    """While a dead child's replacement is starting (here: hanging until its start times out), requests
    go to the child still running and are answered before that start ends; the caller that began the
    start is then served by the running child too."""
    monkeypatch.setattr(sign_process, "START_TIMEOUT_S", 3.0)
    signer = SigningProcesses(2)
    await signer.start()
    try:
        await first_killed_then_started_by(signer, "import time; time.sleep(60)")
        url = "http://127.0.0.1:8080/x"
        starting = asyncio.ensure_future(signer.authorization_header(url, "GET", "ck", key))
        await asyncio.sleep(0)  # it takes the start on
        assert signer._restart.locked()
        meanwhile = asyncio.ensure_future(signer.authorization_header(url, "GET", "ck", key))
        done, _ = await asyncio.wait({starting, meanwhile}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {meanwhile}
        verify_oauth(meanwhile.result(), "GET", url, key.public_key())
        verify_oauth(await starting, "GET", url, key.public_key())
    finally:
        await signer.close()


# Answers its first request (the start's probe), then reads on and answers nothing: a stuck child.
STUCK_WORKER = """
import sys, time
request_id = sys.stdin.readline().split("\\t")[1]
sys.stdout.write(request_id + "\\t!ready\\n")
sys.stdout.flush()
time.sleep(60)
"""


async def test_a_stuck_process_is_killed_and_replaced(
    monkeypatch: pytest.MonkeyPatch, key: RSAPrivateKey
) -> None:
    """A child that holds a request and answers nothing for STALL_TIMEOUT_S is killed: the request fails,
    naming its exit, and the next request is signed by a new child."""
    monkeypatch.setattr(sign_process, "STALL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(sign_process, "WATCH_PERIOD_S", 0.1)
    signer = SigningProcesses(1, command=[sys.executable, "-c", STUCK_WORKER])
    await signer.start()
    try:
        (stuck,) = pids(signer)
        url = "http://127.0.0.1:8080/x"
        with pytest.raises(SigningError, match=f"signing process {stuck} exited with code -9"):
            await signer.authorization_header(url, "GET", "ck", key)
        signer._command = sign_process.WORKER
        verify_oauth(await signer.authorization_header(url, "GET", "ck", key), "GET", url, key.public_key())
        assert pids(signer) != [stuck]
    finally:
        await signer.close()


async def test_a_process_that_does_not_answer_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that never answers its first request fails `start` in time, and is not left running."""
    monkeypatch.setattr(sign_process, "START_TIMEOUT_S", 0.5)
    signer = SigningProcesses(1, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(SigningError, match="did not answer in time"):
        await signer.start()
    assert signer._children == [None]
    await signer.close()


def test_the_worker_answers_in_order_and_names_what_it_cannot_sign(key: RSAPrivateKey) -> None:
    """The worker's protocol: a key line, then requests answered in order by their ids; a request naming
    an unknown key is answered with an error, not by stopping."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    der = base64.b64encode(key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())).decode()
    url = "http://127.0.0.1:8080/x"
    lines_in = [f"K\t7\t{der}", f"S\t1\t7\tGET\tck\t{url}", f"S\t2\t8\tGET\tck\t{url}",
                f"S\t3\t7\tGET\tck\t{url}"]
    requests = io.BytesIO("".join(line + "\n" for line in lines_in).encode())
    answers = io.BytesIO()
    serve(requests, answers)
    lines = answers.getvalue().decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3"]
    assert lines[1] == "2\t!no signing key 8"
    verify_oauth(lines[0].split("\t")[1], "GET", url, key.public_key())
    verify_oauth(lines[2].split("\t")[1], "GET", url, key.public_key())


def test_the_worker_stops_at_a_line_not_its_parents(key: RSAPrivateKey) -> None:
    """A malformed line stops the worker with a message that does not repeat the line (it may hold the
    consumer key)."""
    with pytest.raises(SystemExit) as stopped:
        serve(io.BytesIO(b"S\t1\tsecret-consumer-key\n"), io.BytesIO())
    assert "malformed request line" in str(stopped.value)
    assert "secret" not in str(stopped.value)
