"""Configuration: the TOML file, environment overrides, and errors that name the file and the key."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from watcher.config import (
    ConfigError,
    MastercardSendConfig,
    MyposPsd2Config,
    load_settings,
    parse_duration,
    parse_money,
)

ROOT = Path(__file__).resolve().parent.parent

MC = """
[[sources]]
name = "mc"
type = "mastercard-send"
environment = "mtf"
partner_id = "ptnr_1"
consumer_key = "ck"
signing_key_path = "keys/k.p12"
signing_key_password = "pw"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid() -> None:
    """The shipped config.example.toml loads, with its three sources and their types."""
    settings = load_settings(ROOT / "config.example.toml")
    assert [s.name for s in settings.sources] == ["mc-gbp", "mc-eur-xml", "mypos-cards"]
    assert isinstance(settings.sources[0], MastercardSendConfig)
    assert isinstance(settings.sources[2], MyposPsd2Config)
    assert settings.rules.files == [ROOT / "rules.example.toml"]


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    """State, rules and key paths are relative to the config file's folder, absolute ones stay."""
    path = write(tmp_path, '[state]\npath = "s.db"\n[rules]\nfiles = ["r.toml", "/abs/r2.toml"]\n' + MC)
    settings = load_settings(path)
    assert settings.state.path == tmp_path / "s.db"
    assert settings.rules.files == [tmp_path / "r.toml", Path("/abs/r2.toml")]
    source = settings.sources[0]
    assert isinstance(source, MastercardSendConfig)
    assert source.signing_key_path == tmp_path / "keys/k.p12"
    assert source.resolved_base_url == "https://sandbox.api.mastercard.com/send"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BALANCE_WATCHER_KAFKA__BOOTSTRAP_SERVERS wins over the file's value."""
    path = write(tmp_path, '[kafka]\nbootstrap_servers = "a:1"\n')
    monkeypatch.setenv("BALANCE_WATCHER_KAFKA__BOOTSTRAP_SERVERS", "b:2,c:3")
    assert load_settings(path).kafka.bootstrap_servers == "b:2,c:3"


def test_secrets_are_not_shown_in_repr(tmp_path: Path) -> None:
    """Secrets are SecretStr: printing the settings does not reveal them."""
    settings = load_settings(write(tmp_path, MC))
    assert "pw" not in repr(settings.sources[0]).replace("password", "")
    assert "'ck'" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1\n", "config.toml: bogus: unknown key"),
        ('[kafka]\nbootstrap_servers = "nohost"\n', "kafka.bootstrap_servers: 'nohost' is not host:port"),
        ('[kafka]\nchanges_topik = "x"\n', "kafka.changes_topik: unknown key"),
        (MC.replace('partner_id = "ptnr_1"', 'partner_id = "ptnr_1"\ninterval = "soon"'),
         "sources[0] (mc).interval: invalid duration 'soon'"),
        (MC.replace('environment = "mtf"', 'environment = "staging"'), "sources[0] (mc).environment"),
        (MC.replace('environment = "mtf"\n', ""), "set environment"),
        (MC.replace('format = "json"', "") + 'format = "yaml"\n', "sources[0] (mc).format"),
        (MC.replace('type = "mastercard-send"', 'type = "paypal"'), "sources[0]"),
        (MC + MC, "source name 'mc' is used twice"),
        (MC.replace('consumer_key = "ck"\n', ""), "sources[0] (mc).consumer_key: Field required"),
        ("[[sources]\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """Every kind of bad config raises ConfigError whose message names the file and the key."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert expected in str(info.value)
    assert str(tmp_path / "config.toml") in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such, not as a traceback."""
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("6h", 21600), ("1d", 86400), ("500ms", 0.5), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations read as the contract writes them."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "5x", "-5s", "0s", 5])
def test_bad_durations(text: object) -> None:
    """Anything but a positive number with a unit is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("value", "expected"), [("5000.00", Decimal("5000.00")), (12, Decimal(12))])
def test_money(value: object, expected: Decimal) -> None:
    """Money is a decimal string (or an integer), read exactly."""
    assert parse_money(value) == expected


@pytest.mark.parametrize("value", [5000.0, "abc", "NaN", "Infinity", True, None])
def test_bad_money(value: object) -> None:
    """Floats, non-numbers and non-finite values are refused."""
    with pytest.raises(ValueError, match=r"amount|money"):
        parse_money(value)


