"""OAuth 1.0a RSA-SHA256 request signing for Mastercard APIs, with Mastercard's own signer.

`load_signing_key` does blocking file I/O: call it once at start-up, not per request.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from oauth1 import authenticationutils
from oauth1.oauth import OAuth


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


def authorization_header(url: str, method: str, consumer_key: str, key: RSAPrivateKey) -> str:
    """The `Authorization: OAuth ...` header value for a request without a body.

    `url` must be exactly the URL sent, query string included: the signature covers both.
    """
    header = OAuth.get_authorization_header(url, method.upper(), None, consumer_key, key)
    return str(header)
