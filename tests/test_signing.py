"""The OAuth1 signing helper and the development key generator."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path
from urllib.parse import unquote

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from hypothesis import example, given, settings
from hypothesis import strategies as st
from oauth1 import coreutils as signer_utils
from oauth1.oauth import OAuth

from watcher import signing
from watcher.devkeys import DevKey, generate_dev_key
from watcher.signing import SigningKeyError, authorization_header, load_signing_key

PASSWORD = "Sup3r-s3cret-pa55"
URL = "https://sandbox.api.mastercard.com/send/v1/partners/ptnr_1/account-balances?page=2&limit=10"


@pytest.fixture(scope="module")
def dev_key(tmp_path_factory: pytest.TempPathFactory) -> DevKey:
    """A development key protected by PASSWORD, shared by this module's tests."""
    return generate_dev_key(tmp_path_factory.mktemp("devkey"), PASSWORD)


def _public_key(dev_key: DevKey) -> RSAPublicKey:
    key = x509.load_pem_x509_certificate(dev_key.certificate_path.read_bytes()).public_key()
    assert isinstance(key, RSAPublicKey)
    return key


def _header_params(header: str) -> dict[str, str]:
    assert header.startswith("OAuth ")
    return {name: unquote(value) for name, value in re.findall(r'(\w+)="([^"]*)"', header)}


