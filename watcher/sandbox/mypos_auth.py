"""The sandbox's myPOS authorisation state: access tokens that expire, consents that expire or are
revoked, and the OAuth2 token endpoint that renews access tokens with the refresh_token grant.

    POST /oauth/token   form: grant_type=refresh_token, refresh_token=...; client authentication by
                        HTTP Basic (client_id:client_secret) or client_id / client_secret form fields.
                        200 {"access_token", "token_type": "Bearer", "expires_in", "refresh_token"}
                        (a new refresh token when rotation is on: the old one then stops working);
                        400 {"error": "invalid_grant" | "unsupported_grant_type" | "invalid_request"},
                        401 {"error": "invalid_client"}, as RFC 6749 section 5.2 has them.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Literal
from urllib.parse import unquote_plus

from aiohttp import web

from watcher.sandbox.settings import SandboxSettings

TOKEN_PATH = "/oauth/token"
TOKEN_LIFETIME_S = 3600
TokenStatus = Literal["valid", "expired", "unknown"]
ConsentStatus = Literal["valid", "expired", "invalid"]
CONSENT_STATUSES: tuple[str, ...] = ("valid", "expired", "invalid")


class MyposAuth:
    """Which access tokens, refresh tokens and consents the sandbox accepts right now."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._settings = settings
        self._access: dict[str, Literal["valid", "expired"]] = {settings.mypos_access_token: "valid"}
        self._refresh: set[str] = {settings.mypos_refresh_token}
        self._consents: dict[str, ConsentStatus] = {settings.mypos_consent_id: "valid"}
        self.grants = 0  # refresh grants issued, for tests and the control API

    def token_status(self, token: str) -> TokenStatus:
        """valid, expired, or unknown (never issued)."""
        return self._access.get(token, "unknown")

    def consent_status(self, consent_id: str) -> ConsentStatus:
        """valid, expired, or invalid (revoked, or never given)."""
        return self._consents.get(consent_id, "invalid")

    def expire_tokens(self, token: str | None = None) -> int:
        """Expire one access token, or every valid one; returns how many expired."""
        chosen = [t for t, s in self._access.items() if s == "valid" and (token is None or t == token)]
        for name in chosen:
            self._access[name] = "expired"
        return len(chosen)

    def set_consent(self, consent_id: str, status: ConsentStatus) -> None:
        """Give, expire or revoke a consent."""
        self._consents[consent_id] = status

    def as_json(self) -> dict[str, object]:
        """The state for the control API (sandbox tokens only, never a real secret)."""
        return {
            "access_tokens": dict(self._access),
            "refresh_tokens": sorted(self._refresh),
            "consents": dict(self._consents),
            "grants": self.grants,
        }

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            raw_id, sep, raw_secret = pair.partition(":")
            if not sep:
                return False
            client_id, client_secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if client_id != self._settings.mypos_client_id:
            return False
        # A public client (no secret configured) authenticates by its id alone.
        expected = self._settings.mypos_client_secret
        return expected is None or (
            client_secret is not None and secrets.compare_digest(client_secret, expected)
        )

    def grant(self, request: web.Request, form: dict[str, str]) -> web.Response:
        """Answer one token request."""
        if form.get("grant_type") != "refresh_token":
            return oauth_error(400, "unsupported_grant_type", "only grant_type=refresh_token is served")
        if not self._client_ok(request, form):
            return oauth_error(401, "invalid_client", "client authentication failed")
        presented = form.get("refresh_token")
        if not presented:
            return oauth_error(400, "invalid_request", "refresh_token is missing")
        if presented not in self._refresh:
            return oauth_error(400, "invalid_grant", "the refresh token is not valid")
        access = secrets.token_urlsafe(24)
        self._access[access] = "valid"
        answer: dict[str, object] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
        }
        if self._settings.rotate_refresh_tokens:
            self._refresh.discard(presented)
            rotated = secrets.token_urlsafe(24)
            self._refresh.add(rotated)
            answer["refresh_token"] = rotated
        self.grants += 1
        return web.json_response(answer, headers={"Cache-Control": "no-store"})


def oauth_error(status: int, code: str, description: str) -> web.Response:
    body = json.dumps({"error": code, "error_description": description})
    return web.Response(status=status, text=body, content_type="application/json")
