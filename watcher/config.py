"""Configuration: a TOML file plus BALANCE_WATCHER_* environment overrides, validated at the edge.

Every problem is reported as a ConfigError whose message names the file and the key at fault.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "BALANCE_WATCHER_"

MASTERCARD_BASE_URLS = {
    "mtf": "https://sandbox.api.mastercard.com/send",
    "production": "https://api.mastercard.com/send",
}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A configuration or rules problem a user can fix; the message names the file and the key."""


def parse_duration(value: object) -> timedelta:
    """Read "90s", "5m", "6h", "1d", "500ms" or a combination such as "1h30m"."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a duration is a string such as \"90s\" or \"5m\", not {value!r}")
    text = value.strip().replace(" ", "")
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r}: use a number and a unit (ms, s, m, h, d)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return timedelta(seconds=seconds)


def parse_money(value: object) -> Decimal:
    """Read a decimal string such as "5000.00"; floats are refused because they are not exact."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (bool, float)):
        raise ValueError(f"money must be a decimal string such as \"5000.00\", not the number {value!r}")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"invalid amount {value!r}: use a decimal string such as \"5000.00\"") from None
    else:
        raise ValueError(f"money must be a decimal string such as \"5000.00\", not {value!r}")
    if not result.is_finite():
        raise ValueError(f"amount {value!r} is not a finite number")
    return result


def read_secret(value: object) -> object:
    """A secret is a string, or read from a file: `{ credential = "name" }` takes the file of that name
    in systemd's $CREDENTIALS_DIRECTORY (LoadCredential=), `{ file = "/abs/path" }` any file. One trailing
    newline is dropped."""
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"credential"} and isinstance(value["credential"], str):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError("a { credential = ... } secret needs $CREDENTIALS_DIRECTORY (LoadCredential=)")
        name = value["credential"]
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a credential name")
        path = Path(directory) / name
    elif set(value) == {"file"} and isinstance(value["file"], str):
        path = Path(value["file"])
        if not path.is_absolute():
            raise ValueError(f"secret file {value['file']!r} must be an absolute path")
    else:
        raise ValueError("a secret is a string, { credential = \"name\" } or { file = \"/path\" }")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    return text[:-1] if text.endswith("\n") else text


