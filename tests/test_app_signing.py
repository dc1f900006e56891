"""The composition root owns the signer: it builds the threads or processes `[signing]` asks for, hands
them to every Mastercard source (also those a reload builds), and shuts them down when the components
close. It also gives those sources the folder where they spool a large listing body."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from oauth_headers import verify_oauth

from watcher import sign_process
from watcher.app import Components, StartupError, open_components
from watcher.config import MastercardSendConfig, Settings
from watcher.devkeys import DevKey
from watcher.events import Event
from watcher.sign_process import SigningProcesses
from watcher.signers import ThreadSigner
from watcher.sources.mastercard import MastercardSendSource


def settings(tmp_path: Path, dev_key: DevKey, threads: int | None, processes: int | None = None) -> Settings:
    source: dict[str, Any] = {
        "type": "mastercard-send", "name": "mc", "base_url": "http://127.0.0.1:9/send", "partner_id": "p",
        "consumer_key": "ck", "signing_key_path": str(dev_key.p12_path),
        "signing_key_password": "devpassword",
    }
    data: dict[str, Any] = {"state": {"path": str(tmp_path / "state.db")}, "sources": [source]}
    if threads is not None:
        data["signing"] = {"threads": threads}
    if processes is not None:
        data["signing"] = {"processes": processes}
    return Settings(**data)


def _ignore(event: Event) -> None:
    pass


def sources_signing_with(components: Components, signer: object) -> MastercardSendSource:
    """Checks that the configured source, and one built for a reload, sign with `signer`; returns the
    rebuilt one."""
    (poller,) = components.pollers
    assert isinstance(poller.source, MastercardSendSource)
    assert poller.source._signer is signer
    cfg = components.settings.sources[0]
    assert isinstance(cfg, MastercardSendConfig)
    rebuilt = components.make_source(cfg, poller.source._key)
    assert isinstance(rebuilt, MastercardSendSource)
    assert rebuilt._signer is signer
    return rebuilt


@pytest.mark.parametrize(("threads", "expected"), [(2, 2), (1, 1), (3, 3)])
async def test_pool_is_built_shared_and_shut_down(
    tmp_path: Path, dev_key: DevKey, threads: int | None, expected: int
) -> None:
    """The pool has the configured threads; the sources, and a source built for a reload,
    sign on it; after the components close it takes no more work."""
    async with open_components(settings(tmp_path, dev_key, threads), [], publish=False,
                               on_event=_ignore) as components:
        signer = components.signer
        assert isinstance(signer, ThreadSigner)
        pool = signer.pool
        assert isinstance(pool, ThreadPoolExecutor)
        assert pool._max_workers == expected
        sources_signing_with(components, signer)
        assert pool.submit(lambda: 42).result() == 42
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(lambda: 42)


async def test_signing_processes_are_started_shared_and_closed(tmp_path: Path, dev_key: DevKey) -> None:
    """`[signing] processes = 2`: two processes run before the first poll; the sources, and a source built
    for a reload, sign through them with their own key; after the components close they have exited."""
    async with open_components(settings(tmp_path, dev_key, None, processes=2), [], publish=False,
                               on_event=_ignore) as components:
        signer = components.signer
        assert isinstance(signer, SigningProcesses)
        children = [child for child in signer._children if child is not None and child.alive]
        assert len(children) == 2
        rebuilt = sources_signing_with(components, signer)
        url = rebuilt.url_for("t")
        header = await rebuilt._authorization(url)
        verify_oauth(header, "GET", url, rebuilt._key.public_key())
    assert all(child.transport is not None and child.transport.get_returncode() == 0 for child in children)


async def test_signing_processes_that_cannot_start_stop_the_start(
    tmp_path: Path, dev_key: DevKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signing process that cannot start is a StartupError saying so, before any poll."""
    monkeypatch.setattr(sign_process, "WORKER", (sys.executable, "-c", "raise SystemExit(4)"))
    with pytest.raises(StartupError, match=r"could not start: signing process \d+ exited with code 4"):
        async with open_components(settings(tmp_path, dev_key, None, processes=1), [], publish=False,
                                   on_event=_ignore):
            pytest.fail("the components opened")


@pytest.mark.parametrize("threads", [None, 0])
async def test_zero_threads_sign_on_the_event_loop(
    tmp_path: Path, dev_key: DevKey, threads: int | None
) -> None:
    """`[signing] threads = 0` and no processes, the default: no signer; the sources sign on the event
    loop."""
    async with open_components(settings(tmp_path, dev_key, threads), [], publish=False,
                               on_event=_ignore) as components:
        assert components.signer is None
        (poller,) = components.pollers
        assert isinstance(poller.source, MastercardSendSource)
        assert poller.source._signer is None


async def test_listings_spool_next_to_the_state_database(tmp_path: Path, dev_key: DevKey) -> None:
    """The composition root gives every Mastercard source, and one a reload builds, the state
    database's folder for its spooled listing bodies (on disk, writable under the unit's sandbox)."""
    async with open_components(settings(tmp_path, dev_key, None), [], publish=False,
                               on_event=_ignore) as components:
        (poller,) = components.pollers
        assert isinstance(poller.source, MastercardSendSource)
        assert poller.source._spool is not None
        assert poller.source._spool.directory == tmp_path
        cfg = components.settings.sources[0]
        assert isinstance(cfg, MastercardSendConfig)
        rebuilt = components.make_source(cfg, poller.source._key)
        assert isinstance(rebuilt, MastercardSendSource)
        assert rebuilt._spool == poller.source._spool