def test_secrets_from_credentials_directory_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret may come from systemd's $CREDENTIALS_DIRECTORY or from an absolute file path."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mc-key-password").write_text("from-credential\n")
    (tmp_path / "ck.txt").write_text("from-file")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = MC.replace('consumer_key = "ck"', f'consumer_key = {{ file = "{tmp_path / "ck.txt"}" }}').replace(
        'signing_key_password = "pw"', 'signing_key_password = { credential = "mc-key-password" }'
    )
    source = load_settings(write(tmp_path, text)).sources[0]
    assert isinstance(source, MastercardSendConfig)
    assert source.consumer_key.get_secret_value() == "from-file"
    assert source.signing_key_password.get_secret_value() == "from-credential"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{ credential = "missing" }', "cannot read the secret file"),
        ('{ credential = "../etc/passwd" }', "is not a credential name"),
        ('{ file = "relative.txt" }', "must be an absolute path"),
        ('{ path = "/x" }', "a secret is a string"),
    ],
)
def test_bad_secret_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    """A secret that cannot be read is a config error naming the key."""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, MC.replace('consumer_key = "ck"', f"consumer_key = {value}")))
    assert "consumer_key" in str(info.value)
    assert expected in str(info.value)


def test_performance_settings_have_safe_defaults(tmp_path: Path) -> None:
    """Without the keys: signing on the event loop, Kafka batches compressed with zstd, and a listing
    body limit of 256 MiB (room for a listing of 100,000 accounts, about 37 MB as Mastercard indents
    it); the example config says the same."""
    settings = load_settings(write(tmp_path, MC))
    assert settings.signing.threads == settings.signing.processes == 0
    source = settings.sources[0]
    assert isinstance(source, MastercardSendConfig)
    assert source.max_listing_bytes == 256 * 1024 * 1024
    example = load_settings(ROOT / "config.example.toml")
    assert example.signing.threads == example.signing.processes == 0
    assert settings.kafka.compression_type == example.kafka.compression_type == "zstd"


def test_performance_settings_are_read_and_overridable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[signing] threads` (0 signs on the event loop) and a source's `max_listing_bytes` are read from
    the file, and the environment overrides the thread and process counts."""
    path = write(tmp_path, "[signing]\nthreads = 0\n" + MC + "max_listing_bytes = 1048576\n")
    settings = load_settings(path)
    assert settings.signing.threads == 0
    source = settings.sources[0]
    assert isinstance(source, MastercardSendConfig)
    assert source.max_listing_bytes == 1024 * 1024
    monkeypatch.setenv("BALANCE_WATCHER_SIGNING__THREADS", "4")
    assert load_settings(path).signing.threads == 4
    monkeypatch.setenv("BALANCE_WATCHER_SIGNING__THREADS", "0")
    monkeypatch.setenv("BALANCE_WATCHER_SIGNING__PROCESSES", "2")
    assert load_settings(path).signing.processes == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[signing]\nthreads = -1\n", "signing.threads: Input should be greater than or equal to 0"),
        ("[signing]\nthreads = 65\n", "signing.threads: Input should be less than or equal to 64"),
        ('[signing]\nthreads = "many"\n', "signing.threads: Input should be a valid integer"),
        ("[signing]\npool = 2\n", "signing.pool: unknown key"),
        ("[signing]\nprocesses = -1\n", "signing.processes: Input should be greater than or equal to 0"),
        ("[signing]\nprocesses = 65\n", "signing.processes: Input should be less than or equal to 64"),
        ("[signing]\nthreads = 2\nprocesses = 1\n", "set signing.threads or signing.processes, not both"),
        (MC + "max_listing_bytes = 1000\n", "(mc).max_listing_bytes: Input should be greater than"),
        (MC + "max_listing_bytes = 8589934592\n", "(mc).max_listing_bytes: Input should be less"),
        (MC + 'max_listing_bytes = "256MiB"\n', "(mc).max_listing_bytes: Input should be a valid"),
        ('[kafka]\ncompression_type = "brotli"\n', "kafka.compression_type: Input should be 'zstd', 'lz4'"),
        ("[kafka]\ncompression_type = false\n", "kafka.compression_type: Input should be 'zstd'"),
        ("[kafka]\nlinger_ms = -1\n", "kafka.linger_ms: Input should be greater than or equal to 0"),
        ("[kafka]\nlinger_ms = 5000\n", "kafka.linger_ms: Input should be less than or equal to 1000"),
    ],
)
def test_bad_performance_settings_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    """Out-of-range or mistyped signing threads or processes (or both set) and listing limits are
    ConfigErrors naming the key."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert expected in str(info.value)