Secret = Annotated[SecretStr, BeforeValidator(read_secret)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Money = Annotated[Decimal, BeforeValidator(parse_money)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateConfig(_Strict):
    path: Path = Path("/var/lib/balance-watcher/state.db")
    # Keys of accounts polled one by one whose state stays in memory; the others' leaves memory once
    # written, and is read back from the database when used. Bounds memory by the keys in use.
    hot_keys: int = Field(default=10_000, ge=0)


class OutboxConfig(_Strict):
    # Events wait here while Kafka is away; at the bound, polls stop advancing the state (and say so
    # loudly) instead of dropping anything.
    max_events: int = Field(default=1_000_000, ge=1)
    batch_size: int = Field(default=1000, ge=1, le=100_000)


class KafkaConfig(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    changes_topic: str = "balance-changes"
    alerts_topic: str = "balance-alerts"
    client_id: str = "balance-watcher"
    request_timeout: Duration = timedelta(seconds=30)
    # Bytes per partition batch. aiokafka's default (16 KiB, some 20 events) sends a burst of 1,000
    # events as 50 acks=all round trips one after another; 256 KiB takes it in a few. Kafka's default
    # message.max.bytes (1 MiB) is the ceiling a broker accepts unless raised.
    max_batch_bytes: int = Field(default=256 * 1024, ge=16 * 1024, le=16 * 1024 * 1024)
    # Batch compression, as aiokafka names it. The events are JSON: zstd makes a batch 4-9x smaller (a
    # few events to hundreds) on the wire and on the brokers' disks, for 1-3 us per event in batches of
    # a few (gzip: 30-150 us there). Every consumer must know the codec (zstd: Kafka 2.1 and its clients on).
    compression_type: Literal["zstd", "lz4", "snappy", "gzip", "none"] = "zstd"
    # How long a batch waits for more records before it is sent. Batches form without waiting: the
    # relay hands over every event committed so far at once, and the producer keeps one request in
    # flight per broker while the next batch fills. A wait only delays the acknowledgement (bench/README.md,
    # item 59).
    linger_ms: int = Field(default=0, ge=0, le=1000)
    # TLS / SASL, named as aiokafka names them.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: Secret | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: Secret | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("at least one host:port is needed")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)


class RulesConfig(_Strict):
    files: list[Path] = Field(default_factory=list)


class MetricsConfig(_Strict):
    listen: str = "127.0.0.1:9464"


class SigningConfig(_Strict):
    # Threads that compute OAuth1 RSA signatures off the event loop (cryptography releases the GIL while
    # it signs); 0 signs on the event loop itself: measured faster unless the daemon has cores to spare.
    threads: int = Field(default=0, ge=0, le=64)
    # Child processes that compute them instead (watcher.sign_process): off the loop and off its GIL.
    processes: int = Field(default=0, ge=0, le=64)

    @model_validator(mode="after")
    def _one_way(self) -> SigningConfig:
        if self.threads and self.processes:
            raise ValueError("set signing.threads or signing.processes, not both")
        return self


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class _SourceBase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    interval: Duration = timedelta(seconds=60)
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    jitter: Duration | None = None
    # Per attempt: `timeout` bounds the whole exchange (connect, headers, body); `connect_timeout` the TCP
    # and TLS set-up; `read_timeout` the longest silence while waiting for the headers or body bytes.
    timeout: Duration = timedelta(seconds=30)
    connect_timeout: Duration = timedelta(seconds=10)
    read_timeout: Duration = timedelta(seconds=30)
    # Attempts per call, the first included (1: no retry). Retried: connection errors, 5xx and 429.
    retries: int = Field(default=3, ge=1, le=10)
    backoff_base: Duration = timedelta(milliseconds=500)
    backoff_max: Duration = timedelta(seconds=30)
    # The longest Retry-After a call waits for; a longer one ends the call and holds the source until then.
    retry_after_max: Duration = timedelta(seconds=60)
    # After this many failed calls in a row the source's circuit opens for breaker_cooldown.
    breaker_threshold: int = Field(default=5, ge=1, le=1000)
    breaker_cooldown: Duration = timedelta(seconds=60)
    max_requests_per_second: float = Field(default=10.0, gt=0, le=10_000)


class MastercardSendConfig(_SourceBase):
    type: Literal["mastercard-send"]
    environment: Literal["mtf", "production"] | None = None
    base_url: str | None = None
    partner_id: str = Field(min_length=1)
    consumer_key: Secret
    signing_key_path: Path
    signing_key_password: Secret
    format: Literal["json", "xml"] = "json"
    non_card_tokens: list[str] = Field(default_factory=list)
    # The largest partner-wide listing body accepted (bytes, after decompression): about 370 bytes per
    # account in indented JSON, 470 in XML, so 256 MiB is room for some 500,000 accounts.
    max_listing_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, le=4 * 1024 * 1024 * 1024)

    @model_validator(mode="after")
    def _base(self) -> MastercardSendConfig:
        if self.base_url is None and self.environment is None:
            raise ValueError("set environment (\"mtf\" or \"production\") or base_url")
        if self.base_url is not None and not re.match(r"^https?://[^/]+", self.base_url):
            raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL")
        return self

    @property
    def resolved_base_url(self) -> str:
        """The base URL requests go to: base_url when set, else the environment's."""
        if self.base_url is not None:
            return self.base_url.rstrip("/")
        assert self.environment is not None
        return MASTERCARD_BASE_URLS[self.environment]


class MyposPsd2Config(_SourceBase):
    type: Literal["mypos-psd2"]
    base_url: str = "https://mp-psd2-api.mypos.com"
    api_key: Secret
    consent_id: Secret
    access_token: Secret
    account_numbers: list[str] = Field(min_length=1)
    # myPOS requires a QWAC client certificate in production.
    client_cert_path: Path | None = None
    client_key_path: Path | None = None
    # PSD2 RTS art. 36(5): at most four unattended accesses per account in 24 hours unless agreed
    # otherwise with the bank; 0 turns the budget off (only for such an agreement, or the sandbox).
    daily_access_budget: int = Field(default=4, ge=0, le=100_000)
    # OAuth2 refresh_token grant, used when the API says the access token expired; absent: no refresh.
    token_url: str | None = Field(default=None, pattern=r"^https?://[^/]+")
    refresh_token: Secret | None = None
    client_id: str | None = None
    client_secret: Secret | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/]+", value):
            raise ValueError(f"base_url {value!r} is not an http(s) URL")
        return value.rstrip("/")


SourceConfig = Annotated[MastercardSendConfig | MyposPsd2Config, Field(discriminator="type")]


class Settings(BaseSettings):
    """The whole configuration. Environment variables override the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    state: StateConfig = StateConfig()
    kafka: KafkaConfig = KafkaConfig()
    outbox: OutboxConfig = OutboxConfig()
    rules: RulesConfig = RulesConfig()
    metrics: MetricsConfig | None = None
    logging: LoggingConfig = LoggingConfig()
    signing: SigningConfig = SigningConfig()
    shutdown_grace: Duration = timedelta(seconds=20)
    sources: list[SourceConfig] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment must win over them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} is used twice; names must be unique")
            seen.add(source.name)
        return self


def _locate(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """Turn a pydantic error location into a dotted key, naming a source by its name."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], Mapping):
                name = node[item].get("name")
            parts[-1] += f"[{item}]" + (f" ({name})" if name else "")
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
        elif parts and parts[0].startswith("sources[") and item in ("mastercard-send", "mypos-psd2"):
            continue  # the discriminated union's tag adds nothing for the reader
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return ".".join(parts) or "(top level)"


def _format_errors(path: Path, error: ValidationError, data: Mapping[str, Any]) -> str:
    lines = []
    for err in error.errors():
        key = _locate(tuple(err["loc"]), data)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {key}: {message}")
    return "\n".join(lines)


def load_settings(path: Path) -> Settings:
    """Read and validate the config file, with BALANCE_WATCHER_* overrides; raise ConfigError.

    Relative paths (the state database, the rules files) are taken from the config file's folder.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc, data)) from None
    base = path.parent
    state = settings.state.model_copy(update={"path": base / settings.state.path})  # an absolute one stays
    files = [base / f for f in settings.rules.files]
    sources = [_resolve_paths(source, base) for source in settings.sources]
    return settings.model_copy(update={"state": state, "rules": RulesConfig(files=files), "sources": sources})


def _resolve_paths(source: MastercardSendConfig | MyposPsd2Config, base: Path) -> Any:
    """Key and certificate paths, like every path in the file, are relative to the config's folder."""
    updates: dict[str, Path] = {}
    for name in ("signing_key_path", "client_cert_path", "client_key_path"):
        value = getattr(source, name, None)
        if isinstance(value, Path):
            updates[name] = base / value
    return source.model_copy(update=updates)
