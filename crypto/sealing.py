"""Sealing: authenticated encryption of enclave state to the enclave's identity (as SGX EGETKEY).

    identity = SealIdentity(mrenclave=m, mrsigner=s, isv_prod_id=1, isv_svn=2, debug=False)
    blob = seal(b"state", root_secret=root, identity=identity, policy=SealPolicy.MRSIGNER)
    assert unseal(blob, root_secret=root, identity=identity) == b"state"

The sealing key is ``HKDF-SHA256(root_secret, info = policy || measurement || product id || SVN
|| debug || key id)`` where *measurement* is MRENCLAVE or MRSIGNER according to the policy.
The blob header (policy, product id, the sealer's SVN, key id, debug flag) is the AES-GCM
associated data, so any altered byte of the blob fails to unseal.

- ``SealPolicy.MRENCLAVE``: only an enclave with the same code and configuration can unseal.
- ``SealPolicy.MRSIGNER``: any enclave of the same signer and product whose SVN is at least the
  sealer's SVN can unseal (it derives the key of the lower SVN, as EGETKEY allows); a lower SVN
  cannot unseal data sealed by a higher one.
"""

from __future__ import annotations

import enum
import json
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import CryptoError
from crypto.framing import FrameReader, FrameWriter

__all__ = [
    "SealError",
    "SealFormatError",
    "SealIdentity",
    "SealIdentityMismatchError",
    "SealPolicy",
    "SealSvnError",
    "derive_seal_key",
    "seal",
    "sealed_header",
    "unseal",
]

_MAGIC = b"SEAL1\x00"
_MAX_HEADER = 4096
_NONCE_BYTES = 12
_ROOT_SECRET_BYTES = 32


class SealError(CryptoError):
    """Sealed data cannot be produced or opened."""

    hint: str = (
        "Sealed data opens only inside an enclave whose identity matches the sealing policy "
        "on the same platform; re-provision the secrets if the enclave changed."
    )


class SealFormatError(SealError):
    """The blob is not a sealed blob (wrong magic, truncated, malformed header)."""


class SealIdentityMismatchError(SealError):
    """The blob was sealed by another enclave identity or platform, or was altered."""


class SealSvnError(SealError):
    """The blob was sealed at a higher SVN than the unsealing enclave's (no downgrade)."""

    hint: str = (
        "An older enclave version cannot read data sealed by a newer one; run the newer enclave."
    )


class SealPolicy(enum.StrEnum):
    """Which measurement the sealing key is bound to."""

    MRENCLAVE = "MRENCLAVE"
    MRSIGNER = "MRSIGNER"


@dataclass(frozen=True, kw_only=True)
class SealIdentity:
    """The identity of the enclave that seals or unseals (hex measurements)."""

    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    debug: bool

    def __post_init__(self) -> None:
        for name in ("mrenclave", "mrsigner"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) != 64:
                raise SealError(f"{name} must be a 64-character hex sha256 digest")
            bytes.fromhex(value)
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**16:
                raise SealError(f"{name} must be an integer in [0, 65535]")


def _check_root(root_secret: bytes) -> None:
    if not isinstance(root_secret, bytes) or len(root_secret) != _ROOT_SECRET_BYTES:
        raise SealError(f"the platform root secret must be {_ROOT_SECRET_BYTES} bytes")


def derive_seal_key(
    root_secret: bytes,
    *,
    policy: SealPolicy,
    identity: SealIdentity,
    isv_svn: int,
    key_id: bytes,
) -> bytes:
    """Derive the 256-bit AES-GCM sealing key (EGETKEY); ``isv_svn`` must be ≤ the identity's."""
    _check_root(root_secret)
    if isv_svn > identity.isv_svn:
        raise SealSvnError(f"cannot derive a key for SVN {isv_svn}: this enclave's SVN is {identity.isv_svn}")
    measurement = identity.mrenclave if policy is SealPolicy.MRENCLAVE else identity.mrsigner
    info = b"|".join(
        [
            b"audit-appliance/seal-key/v1",
            policy.value.encode(),
            bytes.fromhex(measurement),
            struct.pack(">HH?", identity.isv_prod_id, isv_svn, identity.debug),
            key_id,
        ]
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root_secret)


