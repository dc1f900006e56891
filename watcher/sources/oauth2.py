"""The myPOS access token, and its renewal with the OAuth2 refresh_token grant (RFC 6749 section 6).

The current tokens live in memory only: a restart starts again from the configured ones. A refresh
that rotates the refresh token keeps the new one. Concurrent calls that all found the token expired
share one refresh: the first refreshes, the others see the token already changed and use it.
Tokens are SecretStr and never appear in an error text.
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from decimal import Decimal
from ssl import SSLContext
from urllib.parse import quote_plus

import aiohttp
from pydantic import SecretStr

from watcher.sources import transport
from watcher.sources.base import ParseError
from watcher.sources.provider_errors import read_berlin_group_error
from watcher.sources.values import load_json, show

_BODY_LIMIT = 64 * 1024
# RFC 6750's b64token, generously bounded: anything else is not a token we would send in a header.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A token endpoint's successful answer."""

    access_token: SecretStr
    refresh_token: SecretStr | None
    expires_in_s: Decimal | None


def _token(doc: dict[str, object], name: str, *, required: bool) -> SecretStr | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ParseError(f"{name}: expected a non-empty string, found {show(value)}")
    if len(value) > _MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(value):
        # Never echo the value: it may be a real token.
        raise ParseError(f"{name}: not a usable bearer token ({len(value)} characters)")
    return SecretStr(value)


def parse_token_response(body: bytes) -> TokenGrant:
    """Read `{"access_token", "token_type": "Bearer", "expires_in", "refresh_token"}`, or raise ParseError."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ParseError(f"top level: expected a JSON object, found {show(doc)}")
    token_type = doc.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
        raise ParseError(f"token_type: expected Bearer, found {show(token_type)}")
    access = _token(doc, "access_token", required=True)
    assert access is not None
    expires = doc.get("expires_in")
    if expires is not None and (not isinstance(expires, Decimal) or not expires.is_finite() or expires < 0):
        raise ParseError(f"expires_in: expected a number of seconds, found {show(expires)}")
    return TokenGrant(access, _token(doc, "refresh_token", required=False), expires)


class AccessToken:
    """The bearer token of one source, renewed by `refresh` when the source has a refresh grant."""

    def __init__(
        self,
        access_token: SecretStr,
        *,
        session: aiohttp.ClientSession | None = None,
        token_url: str | None = None,
        refresh_token: SecretStr | None = None,
        client_id: str | None = None,
        client_secret: SecretStr | None = None,
        timeouts: transport.Timeouts | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self._access = access_token
        self._session = session
        self._token_url = token_url
        self._refresh = refresh_token
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeouts = timeouts or transport.Timeouts(30.0, 10.0, 30.0)
        self._ssl = ssl
        self._lock = asyncio.Lock()

    @property
    def value(self) -> str:
        """The current access token, for the Authorization header."""
        return self._access.get_secret_value()

    @property
    def can_refresh(self) -> bool:
        """Whether a refresh grant is configured."""
        return self._session is not None and self._token_url is not None and self._refresh is not None

    def _request(self) -> tuple[dict[str, str], dict[str, str]]:
        assert self._refresh is not None
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh.get_secret_value()}
        headers = {"Accept": "application/json"}
        if self._client_secret is not None and self._client_id is not None:
            # RFC 6749 2.3.1: HTTP Basic over the form-encoded id and secret.
            pair = f"{quote_plus(self._client_id)}:{quote_plus(self._client_secret.get_secret_value())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif self._client_id is not None:
            form["client_id"] = self._client_id
        return headers, form

    async def refresh(self, stale: str) -> str | None:
        """Replace the token `stale` that the API called expired. None when a fresh token is in place
        (this call's, or a concurrent one's), else why there is none."""
        if not self.can_refresh:
            return "no refresh grant is configured (token_url and refresh_token)"
        async with self._lock:
            if self.value != stale:
                return None  # another call refreshed it meanwhile
            assert self._session is not None
            assert self._token_url is not None
            headers, form = self._request()
            got = await transport.request(
                self._session, "POST", self._token_url, headers=headers, timeouts=self._timeouts,
                limit=_BODY_LIMIT, ssl=self._ssl, form=form,
            )
            if isinstance(got, transport.Failure):
                return f"the token refresh failed: {got.error}"
            if got.status != 200:
                detail = read_berlin_group_error(got.body)
                status = f"HTTP {got.status} {transport.clean(got.reason, 80)}".rstrip()
                explained = f": {detail.text}" if detail is not None else ""
                return f"the token endpoint refused the refresh: {status}{explained}"
            if got.body is None:
                return "the token endpoint's answer is larger than the limit"
            try:
                grant = parse_token_response(got.body)
            except ParseError as exc:
                return f"the token endpoint's answer is unusable: {exc}"
            self._access = grant.access_token
            if grant.refresh_token is not None:
                self._refresh = grant.refresh_token  # rotated: the old one may be dead already
            return None
