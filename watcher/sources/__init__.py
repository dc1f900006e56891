"""Balance API adapters, and the one place that picks the adapter for a configured source."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from watcher.config import MastercardSendConfig, MyposPsd2Config
from watcher.signers import OffLoopSigner
from watcher.sources.base import BalanceSource
from watcher.sources.budget import AccessLedger
from watcher.sources.mastercard import MastercardSendSource
from watcher.sources.mypos import MyposPsd2Source
from watcher.sources.transport import utc_now


def build_source(
    config: MastercardSendConfig | MyposPsd2Config,
    session: aiohttp.ClientSession,
    signing_key: RSAPrivateKey | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
    ledger: AccessLedger | None = None,
    signer: OffLoopSigner | None = None,
    spool_dir: Path | None = None,
) -> BalanceSource:
    """The adapter for one configured source. Mastercard needs its signing key, already loaded.

    `ledger` keeps a PSD2 source's access budget across restarts (the state store); without it the
    budget is counted in memory only. `signer` signs Mastercard requests off the event loop (None: on
    the loop); the caller owns it and shuts it down. `spool_dir`: a disk-backed folder where a
    Mastercard listing's large body is spooled while it is parsed (None: kept in memory).
    """
    if isinstance(config, MastercardSendConfig):
        if signing_key is None:
            raise ValueError(f"source {config.name!r}: a Mastercard Send source needs its signing key")
        return MastercardSendSource(
            config, session, signing_key, clock=clock, signer=signer, spool_dir=spool_dir
        )
    return MyposPsd2Source(config, session, clock=clock, ledger=ledger)
