"""Secrets the appliance keeps for its users (e.g. watermark keys), sealed at rest with a
key-encryption key (AES-256-GCM) that lives in the home's key folder.

In the cluster mode the API node seals and the workers unseal, so every worker needs the API
node's key: mount ``<home>/keys/secrets.kek`` read-only on each worker and point
``APPLIANCE_KEK_FILE`` at it. A worker without it never makes a key of its own (that would
only fail later with an authentication error); its audits that need a sealed secret fail
with that instruction.

>>> blob = seal_secret(settings, key, context=b"watermark:wm_1:tnt_1")
>>> unseal_secret(settings, blob, context=b"watermark:wm_1:tnt_1") == key
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance._internal.config import Settings
from appliance.errors import ApplianceError
from crypto.secret_files import write_secret_once

_VERSION = b"\x01"
_NONCE = 12


class SealedSecretError(ApplianceError):
    status, slug, title = 500, "sealed-secret", "A sealed secret could not be opened"


_KEK_HINT = (
    "copy the API node's <home>/keys/secrets.kek (32 bytes, mode 0600) to each worker and set "
    "APPLIANCE_KEK_FILE to its path"
)


def _read_kek(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SealedSecretError(f"the key-encryption key file {path} cannot be read ({exc.strerror})",
                                hint=_KEK_HINT) from None
    if len(data) != 32:
        raise SealedSecretError(f"the key-encryption key file {path} is damaged (not 32 bytes)",
                                hint=_KEK_HINT)
    return data


def _kek(settings: Settings) -> bytes:
    if settings.kek_file is not None:
        return _read_kek(settings.kek_file)
    if settings.cluster and settings.api_url:
        raise SealedSecretError("this cluster worker has no key-encryption key for sealed secrets",
                                hint=_KEK_HINT)
    settings.ensure_dirs()
    path: Path = settings.key_dir / "secrets.kek"
    if not path.exists():
        write_secret_once(path, secrets.token_bytes(32))  # the first creator wins
    return _read_kek(path)


def seal_secret(settings: Settings, plaintext: bytes, *, context: bytes) -> bytes:
    """Encrypt ``plaintext`` bound to ``context`` (ids of its owner and object)."""
    nonce = secrets.token_bytes(_NONCE)
    return _VERSION + nonce + AESGCM(_kek(settings)).encrypt(nonce, plaintext, context)


def unseal_secret(settings: Settings, blob: bytes, *, context: bytes) -> bytes:
    if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
        raise SealedSecretError("sealed secret has an unknown format")
    try:
        return AESGCM(_kek(settings)).decrypt(blob[1:1 + _NONCE], blob[1 + _NONCE:], context)
    except InvalidTag:
        raise SealedSecretError("sealed secret failed authentication (wrong key or context)") \
            from None
