"""Reading and checking the OAuth 1.0a headers our sources send, as a server would."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from oauth1.oauth import OAuth


def oauth_params(header: str) -> dict[str, str]:
    assert header.startswith("OAuth ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def verify_oauth(header: str, method: str, url: str, public_key: rsa.RSAPublicKey) -> None:
    """Rebuild the OAuth 1.0a base string for `url` and check the RSA-SHA256 signature; raises if bad."""
    params = oauth_params(header)
    signature = base64.b64decode(unquote(params.pop("oauth_signature")))
    base_string = OAuth.get_base_string(url, method, params)
    public_key.verify(signature, base_string.encode(), padding.PKCS1v15(), hashes.SHA256())
