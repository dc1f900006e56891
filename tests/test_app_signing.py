"""The composition root owns the signing pool: it builds it from `[signing] threads`, hands it to every
Mastercard source (also those a reload builds), and shuts it down when the components close. It also
gives those sources the folder where they spool a large listing body."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from watcher.app import open_components
from watcher.config import MastercardSendConfig, Settings
from watcher.devkeys import DevKey
from watcher.events import Event
from watcher.sources.mastercard import MastercardSendSource


def settings(tmp_path: Path, dev_key: DevKey, threads: int | None) -> Settings:
    source: dict[str, Any] = {
        "type": "mastercard-send", "name": "mc", "base_url": "http://127.0.0.1:9/send", "partner_id": "p",
        "consumer_key": "ck", "signing_key_path": str(dev_key.p12_path),
        "signing_key_password": "devpassword",
    }
    data: dict[str, Any] = {"state": {"path": str(tmp_path / "state.db")}, "sources": [source]}
    if threads is not None:
        data["signing"] = {"threads": threads}
    return Settings(**data)


def _ignore(event: Event) -> None:
    pass


@pytest.mark.parametrize(("threads", "expected"), [(2, 2), (1, 1), (3, 3)])
async def test_pool_is_built_shared_and_shut_down(
    tmp_path: Path, dev_key: DevKey, threads: int | None, expected: int
) -> None:
    """The pool has the configured threads; the sources, and a source built for a reload,
    sign on it; after the components close it takes no more work."""
    async with open_components(settings(tmp_path, dev_key, threads), [], publish=False,
                               on_event=_ignore) as components:
        pool = components.sign_pool
        assert isinstance(pool, ThreadPoolExecutor)
        assert pool._max_workers == expected
        (poller,) = components.pollers
        assert isinstance(poller.source, MastercardSendSource)
        assert poller.source._sign_pool is pool
        cfg = components.settings.sources[0]
        assert isinstance(cfg, MastercardSendConfig)
        rebuilt = components.make_source(cfg, poller.source._key)
        assert isinstance(rebuilt, MastercardSendSource)
        assert rebuilt._sign_pool is pool
        assert pool.submit(lambda: 42).result() == 42
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(lambda: 42)


@pytest.mark.parametrize("threads", [None, 0])
async def test_zero_threads_sign_on_the_event_loop(
    tmp_path: Path, dev_key: DevKey, threads: int | None
) -> None:
    """`[signing] threads = 0`, the default: no pool; the sources sign on the event loop."""
    async with open_components(settings(tmp_path, dev_key, threads), [], publish=False,
                               on_event=_ignore) as components:
        assert components.sign_pool is None
        (poller,) = components.pollers
        assert isinstance(poller.source, MastercardSendSource)
        assert poller.source._sign_pool is None


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
