"""OAuth 1.0a RSA-SHA256 request signing for Mastercard APIs, with Mastercard's own signer.

`load_signing_key` does blocking file I/O: call it once at start-up, not per request.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from oauth1 import authenticationutils
from oauth1 import coreutils as oauth1_utils
from oauth1.oauth import OAuth, SignatureMethod

# A request without a body signs the hash of the empty string.
_EMPTY_BODY_HASH = oauth1_utils.base64_encode(oauth1_utils.sha256_encode(""))


class SigningKeyError(ValueError):
    """The PKCS#12 signing key cannot be used; the message names the file, never the password."""


def load_signing_key(path: Path, password: str) -> RSAPrivateKey:
    """Read the RSA private key from a password-protected PKCS#12 file.

    Raises SigningKeyError for a missing or unreadable file, a wrong password, a file that is not
    PKCS#12, or a key that is not RSA.
    """
    if not path.exists():
        raise SigningKeyError(f"signing key file {path} does not exist")
    try:
        key = authenticationutils.load_signing_key(str(path), password)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SigningKeyError(f"signing key file {path} cannot be read: {reason}") from None
    except (ValueError, TypeError):
        # cryptography says "Invalid password or PKCS12 data" for both cases; `from None` keeps the
        # password out of any chained traceback.
        raise SigningKeyError(
            f"signing key file {path} cannot be opened: wrong password or not a PKCS#12 file"
        ) from None
    if key is None:
        raise SigningKeyError(f"signing key file {path} holds no private key")
    if not isinstance(key, RSAPrivateKey):
        raise SigningKeyError(f"signing key file {path} holds a {type(key).__name__}, not an RSA key")
    return key


def authorization_header(
    url: str,
    method: str,
    consumer_key: str,
    key: RSAPrivateKey,
    *,
    nonce: str | None = None,
    timestamp: int | None = None,
) -> str:
    """The `Authorization: OAuth ...` header value for a request without a body.

    `url` must be exactly the URL sent, query string included: the signature covers both. The header
    is the one `OAuth.get_authorization_header` makes (same parameters, order, base string and
    signature; a test compares them byte for byte), built from the signer's own base string and
    signing: only the per-request extras are cheaper. Its nonce takes 16 calls of `SystemRandom`
    (31 us) where one `secrets` call (16 URL-safe characters, 96 bits) does, and it hashes the empty
    body each time. `nonce` and `timestamp` are for tests; by default a fresh nonce and the time now.
    """
    params = {
        "oauth_consumer_key": consumer_key,
        "oauth_nonce": secrets.token_urlsafe(12) if nonce is None else nonce,
        "oauth_timestamp": int(time.time()) if timestamp is None else timestamp,
        "oauth_signature_method": SignatureMethod.RSA_SHA256.value,
        "oauth_version": "1.0",
        "oauth_body_hash": _EMPTY_BODY_HASH,
    }
    base_string = OAuth.get_base_string(url, method.upper(), params)
    signature = OAuth.sign_message(base_string, key)
    params["oauth_signature"] = oauth1_utils.percent_encode(signature)
    return "OAuth " + ",".join(f'{name}="{value}"' for name, value in params.items())
