"""The simulated platform: attestation key, root secret and enclave signing key in a folder.

    info = create_platform(instance / "platform")     # once, by the appliance
    pinned = platform_public_key(instance / "platform")   # what clients pin (32 raw bytes)

Files (mode 0600): ``attestation_key.pem`` (Ed25519, the simulated CPU's quoting key),
``root_secret.bin`` (32 bytes, the fused sealing root), ``enclave_signer.pem`` (Ed25519, the
enclave developer's signing key whose hash is MRSIGNER). Only the enclave process reads the
first two; the host reads the public halves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.keys import load_or_create_ed25519
from crypto.secret_files import write_secret_once
from enclave.errors import PlatformError

__all__ = [
    "PlatformInfo",
    "PlatformSecrets",
    "create_platform",
    "load_platform_secrets",
    "load_signer_key",
    "platform_public_key",
]

ATTESTATION_KEY = "attestation_key.pem"
ROOT_SECRET = "root_secret.bin"
SIGNER_KEY = "enclave_signer.pem"


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, kw_only=True)
class PlatformInfo:
    """Public facts about a platform folder."""

    directory: Path
    attestation_public_key: bytes
    signer_public_key: bytes


@dataclass(frozen=True, kw_only=True)
class PlatformSecrets:
    """What the simulated CPU holds (loaded inside the enclave process only)."""

    attestation_key: Ed25519PrivateKey
    root_secret: bytes


def create_platform(directory: Path | str) -> PlatformInfo:
    """Create (or load) the platform folder; idempotent and safe for concurrent callers."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    attestation = load_or_create_ed25519(directory / ATTESTATION_KEY)
    signer = load_or_create_ed25519(directory / SIGNER_KEY)
    root_path = directory / ROOT_SECRET
    if not root_path.exists():
        write_secret_once(root_path, secrets.token_bytes(32))
    return PlatformInfo(
        directory=directory,
        attestation_public_key=_raw_public(attestation),
        signer_public_key=_raw_public(signer),
    )


def platform_public_key(directory: Path | str) -> bytes:
    """The platform attestation public key (32 raw bytes) that verifiers pin."""
    path = Path(directory) / ATTESTATION_KEY
    if not path.exists():
        raise PlatformError(f"no platform attestation key at {path}")
    return _raw_public(load_or_create_ed25519(path))


def load_signer_key(directory: Path | str) -> Ed25519PrivateKey:
    """The enclave signing key (developer key; its public hash is MRSIGNER)."""
    path = Path(directory) / SIGNER_KEY
    if not path.exists():
        raise PlatformError(f"no enclave signing key at {path}")
    return load_or_create_ed25519(path)


def load_platform_secrets(directory: Path | str) -> PlatformSecrets:
    """Load the attestation key and root secret (called inside the enclave process only)."""
    directory = Path(directory)
    key_path, root_path = directory / ATTESTATION_KEY, directory / ROOT_SECRET
    if not key_path.exists() or not root_path.exists():
        raise PlatformError(f"platform folder {directory} is incomplete")
    root = root_path.read_bytes()
    if len(root) != 32:
        raise PlatformError("platform root secret must be 32 bytes")
    return PlatformSecrets(attestation_key=load_or_create_ed25519(key_path), root_secret=root)
