"""Ed25519 signing keys: creation on first use, PEM encoding, key ids.

key = load_or_create_ed25519(home / "keys" / "signing.pem")
pem = public_key_pem(key.public_key())
assert key_id(load_public_key_pem(pem)) == key_id(key.public_key())
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from crypto.errors import KeyFormatError
from crypto.secret_files import write_secret_once

__all__ = [
    "key_id",
    "load_or_create_ed25519",
    "load_public_key_pem",
    "parse_public_key_pem",
    "public_key_pem",
]

_MAX_KEY_FILE_BYTES = 64 * 1024


def load_or_create_ed25519(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 private key at ``path``, creating it (mode 0600) if it does not exist.

    The parent directory is created with mode 0700 when missing. Creation is atomic and
    safe against concurrent callers (:func:`crypto.secret_files.write_secret_once`): every
    process ends up with the same key and no reader ever sees a partial file. The key is
    never logged.

    Raises:
        KeyFormatError: the file exists but is not an unencrypted PEM Ed25519 private key.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        write_secret_once(path, _private_pem(Ed25519PrivateKey.generate()))
    return _load_private_key(path)


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    with open(path, "rb") as handle:
        data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFormatError(f"key file {path} is larger than {_MAX_KEY_FILE_BYTES} bytes")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The message of the underlying error never contains key material.
        raise KeyFormatError(
            f"key file {path} is not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(
            f"key file {path} holds a {type(key).__name__}, not an Ed25519 private key"
        )
    return key


def public_key_pem(key: Ed25519PublicKey) -> str:
    """Return ``key`` as a SubjectPublicKeyInfo PEM string (``-----BEGIN PUBLIC KEY-----``)."""
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519PublicKey, got {type(key).__name__}")
    return key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def parse_public_key_pem(data: str | bytes) -> PublicKeyTypes:
    """Parse a PEM SubjectPublicKeyInfo public key of any algorithm (bounded in size); the
    callers check the algorithm: :func:`load_public_key_pem` (Ed25519) and
    :func:`crypto.sigstore.load_ec_public_key_pem` (ECDSA P-256/P-384).

    Raises:
        KeyFormatError: ``data`` is not ASCII PEM, too large, or not a public key.
    """
    if isinstance(data, str):
        try:
            raw = data.encode("ascii")
        except UnicodeEncodeError:
            raise KeyFormatError("public key PEM contains non-ASCII characters") from None
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise KeyFormatError(f"expected PEM as str or bytes, got {type(data).__name__}")
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise KeyFormatError("public key PEM is implausibly large")
    try:
        return serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"not a PEM public key ({type(exc).__name__})") from None


def load_public_key_pem(data: str | bytes) -> Ed25519PublicKey:
    """Parse a PEM SubjectPublicKeyInfo Ed25519 public key.

    Raises:
        KeyFormatError: ``data`` is not PEM, not a public key, or not Ed25519.
    """
    key = parse_public_key_pem(data)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"public key is {type(key).__name__}, not Ed25519")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """Return the key id: lowercase hex SHA-256 of the raw 32-byte public key."""
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519PublicKey, got {type(key).__name__}")
    raw = key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()