def seal(
    plaintext: bytes,
    *,
    root_secret: bytes,
    identity: SealIdentity,
    policy: SealPolicy,
    associated_data: bytes = b"",
) -> bytes:
    """Seal ``plaintext`` to ``identity`` under ``policy``; returns magic | header | nonce | ct."""
    if not isinstance(plaintext, bytes | bytearray):
        raise SealError("plaintext must be bytes")
    policy = SealPolicy(policy)
    key_id = os.urandom(16)
    header = json.dumps(
        {
            "policy": policy.value,
            "isv_prod_id": identity.isv_prod_id,
            "isv_svn": identity.isv_svn,
            "debug": identity.debug,
            "key_id": key_id.hex(),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    key = derive_seal_key(root_secret, policy=policy, identity=identity, isv_svn=identity.isv_svn, key_id=key_id)
    nonce = os.urandom(_NONCE_BYTES)
    prefix = FrameWriter(_MAGIC).prefixed(header, 2).to_bytes()
    ct = AESGCM(key).encrypt(nonce, bytes(plaintext), prefix + associated_data)
    return prefix + nonce + ct


def sealed_header(blob: bytes) -> dict[str, object]:
    """Return the public header of a sealed blob (policy, product id, SVN, debug, key id)."""
    header, _ = _split(blob)
    return header


def _split(blob: bytes) -> tuple[dict[str, object], int]:
    """Frame: magic | u16 header length | header JSON | nonce | AES-GCM ciphertext and tag."""
    reader = FrameReader(blob, magic=_MAGIC, error=SealFormatError, what="sealed blob")
    raw = reader.prefixed(2, limit=_MAX_HEADER, field="header")
    if reader.remaining < _NONCE_BYTES + 16:
        reader.fail("sealed blob is truncated or its header is too large")
    try:
        header = json.loads(raw)
        SealPolicy(header["policy"])
        for name in ("isv_prod_id", "isv_svn"):
            if not isinstance(header[name], int):
                raise TypeError(name)
        bytes.fromhex(header["key_id"])
        if not isinstance(header["debug"], bool):
            raise TypeError("debug")
    except (ValueError, KeyError, TypeError) as exc:
        raise SealFormatError(f"sealed blob header is malformed: {exc}") from None
    return header, reader.pos


def unseal(
    blob: bytes,
    *,
    root_secret: bytes,
    identity: SealIdentity,
    associated_data: bytes = b"",
) -> bytes:
    """Open a sealed blob inside the enclave ``identity``; raise a named error on any mismatch."""
    header, end = _split(blob)
    policy = SealPolicy(str(header["policy"]))
    sealed_svn = int(header["isv_svn"])  # type: ignore[call-overload]
    if int(header["isv_prod_id"]) != identity.isv_prod_id:  # type: ignore[call-overload]
        raise SealIdentityMismatchError(
            f"sealed for product {header['isv_prod_id']}, this enclave is product {identity.isv_prod_id}"
        )
    if header["debug"] != identity.debug:
        raise SealIdentityMismatchError("sealed by an enclave with a different DEBUG attribute")
    if policy is SealPolicy.MRENCLAVE and sealed_svn != identity.isv_svn:
        raise SealIdentityMismatchError(
            f"MRENCLAVE-sealed at SVN {sealed_svn}; this enclave has SVN {identity.isv_svn}"
        )
    key = derive_seal_key(
        root_secret,
        policy=policy,
        identity=identity,
        isv_svn=sealed_svn,
        key_id=bytes.fromhex(str(header["key_id"])),
    )
    nonce = blob[end : end + _NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[end + _NONCE_BYTES :], blob[:end] + associated_data)
    except InvalidTag:
        what = "code or configuration (MRENCLAVE)" if policy is SealPolicy.MRENCLAVE else "signer"
        raise SealIdentityMismatchError(
            f"cannot unseal: the blob was altered, or sealed on another platform or by an enclave "
            f"with a different {what}"
        ) from None