def _verifies(header: str, url: str, method: str, public_key: RSAPublicKey) -> bool:
    params = _header_params(header)
    signature = base64.b64decode(params.pop("oauth_signature"))
    base_string = OAuth.get_base_string(url, method, params)
    try:
        public_key.verify(signature, base_string.encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_generated_key_loads_and_matches_its_certificate(dev_key: DevKey) -> None:
    """generate_dev_key writes a PKCS#12 RSA-2048 key whose public half is the PEM certificate's."""
    key = load_signing_key(dev_key.p12_path, PASSWORD)
    assert isinstance(key, RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers() == _public_key(dev_key).public_numbers()


def test_generated_p12_is_private_to_its_owner(dev_key: DevKey) -> None:
    """The PKCS#12 file holding the private key has mode 0600."""
    assert stat.S_IMODE(dev_key.p12_path.stat().st_mode) == 0o600
    assert dev_key.p12_path.name == "dev-signing.p12"
    assert dev_key.certificate_path.name == "dev-signing.crt"


def test_generate_dev_key_reuses_existing_files(tmp_path: Path) -> None:
    """A second call keeps both files as they are; with one file missing, both are written anew."""
    first = generate_dev_key(tmp_path)
    p12, certificate = first.p12_path.read_bytes(), first.certificate_path.read_bytes()
    second = generate_dev_key(tmp_path)
    assert second == first
    assert second.p12_path.read_bytes() == p12
    assert second.certificate_path.read_bytes() == certificate
    first.certificate_path.unlink()
    third = generate_dev_key(tmp_path)
    assert third.certificate_path.read_bytes() != certificate
    assert third.p12_path.read_bytes() != p12
    load_signing_key(third.p12_path, "devpassword")  # the default password


def test_authorization_header_signs_the_url_with_its_query(dev_key: DevKey) -> None:
    """The header carries every OAuth parameter and a signature over the exact URL, query included."""
    key = load_signing_key(dev_key.p12_path, PASSWORD)
    header = authorization_header(URL, "GET", "consumer-key!123", key)
    params = _header_params(header)
    assert params["oauth_consumer_key"] == "consumer-key!123"
    assert params["oauth_signature_method"] == "RSA-SHA256"
    assert params["oauth_version"] == "1.0"
    assert params["oauth_body_hash"] == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert _verifies(header, URL, "GET", _public_key(dev_key))
    assert not _verifies(header, URL.replace("page=2", "page=3"), "GET", _public_key(dev_key))
    assert not _verifies(header, URL.split("?")[0], "GET", _public_key(dev_key))


def test_authorization_header_uses_a_fresh_nonce(dev_key: DevKey) -> None:
    """Two headers for the same request differ in their nonce."""
    key = load_signing_key(dev_key.p12_path, PASSWORD)
    first = _header_params(authorization_header(URL, "GET", "ck", key))
    second = _header_params(authorization_header(URL, "GET", "ck", key))
    assert first["oauth_nonce"] != second["oauth_nonce"]


def test_authorization_header_is_the_signers_own(
    dev_key: DevKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the same nonce and time, the header is byte for byte the one Mastercard's signer makes
    (PKCS#1 v1.5 signatures are deterministic), for a URL with a query and one without."""
    import oauth1.coreutils

    key = load_signing_key(dev_key.p12_path, PASSWORD)
    monkeypatch.setattr(oauth1.coreutils, "get_nonce", lambda length=16: "n0nce-Of_16chars")
    monkeypatch.setattr(oauth1.coreutils, "get_timestamp", lambda: 1764748800)
    for url in (URL, URL.split("?")[0], URL + "&q=a%20b~c"):
        expected = OAuth.get_authorization_header(url, "GET", None, "ck!1", key)
        ours = authorization_header(url, "get", "ck!1", key, nonce="n0nce-Of_16chars", timestamp=1764748800)
        assert ours == expected


def test_authorization_header_nonce_is_16_url_safe_characters(dev_key: DevKey) -> None:
    """The default nonce is 16 characters that need no percent-encoding (as the signer's own)."""
    key = load_signing_key(dev_key.p12_path, PASSWORD)
    nonces = {_header_params(authorization_header(URL, "GET", "ck", key))["oauth_nonce"] for _ in range(50)}
    assert len(nonces) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", nonce) for nonce in nonces)


def _assert_clean(error: SigningKeyError, path: Path) -> None:
    message = str(error)
    assert str(path) in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(error)
    # No chained exception can carry the password into a traceback.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert "\n" not in message  # one sentence


def test_wrong_password_is_a_signing_key_error(dev_key: DevKey) -> None:
    """A wrong password raises SigningKeyError naming the file and never the password tried."""
    wrong = PASSWORD + "-wrong"
    with pytest.raises(SigningKeyError) as caught:
        load_signing_key(dev_key.p12_path, wrong)
    _assert_clean(caught.value, dev_key.p12_path)
    assert wrong not in str(caught.value)
    assert "password" in str(caught.value)


def test_missing_file_is_a_signing_key_error(tmp_path: Path) -> None:
    """A missing file raises SigningKeyError naming the file."""
    path = tmp_path / "nowhere.p12"
    with pytest.raises(SigningKeyError, match="does not exist") as caught:
        load_signing_key(path, PASSWORD)
    _assert_clean(caught.value, path)


def test_garbage_file_is_a_signing_key_error(tmp_path: Path) -> None:
    """A file that is not PKCS#12 raises SigningKeyError naming the file."""
    path = tmp_path / "garbage.p12"
    path.write_bytes(b"-----BEGIN NOTHING-----\nnot a key at all\n")
    with pytest.raises(SigningKeyError, match="PKCS#12") as caught:
        load_signing_key(path, PASSWORD)
    _assert_clean(caught.value, path)


def test_directory_is_a_signing_key_error(tmp_path: Path) -> None:
    """A path that is a directory raises SigningKeyError, not a bare OSError."""
    with pytest.raises(SigningKeyError, match="cannot be read") as caught:
        load_signing_key(tmp_path, PASSWORD)
    _assert_clean(caught.value, tmp_path)


def test_signing_key_error_is_a_value_error() -> None:
    """Callers that catch ValueError also catch SigningKeyError."""
    assert issubclass(SigningKeyError, ValueError)


_URL_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.text(
    alphabet="aZ09-._~:/?#[]@!$&'()*+,;=% \t", max_size=12
)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http", "HTTPS", "Http", "ftp"]))
    host = draw(st.sampled_from(["sandbox.API.mastercard.com", "127.0.0.1", "user@Host", "[::1]", "h"]))
    port = draw(st.sampled_from(["", ":80", ":443", ":8443", ":"]))
    # Each segment percent-encoded (as the sources send them) or raw (anything urlparse may meet).
    segments = draw(st.lists(st.tuples(_URL_TEXT, st.booleans()), max_size=4))
    encode = signer_utils.percent_encode
    path = "".join(f"/{segment if raw else encode(segment)}" for segment, raw in segments)
    tail = draw(st.sampled_from(["", "?", "?a=b&c=d%20e", "#frag", ";params", "/"]))
    return f"{scheme}://{host}{port}{path}{tail}"


@settings(max_examples=400, deadline=None)
@given(text=_URL_TEXT | st.text(max_size=40))
@example(text=base64.b64encode(bytes(range(256))).decode())
@example(text="%25%%7E~*+ ")
def test_percent_encode_is_the_signers(text: str) -> None:
    """Our percent-encoding gives what the signer's gives, for any text: ASCII (where ours is faster)
    and not."""
    assert signing.percent_encode(text) == signer_utils.percent_encode(text)


@settings(max_examples=600, deadline=None)
@given(url=_urls(), method=st.sampled_from(["GET", "get"]), nonce=_URL_TEXT, consumer_key=_URL_TEXT)
def test_base_string_is_the_signers(url: str, method: str, nonce: str, consumer_key: str) -> None:
    """For any URL (plain ones, built here, and those with a query, fragment, params, brackets or
    spaces, handed to the signer) and any parameters, the base string is the signer's, or both fail
    alike."""
    params: dict[str, str | int] = {
        "oauth_consumer_key": consumer_key,
        "oauth_nonce": nonce,
        "oauth_timestamp": 1764748800,
        "oauth_signature_method": "RSA-SHA256",
        "oauth_version": "1.0",
        "oauth_body_hash": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    }
    try:
        expected = OAuth.get_base_string(url, method.upper(), dict(params))
    except ValueError as exc:
        with pytest.raises(type(exc)):
            signing.base_string(url, method, params)
        return
    assert signing.base_string(url, method, params) == expected


def test_the_sources_urls_take_the_fast_base_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URLs the Mastercard source signs (one account, the listing; default and odd ports) are built
    without the signer's URL parsing: the speed-up applies where the requests are."""
    from watcher.sources.mastercard import _segment

    def signers(*args: object) -> str:
        raise AssertionError("the signer's base string was used")

    monkeypatch.setattr(OAuth, "get_base_string", signers)
    params: dict[str, str | int] = {"oauth_nonce": "n", "oauth_timestamp": 1}
    for origin in ("https://sandbox.api.mastercard.com", "https://api.mastercard.com:443", "http://127.0.0.1:8080"):
        partner = f"{origin}/send/v1/partners/{_segment('ptnr_1')}"
        for url in (f"{partner}/non-card-tokens/{_segment('non_card_token:sbx-ü 1')}/account-balance",
                    f"{partner}/account-balances"):
            assert signing.base_string(url, "GET", params).startswith("GET&http")
