"""Where a Mastercard request's OAuth1 header is computed when not on the event loop: a pool of threads
(`[signing] threads`, here) or child processes (`[signing] processes`, watcher.sign_process).

Kept apart from watcher.signing, which makes the header: a signing process imports that module alone, and
none of the event loop's machinery with it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from watcher.signing import authorization_header


class SigningError(RuntimeError):
    """A request could not be signed off the event loop; the message says why (never the key)."""


class OffLoopSigner(Protocol):
    """Computes `authorization_header` away from the event loop: threads or processes. Raises
    SigningError when it cannot, ValueError for a request it cannot sign."""

    async def authorization_header(
        self, url: str, method: str, consumer_key: str, key: RSAPrivateKey
    ) -> str: ...


class ThreadSigner:
    """Signs on a pool of threads (`[signing] threads`): `cryptography` releases the GIL while it signs."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool

    async def authorization_header(
        self, url: str, method: str, consumer_key: str, key: RSAPrivateKey
    ) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, authorization_header, url, method, consumer_key, key)
