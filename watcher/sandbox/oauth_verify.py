"""Server-side check of Mastercard OAuth 1.0a RSA-SHA256 signatures, as Mastercard's gateway does it.

The signature base string is rebuilt with the signer package's own functions, from the URL the
request really arrived at, so that any difference between what was signed and what was sent fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from oauth1.oauth import OAuth

EMPTY_BODY_HASH = base64.b64encode(hashlib.sha256(b"").digest()).decode("ascii")
_REQUIRED = (
    "oauth_consumer_key",
    "oauth_nonce",
    "oauth_timestamp",
    "oauth_signature_method",
    "oauth_version",
    "oauth_body_hash",
    "oauth_signature",
)
_PARAM = re.compile(r'\s*([A-Za-z0-9_]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class OAuthFailure:
    """Why a request is not authenticated: `source` names the part at fault, as Mastercard's errors do."""

    source: str
    description: str


class OAuthVerifier:
    """Verifies the Authorization header of a body-less request against one certificate's key.

    Remembers the nonces of accepted requests for twice the timestamp tolerance, so a replay is refused.
    """

    def __init__(
        self,
        public_key: RSAPublicKey,
        *,
        consumer_keys: frozenset[str],
        tolerance_seconds: int,
        wall_clock: Callable[[], datetime],
    ) -> None:
        self._public_key = public_key
        self._consumer_keys = consumer_keys
        self._tolerance = tolerance_seconds
        self._wall_clock = wall_clock
        self._nonces: set[tuple[str, str]] = set()
        self._nonce_expiry: deque[tuple[float, tuple[str, str]]] = deque()

    def verify(self, method: str, url: str, authorization: str | None) -> OAuthFailure | None:
        """None when the request is authentic, else what is wrong with it."""
        if not authorization:
            return OAuthFailure("Authorization", "Authorization header is missing")
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() != "oauth":
            return OAuthFailure("Authorization", "Authorization header is not an OAuth header")
        params = _parse_params(rest)
        if params is None:
            return OAuthFailure("Authorization", "Authorization header cannot be parsed")
        missing = [name for name in _REQUIRED if not params.get(name)]
        if missing:
            return OAuthFailure("Authorization", f"OAuth parameter {missing[0]} is missing")
        if params["oauth_signature_method"] != "RSA-SHA256":
            return OAuthFailure("OAuth.SignatureMethod", "oauth_signature_method must be RSA-SHA256")
        if params["oauth_version"] != "1.0":
            return OAuthFailure("OAuth.Version", "oauth_version must be 1.0")
        consumer_key = params["oauth_consumer_key"]
        if self._consumer_keys and consumer_key not in self._consumer_keys:
            return OAuthFailure("OAuth.ConsumerKey", "oauth_consumer_key is not known")
        now = self._wall_clock().timestamp()
        try:
            timestamp = int(params["oauth_timestamp"])
        except ValueError:
            return OAuthFailure("OAuth.Timestamp", "oauth_timestamp is not a number of seconds")
        if abs(now - timestamp) > self._tolerance:
            return OAuthFailure("OAuth.Timestamp", "oauth_timestamp is outside the accepted window")
        if params["oauth_body_hash"] != EMPTY_BODY_HASH:
            return OAuthFailure("OAuth.BodyHash", "oauth_body_hash does not match the (empty) request body")
        signed = {name: value for name, value in params.items() if name != "oauth_signature"}
        base_string = str(OAuth.get_base_string(url, method, signed))
        try:
            signature = base64.b64decode(params["oauth_signature"], validate=True)
            message = base_string.encode("utf-8")
            self._public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (binascii.Error, InvalidSignature):
            return OAuthFailure("OAuth.Signature", "signature verification failed")
        self._forget_old_nonces(now)
        nonce = (consumer_key, params["oauth_nonce"])
        if nonce in self._nonces:
            return OAuthFailure("OAuth.Nonce", "oauth_nonce has already been used")
        self._nonces.add(nonce)
        self._nonce_expiry.append((now + 2 * self._tolerance, nonce))
        return None

    def _forget_old_nonces(self, now: float) -> None:
        # A nonce older than the window cannot come back: its timestamp would be refused first.
        while self._nonce_expiry and self._nonce_expiry[0][0] < now:
            _, nonce = self._nonce_expiry.popleft()
            self._nonces.discard(nonce)


def _parse_params(text: str) -> dict[str, str] | None:
    """`k="v", k="v"` to a dict of percent-decoded values; None when malformed or a name repeats."""
    params: dict[str, str] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _PARAM.match(text, position)
        if match is None or match.end() == position:
            return None
        name, value = match.group(1), match.group(2)
        if name in params:
            return None
        # Mastercard's Python signer percent-encodes only the signature, RFC 5849 signers every value.
        params[name] = unquote(value)
        position = match.end()
    return params
