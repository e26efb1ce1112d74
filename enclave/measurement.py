"""Enclave identity: configuration, MRENCLAVE, MRSIGNER and the signed SIGSTRUCT.

    config = EnclaveConfig(isv_prod_id=1, isv_svn=1, debug=False, signer_public_key=pub)
    mrenclave = measure_enclave(package_dir(), config)

MRENCLAVE = sha256 of the canonical JSON list of sorted ``[path, sha256(file)]`` pairs over
every file of the enclave package (``__pycache__`` excluded), the trusted ``crypto`` modules the
enclave imports (sealing, provisioning, errors), and ``["<config>", sha256(config JSON)]``.
MRSIGNER = sha256 of the enclave signing public key. The SIGSTRUCT is the signer's Ed25519
signature over MRENCLAVE, product id and SVN; the enclave refuses to start (EINIT) without it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import EnclaveLaunchError

__all__ = [
    "TRUSTED_MODULES",
    "EnclaveConfig",
    "measure_enclave",
    "measurement_entries",
    "mrsigner_of",
    "package_dir",
    "sign_sigstruct",
    "verify_sigstruct",
]

#: Modules outside the package that run inside the enclave and are therefore measured.
TRUSTED_MODULES: tuple[str, ...] = (
    "crypto/errors.py",
    "crypto/sealing.py",
    "crypto/provisioning.py",
)
_SIGSTRUCT_CONTEXT = b"audit-appliance/sigstruct/v1\x00"


@dataclass(frozen=True, kw_only=True)
class EnclaveConfig:
    """The enclave's configuration; part of MRENCLAVE."""

    isv_prod_id: int = 1
    isv_svn: int = 1
    debug: bool = False
    signer_public_key: str = ""
    max_message_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**16:
                raise EnclaveLaunchError(f"{name} must be an integer in [0, 65535]")
        if not isinstance(self.debug, bool):
            raise EnclaveLaunchError("debug must be a bool")
        try:
            if len(bytes.fromhex(self.signer_public_key)) != 32:
                raise ValueError
        except ValueError:
            raise EnclaveLaunchError("signer_public_key must be 32 bytes of hex") from None
        if not 1024 <= self.max_message_bytes <= 2**31:
            raise EnclaveLaunchError("max_message_bytes must be in [1 KiB, 2 GiB]")

    def to_json(self) -> str:
        """Canonical JSON of the configuration (what MRENCLAVE covers)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EnclaveConfig:
        """Parse a configuration produced by :meth:`to_json`."""
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise EnclaveLaunchError(f"malformed enclave configuration: {exc}") from None

    @property
    def mrsigner(self) -> str:
        """sha256 of the signer public key, hex."""
        return mrsigner_of(bytes.fromhex(self.signer_public_key))


def package_dir() -> Path:
    """The directory of the enclave package actually imported by this process."""
    return Path(__file__).resolve().parent


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measurement_entries(package: Path, config: EnclaveConfig) -> list[tuple[str, str]]:
    """The sorted (path, sha256) list MRENCLAVE is computed over."""
    package = Path(package).resolve()
    entries: list[tuple[str, str]] = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        entries.append((f"enclave/{rel.as_posix()}", _file_digest(path)))
    import crypto  # the trusted crypto modules the enclave imports

    crypto_root = Path(crypto.__file__).resolve().parent.parent
    for rel_name in TRUSTED_MODULES:
        entries.append((rel_name, _file_digest(crypto_root / rel_name)))
    entries.append(("<config>", hashlib.sha256(config.to_json().encode()).hexdigest()))
    return sorted(entries)


def measure_enclave(package: Path, config: EnclaveConfig) -> str:
    """MRENCLAVE (hex) of the enclave package at ``package`` with ``config``."""
    entries = measurement_entries(package, config)
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def mrsigner_of(signer_public_key: bytes) -> str:
    """MRSIGNER (hex) = sha256 of the raw Ed25519 signer public key."""
    return hashlib.sha256(signer_public_key).hexdigest()


def _sigstruct_message(mrenclave: str, config: EnclaveConfig) -> bytes:
    return _SIGSTRUCT_CONTEXT + bytes.fromhex(mrenclave) + struct.pack(">HH", config.isv_prod_id, config.isv_svn)


def sign_sigstruct(mrenclave: str, config: EnclaveConfig, signer: Ed25519PrivateKey) -> bytes:
    """The developer's signature over (MRENCLAVE, product id, SVN)."""
    public = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if public.hex() != config.signer_public_key:
        raise EnclaveLaunchError("the signing key does not match the config's signer_public_key")
    return signer.sign(_sigstruct_message(mrenclave, config))


def verify_sigstruct(mrenclave: str, config: EnclaveConfig, signature: bytes) -> None:
    """EINIT's check: the SIGSTRUCT signs exactly this measurement; raise otherwise."""
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(config.signer_public_key))
    try:
        key.verify(signature, _sigstruct_message(mrenclave, config))
    except InvalidSignature:
        raise EnclaveLaunchError("EINIT failed: the SIGSTRUCT does not sign this enclave's measurement") from None
