"""A development signing key: an RSA key in a PKCS#12 file and its self-signed certificate.

The sandbox verifies OAuth1 signatures against the certificate; the watcher signs with the PKCS#12
file, exactly as it would with a key from Mastercard's developer portal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

P12_FILENAME = "dev-signing.p12"
CERTIFICATE_FILENAME = "dev-signing.crt"
DEFAULT_PASSWORD = "devpassword"
_FRIENDLY_NAME = b"balance-watcher-dev"


@dataclass(frozen=True, slots=True)
class DevKey:
    """Where the development key lives: the PKCS#12 file to sign with, the PEM certificate to verify."""

    p12_path: Path
    certificate_path: Path


def generate_dev_key(directory: Path, password: str = DEFAULT_PASSWORD) -> DevKey:
    """Write dev-signing.p12 (mode 0600) and dev-signing.crt into `directory`, creating it if needed.

    Idempotent: when both files exist they are reused as they are (the password is not checked).
    """
    dev_key = DevKey(directory / P12_FILENAME, directory / CERTIFICATE_FILENAME)
    if dev_key.p12_path.is_file() and dev_key.certificate_path.is_file():
        return dev_key
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = _self_signed_certificate(key)
    p12 = pkcs12.serialize_key_and_certificates(
        _FRIENDLY_NAME,
        key,
        certificate,
        None,
        serialization.BestAvailableEncryption(password.encode("utf-8")),
    )
    _write_atomically(dev_key.p12_path, p12, mode=0o600)
    _write_atomically(dev_key.certificate_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return dev_key


def _self_signed_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "balance-watcher development signing key"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "balance-watcher sandbox"),
        ]
    )
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # The file is created with its final mode, so the private key is never world-readable, even briefly.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, mode)  # exactly `mode`, whatever the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
