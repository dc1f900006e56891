"""What the sandbox is configured with: the CLI builds one of these from its options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The sample credentials of myPOS's documentation, so the seed's curl example works as it is.
SAMPLE_MYPOS_API_KEY = "aGDmxHAmpMWUL1txqCsjEcOS"
SAMPLE_MYPOS_ACCESS_TOKEN = "oqeeWzoYfqkf1RsfyaB3hyNiLvY7GNAV6Kta7sGa9X"
SAMPLE_MYPOS_CONSENT_ID = "3c7816ee-3d51-4bf5-8ced-ece2af35d431"
# The sandbox's own OAuth2 client and refresh token (myPOS's documentation shows none).
SANDBOX_MYPOS_REFRESH_TOKEN = "sandbox-refresh-token-8Qz1"
SANDBOX_MYPOS_CLIENT_ID = "sandbox-client"
SANDBOX_MYPOS_CLIENT_SECRET = "sandbox-client-secret"


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """The sandbox's configuration.

    `certificate_path`: PEM certificate whose public key verifies every Mastercard signature (see
    watcher.devkeys). `consumer_keys`: the accepted Mastercard consumer keys; empty accepts any, the
    signature is verified all the same. `tick_seconds`: how often balances move; 0 keeps them static.
    `random_seed` makes the world reproducible. `accounts_per_partner`: accounts of each Mastercard
    partner; `mypos_accounts`: moving myPOS card accounts besides the seed's 50553500971.
    `timestamp_tolerance_seconds`: how far oauth_timestamp may be from now.
    `mypos_refresh_token`, `mypos_client_id`, `mypos_client_secret` (None: a public client) are what the
    token endpoint accepts; `rotate_refresh_tokens`: each grant returns a new refresh token and retires
    the one presented.
    """

    certificate_path: Path
    consumer_keys: frozenset[str] = field(default_factory=frozenset)
    mypos_api_key: str = SAMPLE_MYPOS_API_KEY
    mypos_access_token: str = SAMPLE_MYPOS_ACCESS_TOKEN
    mypos_consent_id: str = SAMPLE_MYPOS_CONSENT_ID
    mypos_refresh_token: str = SANDBOX_MYPOS_REFRESH_TOKEN
    mypos_client_id: str = SANDBOX_MYPOS_CLIENT_ID
    mypos_client_secret: str | None = SANDBOX_MYPOS_CLIENT_SECRET
    rotate_refresh_tokens: bool = True
    tick_seconds: float = 2.0
    random_seed: int = 0
    accounts_per_partner: int = 5
    mypos_accounts: int = 3
    timestamp_tolerance_seconds: int = 300

    def __post_init__(self) -> None:
        if self.tick_seconds < 0:
            raise ValueError(f"tick_seconds must be 0 (static) or more, not {self.tick_seconds}")
        if self.accounts_per_partner < 0 or self.mypos_accounts < 0:
            raise ValueError("account counts cannot be negative")
        if self.timestamp_tolerance_seconds <= 0:
            raise ValueError("timestamp_tolerance_seconds must be greater than zero")
